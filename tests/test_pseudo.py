"""Fold-honest pseudo-labels: the smoke round through the CLI, the spy that fold k's model reads only fold k's
set made only by fold-k models, fold k's labels and OOF maps unchanged when fold k's masks change, the leaky
recipe as an explicit opt-in, refusals, and a pseudo-labelled member resuming after kill -9."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from carvana.dataset import CarvanaData
from carvana.errors import WorkbenchError
from carvana.rle import rle_encode
from carvana.synth.writer import write_mask_gif
from oof import Store
from tests.conftest import REPO, assert_user_error, run_cli
from workbench.config import load_config

SMOKE_PSEUDO = REPO / "configs" / "smoke_pseudo.yaml"
PSEUDO_MEMBER = "unet_test_resnet_64_pseudo"

LIGHT = """data: {data}
run_dir: {run}
folds: {{n_folds: 3, stratify: none}}
zoo:
  train: {{epochs: {epochs}, batch_size: 8}}
  members:
    - avg_mask_128
    - name: pseudo_cnn_64
      arch: simple_cnn
      height: 64
      width: 96
      train: {{pseudo: round2, pseudo_share: 0.25}}
pseudo:
  round2: {{source: [avg_mask_128], n_photos: 8, max_uncertain_share: 1.0, leaky: {leaky}}}
"""


@pytest.fixture(scope="module")
def pseudo_data(tmp_path_factory) -> Path:
    """6 train cars and 4 test cars at 96x64: the test split larger than the train split, as at Kaggle."""
    from carvana.synth import generate

    root = tmp_path_factory.mktemp("pseudo") / "data"
    generate(root, n_cars=6, n_test_cars=4, size=(96, 64), seed=0, progress=False)
    return root


def light_config(tmp_path: Path, data: Path, run: str = "run", epochs: int = 1, leaky: bool = False) -> Path:
    path = tmp_path / f"{run}.yaml"
    path.write_text(LIGHT.format(data=data, run=tmp_path / run, epochs=epochs, leaky=str(leaky).lower()))
    return path


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.npy.zst"))}


@pytest.mark.slow
def test_the_smoke_pseudo_config_runs_fold_train_pseudo_label_fold_train(tmp_path, pseudo_data):
    args = ["--config", str(SMOKE_PSEUDO), "--data", str(pseudo_data), "--run-dir", str(tmp_path / "run")]
    first = run_cli("fold-train", *args)
    assert first.returncode == 0, first.stderr
    assert f"{PSEUDO_MEMBER}: waits for pseudo-label set round2" in first.stdout
    refused = run_cli("fold-train", *args, "--member", PSEUDO_MEMBER)
    assert_user_error(refused, "round2", "has no complete fold 0", "workbench pseudo-label")

    labelled = run_cli("pseudo-label", *args)
    assert labelled.returncode == 0, labelled.stderr
    for k in range(3):
        record = json.loads((tmp_path / "run" / "pseudo" / "round2" / f"fold{k}.json").read_text())
        sources = {("unet_test_resnet_64", k), ("simple_cnn_64", k)}
        assert {(m["member"], m["fold"]) for m in record["models"]} == sources
        assert len(record["ids"]) == 16 and record["n_candidates"] == 64
    again = run_cli("pseudo-label", *args)
    assert again.returncode == 0 and again.stdout.count("current, skipped") == 3  # resumable: nothing redone

    second = run_cli("fold-train", *args)
    assert second.returncode == 0, second.stderr
    rows = {r["entry"]: r for r in csv.DictReader(open(tmp_path / "run" / "leaderboard.csv"))}
    assert rows[PSEUDO_MEMBER]["kind"] == "member" and float(rows[PSEUDO_MEMBER]["oof_mean_dice"]) >= 0
    assert "unet_test_resnet_64 fold 0: done, skipped" in second.stdout  # round one is not trained again


@pytest.mark.slow
def test_fold_k_reads_only_fold_k_labels_made_only_by_fold_k_models(tmp_path, pseudo_data, monkeypatch):
    """A spy on the loader: fold k's job loads set fold k, and reads label maps of fold k only."""
    import workbench.jobs
    from workbench.fold_train import fold_train
    from workbench.pseudo import pseudo_label
    from zoo.pseudo import PseudoSet, load_pseudo_set

    config = load_config(light_config(tmp_path, pseudo_data))
    fold_train(config, progress=False)
    pseudo_label(config, progress=False)
    loads, reads = [], []

    def spy_load(cfg, fold, *args):
        pset = load_pseudo_set(cfg, fold, *args)
        record = json.loads((config.run_dir / "pseudo" / cfg.name / f"fold{fold}.json").read_text())
        loads.append((fold, {m["fold"] for m in record["models"]}))
        return pset

    levels = PseudoSet.levels
    monkeypatch.setattr(workbench.jobs, "load_pseudo_set", spy_load)
    monkeypatch.setattr(PseudoSet, "levels", lambda self, img: reads.append(self.fold) or levels(self, img))
    fold_train(config, progress=False)
    assert loads == [(0, {0}), (1, {1}), (2, {2})]
    assert sorted(set(reads)) == [0, 1, 2] and len(reads) == 3 * 8  # each fold's 8 labels, read once to cache
    store = Store(config.run_dir / "pseudo" / "round2")
    for k in range(3):  # every label of fold k was made by fold k's source model, never by another fold's
        spec = store.metadata(f"fold{k}")["spec"]
        assert [(m["member"], m["fold"]) for m in spec["models"]] == [("avg_mask_128", k)]


