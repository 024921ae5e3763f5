"""A run on 1918x1280 photos keeps every map at 1918x1280 end to end: members' OOF and test maps,
every entry's maps, the leaderboard's scores and the submission's masks."""
from __future__ import annotations

import pytest

from carvana.rle import rle_decode
from carvana.submission import iter_rows, read_sample_ids, validate_submission
from oof import Store
from workbench.config import load_config
from workbench.fold_train import fold_train
from workbench.stack import stack

FULL = (1918, 1280)  # W x H


@pytest.mark.slow
def test_a_full_resolution_run_keeps_maps_at_full_resolution(tmp_path):
    from carvana.synth import generate

    data = tmp_path / "data"
    generate(data, 3, 1, size=FULL, seed=3, progress=False)
    path = tmp_path / "full.yaml"
    path.write_text(f"data: {data}\nrun_dir: {tmp_path / 'run'}\nfolds: {{n_folds: 3}}\n"
                    "zoo:\n  train: {epochs: 1, batch_size: 8}\n  members:\n    - avg_mask_128\n"
                    "    - {name: simple_cnn_64, arch: simple_cnn, height: 64, width: 96}\n"
                    "stack: {blends: [mean, weighted_mean], stackers: [logistic], max_pixels: 20000,"
                    " n_submissions: 1, postprocess: [], guard: false}\n"
                    "tune: {n_trials: 2}\n")
    config = load_config(path)
    fold_train(config, progress=False)
    rows = stack(config, progress=False)
    members, entries = Store(config.run_dir / "oof"), Store(config.run_dir / "stack")
    assert members.members() == ["avg_mask_128", "simple_cnn_64"]
    assert entries.members() == ["entries_mean", "logistic", "mean", "tuned", "weighted_mean"]
    for store in (members, entries):
        for name in store.members():
            assert store.resolution(name) == (1280, 1918), name
            for split in ("train", "test"):
                assert store.read(name, split, store.ids(name, split)[0]).shape == (1280, 1918)
    assert {r["entry"] for r in rows} == set(members.members()) | set(entries.members())
    submission = config.run_dir / "submission.csv.gz"
    validate_submission(submission, read_sample_ids(data / "sample_submission.csv"), image_size=FULL)
    _, _, rle = next(iter(iter_rows(submission)))
    assert rle_decode(rle, (1280, 1918)).shape == (1280, 1918)