def change_masks_of_fold(data: Path, fold_of: dict[str, int], fold: int) -> None:
    """Every train mask of `fold`'s cars flipped upside down, in the GIFs and in train_masks.csv."""
    cars = CarvanaData(data)
    rows = list(csv.DictReader(open(data / "train_masks.csv")))
    for row in rows:
        img = row["img"].removesuffix(".jpg")
        if fold_of[img] == fold:
            mask = cars.load_mask(img)[::-1]
            write_mask_gif(mask, cars.mask_path(img))
            row["rle_mask"] = rle_encode(mask)
    with open(data / "train_masks.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["img", "rle_mask"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.slow
def test_fold_k_labels_and_oof_maps_do_not_depend_on_fold_k_masks(tmp_path, pseudo_data):
    """The GUIDE's contract: with one epoch, changing only fold k's masks leaves fold k's pseudo-labels and the
    pseudo-labelled member's fold-k OOF maps byte-identical (the leaky recipe does not keep them)."""
    from workbench.fold_train import fold_train
    from workbench.pseudo import pseudo_label

    changed = tmp_path / "changed_data"
    shutil.copytree(pseudo_data, changed)
    runs = {}
    for name, data in [("same", pseudo_data), ("changed", changed)]:
        config = load_config(light_config(tmp_path, data, run=f"run_{name}"))
        fold_train(config, progress=False)  # stratify: none, so both runs have the same folds
        if name == "same":
            fold_of = {r["img"]: int(r["fold"]) for r in csv.DictReader(open(config.run_dir / "folds.csv"))}
            change_masks_of_fold(changed, fold_of, 1)
        pseudo_label(config, progress=False)
        fold_train(config, progress=False)
        runs[name] = config.run_dir
    labels = {name: digests(run / "pseudo" / "round2") for name, run in runs.items()}
    fold1 = {k: v for k, v in labels["same"].items() if k.startswith("fold1/")}
    assert fold1 and all(labels["changed"][k] == v for k, v in fold1.items())
    assert any(labels["changed"][k] != v for k, v in labels["same"].items() if not k.startswith("fold1/"))
    oof = {name: digests(run / "oof" / "pseudo_cnn_64" / "train") for name, run in runs.items()}
    fold1_oof = {k: v for k, v in oof["same"].items() if k.startswith("fold1/")}
    assert fold1_oof and all(oof["changed"][k] == v for k, v in fold1_oof.items())


@pytest.mark.slow
def test_the_leaky_recipe_is_an_explicit_opt_in_that_says_so(tmp_path, pseudo_data):
    config = light_config(tmp_path, pseudo_data, leaky=True)
    assert run_cli("fold-train", "--config", str(config)).returncode == 0
    result = run_cli("pseudo-label", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "WARNING: pseudo-label set round2 is leaky" in result.stdout
    record = json.loads((tmp_path / "run" / "pseudo" / "round2" / "fold0.json").read_text())
    assert record["settings"]["leaky"] is True
    assert {m["fold"] for m in record["models"]} == {0, 1, 2}  # the fold-averaged maps: every fold's model


@pytest.mark.slow
def test_labels_made_by_other_models_or_incomplete_are_refused_and_nothing_trained_is_lost(tmp_path, pseudo_data):
    config_path = light_config(tmp_path, pseudo_data)
    args = ["--config", str(config_path)]
    assert run_cli("fold-train", *args).returncode == 0
    assert run_cli("pseudo-label", *args).returncode == 0
    run = tmp_path / "run"
    done = run / "members" / "avg_mask_128" / "fold0" / "done.json"
    record = json.loads(done.read_text())
    done.write_text(json.dumps({**record, "finished": record["finished"] + 1}))  # as if fold 0 was retrained
    before = digests(run / "oof")
    result = run_cli("fold-train", *args, "--member", "pseudo_cnn_64", "--fold", "0")
    assert_user_error(result, "round2 fold 0 was made by other source models", "workbench pseudo-label")
    done.write_text(json.dumps(record))
    label = next((run / "pseudo" / "round2" / "fold2" / "test").iterdir())
    label.unlink()
    result = run_cli("fold-train", *args, "--member", "pseudo_cnn_64", "--fold", "2")
    assert_user_error(result, "round2 fold 2 is incomplete")
    assert digests(run / "oof") == before
    assert run_cli("fold-train", *args).returncode == 0  # folds 0 and 1 train; fold 2 waits
    remade = run_cli("pseudo-label", *args)  # the fix the refusal names: fold 2 is made again, 0 and 1 are current
    assert remade.returncode == 0 and remade.stdout.count("current, skipped") == 2, remade.stdout
    assert run_cli("fold-train", *args).returncode == 0
    (run / "pseudo" / "round2" / "fold0.json").unlink()  # as if the set's fold 0 were made again since
    assert run_cli("pseudo-label", *args).returncode == 0
    warned = run_cli("fold-train", *args)
    assert "WARNING: pseudo_cnn_64 fold 0 was trained on another version of pseudo-label set round2" in warned.stdout


def test_pseudo_settings_that_cannot_work_are_refused_at_load(tmp_path, pseudo_data):
    base = LIGHT.format(data=pseudo_data, run=tmp_path / "run", epochs=1, leaky="false")
    cases = [
        (base.replace("source: [avg_mask_128]", "source: [nope]"), "pseudo.round2.source names 'nope'"),
        (base.replace("pseudo: round2, pseudo_share", "pseudo: round3, pseudo_share"), "names 'round3'"),
        (base.replace("source: [avg_mask_128]", "source: [pseudo_cnn_64]"), "which it trains on"),
        (base.replace("pseudo_share: 0.25", "pseudo_share: 0.05"), "pseudo_share"),
        (base.replace("max_uncertain_share: 1.0", "labels: fuzzy"), "`labels` is 'fuzzy'"),
    ]
    for text, fragment in cases:
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        with pytest.raises(WorkbenchError, match=fragment.replace("[", r"\[").replace("(", r"\(")):
            load_config(path)


def test_mixed_batches_cap_the_pseudo_share_and_see_every_training_photo_once():
    from zoo.fold_data import mixed_batches

    batches = mixed_batches(n_real=37, n_pseudo=5, batch_size=8, share=0.3, seed=3)
    real = [i for b in batches for i in b if i < 37]
    assert sorted(real) == list(range(37))
    assert all(sum(i >= 37 for i in b) <= 2 for b in batches) and all(len(b) <= 8 for b in batches)
    assert {i for b in batches for i in b if i >= 37} == set(range(37, 42))
    assert batches == mixed_batches(n_real=37, n_pseudo=5, batch_size=8, share=0.3, seed=3)


@pytest.mark.slow
def test_a_pseudo_labelled_member_resumes_after_kill_9(tmp_path, pseudo_data):
    config_path = light_config(tmp_path, pseudo_data, epochs=2)
    args = ["--config", str(config_path)]
    assert run_cli("fold-train", *args).returncode == 0
    assert run_cli("pseudo-label", *args).returncode == 0
    command = [sys.executable, "-m", "workbench.cli", "fold-train", *args, "--member", "pseudo_cnn_64", "--fold", "0"]
    env = {**os.environ, "WORKBENCH_TEST_DIE_AFTER_EPOCH": "1"}  # os._exit after epoch 1's checkpoint, as kill -9
    killed = subprocess.run(command, capture_output=True, text=True, env=env)
    assert killed.returncode != 0
    fold = tmp_path / "run" / "members" / "pseudo_cnn_64" / "fold0"
    assert (fold / "last.pt").exists() and not (fold / "done.json").exists()
    resumed = subprocess.run(command, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    log = (fold / "log.csv").read_text().splitlines()
    assert len(log) == 3 and (fold / "done.json").exists()  # epoch 2 after the kill, not a fresh start
    folds = {r["img"]: int(r["fold"]) for r in csv.DictReader(open(tmp_path / "run" / "folds.csv"))}
    assert Store(tmp_path / "run" / "oof").ids("pseudo_cnn_64", "train") == sorted(
        img for img, k in folds.items() if k == 0)
