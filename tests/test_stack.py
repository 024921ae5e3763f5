"""`workbench stack` end to end on a tiny run: every kind of entry, honest nested maps, the
leaderboard, the report, the submission, resuming, and the submit / blend / score verbs."""
from __future__ import annotations

import csv
import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from carvana.dataset import CarvanaData
from carvana.submission import read_sample_ids, validate_submission
from folds import read_folds
from oof import Store
from stacking.choice import chosen_row
from stacking.leaderboard import score_entry
from tests.conftest import run_cli
from workbench.config import load_config
from workbench.fold_train import fold_train
from workbench.stack import stack

TINY_RUN = """
zoo:
  train: {epochs: 1, batch_size: 8}
  members:
    - avg_mask_128
    - {name: simple_cnn_64, arch: simple_cnn, height: 64, width: 96}
stack:
  max_pixels: 5000
  n_submissions: 2
  cnn_epochs: 1
  cnn_size: [48, 32]
tune:
  n_trials: 6
"""


@pytest.fixture(scope="module")
def stacked_run(tiny_data_master, tmp_path_factory) -> tuple[Path, list[dict]]:
    """A tiny run after fold-train and stack (module-scoped: trained once)."""
    root = tmp_path_factory.mktemp("stack")
    data = root / "data"
    shutil.copytree(tiny_data_master, data)
    path = root / "tiny.yaml"
    path.write_text(f"data: {data}\nrun_dir: {root / 'run'}\nfolds: {{n_folds: 3}}\n" + TINY_RUN)
    config = load_config(path)
    fold_train(config, progress=False)
    return path, stack(config, progress=False)


def test_leaderboard_has_every_kind_of_entry(stacked_run):
    _, rows = stacked_run
    kinds = {r["entry"]: r["kind"] for r in rows if r["kind"] != "postprocess"}
    assert kinds == {"avg_mask_128": "member", "simple_cnn_64": "member", "mean": "blend", "logit_mean": "blend",
                     "vote": "blend", "weighted_mean": "blend", "selected": "blend", "lightgbm": "stacker",
                     "logistic": "stacker", "cnn_stacker": "cnn", "tuned": "tuned", "entries_mean": "ensemble"}
    scores = [float(r["oof_mean_dice"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert all(r["test_mean_dice"] for r in rows)  # the synthetic data knows its test truth
    tuned = next(r for r in rows if r["entry"] == "tuned")
    assert 0 < float(tuned["tuned_on_mean_dice"]) <= 1
    best = max((r for r in rows if r["kind"] == "member"), key=lambda r: float(r["oof_mean_dice"]))
    assert all(r["gain_over"] == best["entry"] for r in rows)  # every entry against the best member
    assert (best["gain"], best["gain_lo"], best["gain_hi"]) == ("0.000000",) * 3
    assert all(float(r["gain_lo"]) <= float(r["gain_hi"]) and len(r["gain_by_fold"].split("/")) == 3 for r in rows)


def test_entry_maps_are_honest_out_of_fold(stacked_run):
    """Every entry's map of a train image comes from the model fitted without that image's fold."""
    path, _ = stacked_run
    config = load_config(path)
    folds = read_folds(config.run_dir / "folds.csv")
    entries = Store(config.run_dir / "stack")
    for entry in entries.members():
        entries.check_coverage(entry, folds.fold_of, folds.hash)
        entries.check_test(entry, CarvanaData(config.data).test_ids)


def test_entries_mean_is_the_mean_of_every_learned_entry(stacked_run):
    """The third level fits nothing: each of its maps is the mean of the learned entries' maps of that image
    (so its fold-k OOF maps come from fits without fold k), never of members or fixed blends."""
    from stacking.ensemble import ENTRIES_MEAN, is_learned

    path, rows = stacked_run
    entries = Store(load_config(path).run_dir / "stack")
    learned = [r["entry"] for r in rows if is_learned(r["entry"], r["kind"])]
    assert sorted(learned) == ["cnn_stacker", "lightgbm", "logistic", "selected", "tuned", "weighted_mean"]
    assert sorted(entries.metadata(ENTRIES_MEAN)["spec"]["of"]) == sorted(learned)
    assert entries.train_folds(ENTRIES_MEAN) == entries.train_folds("lightgbm")
    for split in ("train", "test"):
        for img in entries.ids(ENTRIES_MEAN, split)[:5]:
            total = sum(entries.read(e, split, img).astype(np.int64) for e in learned)
            mean = entries.read(ENTRIES_MEAN, split, img)
            np.testing.assert_array_equal(mean, np.rint(total / len(learned)).astype(np.uint8))
            np.testing.assert_array_equal(mean >= 128, 2 * total >= 255 * len(learned))  # car: mean proba >= 0.5


def test_stack_checks_the_data_once(stacked_run, monkeypatch):
    """One `workbench stack` runs the data check once, however many entries, submissions and scores follow."""
    import carvana.validate
    import workbench.run

    calls = []
    real = carvana.validate.check_data

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(carvana.validate, "check_data", counting)
    monkeypatch.setattr(workbench.run, "check_data", counting)
    path, _ = stacked_run
    stack(load_config(path), progress=False)
    assert len(calls) == 1


def test_store_at_another_resolution_is_refused(stacked_run, tmp_path):
    path, _ = stacked_run
    other = tmp_path / "other.yaml"
    other.write_text(path.read_text() + "oof:\n  resolution: 48x32\n")
    before = sorted(p.stat().st_mtime_ns for p in (load_config(path).run_dir / "stack").rglob("*"))
    result = run_cli("stack", "--config", str(other))
    assert result.returncode == 2
    assert "maps are 96x64" in result.stderr and "--retrain avg_mask_128" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.stat().st_mtime_ns for p in (load_config(path).run_dir / "stack").rglob("*")) == before


def test_submission_report_and_per_entry_files(stacked_run):
    path, rows = stacked_run
    config = load_config(path)
    data = CarvanaData(config.data)
    submission = config.run_dir / "submission.csv.gz"
    validate_submission(submission, read_sample_ids(config.data / "sample_submission.csv"), image_size=(96, 64))
    with gzip.open(submission, "rt") as f:
        assert sum(1 for _ in csv.reader(f)) == len(data.test_ids) + 1
    # The top n_submissions by honest OOF, and the two picks (the chosen entry and the second submission).
    written = {r["entry"] for r in rows[:2]} | {r["entry"] for r in rows if r.get("choice")}
    assert {r["choice"] for r in rows if r.get("choice")} == {"chosen", "second"}
    assert sorted(p.name for p in (config.run_dir / "submissions").iterdir()) == sorted(
        [f"{e}.csv.gz" for e in written] + [f"{e}.json" for e in written])
    chosen = chosen_row(rows)["entry"]
    assert json.loads((config.run_dir / "submission.json").read_text())["entry"] == chosen
    charts = ("dice_by_entry.png", "gain_by_entry.png", "dice_by_angle.png", "dice_by_fold.png", "worst.png")
    for name in ("report.md", *charts):
        assert (config.run_dir / "report" / name).stat().st_size > 0
    assert "## Gain over the best member" in (config.run_dir / "report" / "report.md").read_text()


def test_postprocessing_is_kept_only_when_it_beats_the_best_entry_on_oof(stacked_run):
    path, rows = stacked_run
    config = load_config(path)
    best = next(r for r in rows if r["kind"] != "postprocess")
    entries, data = Store(config.run_dir / "stack"), CarvanaData(config.data)
    folds = read_folds(config.run_dir / "folds.csv")
    store = Store(config.run_dir / ("oof" if best["kind"] == "member" else "stack"))
    best_oof = score_entry(store, best["entry"], best["kind"], data, folds, (64, 96)).oof_mean_dice
    for operation in config.stack.postprocess:
        name = f"{best['entry']}.{operation}"
        oof = score_entry(entries, name, "postprocess", data, folds, (64, 96)).oof_mean_dice
        assert (name in {r["entry"] for r in rows}) == (oof > best_oof)


def test_member_report_is_written(stacked_run):
    path, _ = stacked_run
    text = (load_config(path).run_dir / "report" / "members.md").read_text()
    for part in ("Dice by fold", "error correlation", "selection weight", "avg_mask_128", "simple_cnn_64"):
        assert part in text


def test_rerun_resumes_without_refitting(stacked_run, capsys, monkeypatch):
    path, rows = stacked_run
    config = load_config(path)
    from stacking.tuned import TunedBlend

    def refit(*_):
        raise AssertionError("a complete entry was fitted again")

    monkeypatch.setattr(TunedBlend, "fit", refit)  # the tuned-on score is recorded with the entry's maps
    again = stack(config, progress=False)
    out = capsys.readouterr().out
    for entry in ("lightgbm", "mean", "tuned"):
        assert f"{entry}: complete, skipped" in out
    tuned_on = [r["tuned_on_mean_dice"] for r in again if r["entry"] == "tuned"]
    assert tuned_on == [r["tuned_on_mean_dice"] for r in rows if r["entry"] == "tuned"] and tuned_on[0]
    assert [r["oof_mean_dice"] for r in again] == [r["oof_mean_dice"] for r in rows]
    assert [r["gain_lo"] for r in again] == [r["gain_lo"] for r in rows]  # the bootstrap is seeded
    picks = [(r["entry"], r.get("choice"), r.get("choice_reason")) for r in rows]
    assert [(r["entry"], r.get("choice"), r.get("choice_reason")) for r in again] == picks  # so is the choice
    chosen, second = (next(r for r in rows if r.get("choice") == c) for c in ("chosen", "second"))
    lines = out.splitlines()
    chosen_at = lines.index(f"chosen: {chosen['entry']} {chosen['choice_reason']}")  # the leaderboard's record
    assert lines[chosen_at + 1] == f"second submission: {second['entry']} {second['choice_reason']}"
    assert chosen["entry"] != second["entry"]


def test_submit_blend_and_score_verbs(stacked_run, tmp_path):
    path, rows = stacked_run
    config = load_config(path)
    truth = config.data / "test_masks.csv"
    one = tmp_path / "one.csv.gz"
    result = run_cli("submit", "--config", str(path), "--entry", "mean", "--out", str(one))
    assert result.returncode == 0, result.stderr
    default = tmp_path / "default.csv.gz"  # `submit`'s default entry is the one `stack` chose
    result = run_cli("submit", "--config", str(path), "--out", str(default))
    assert result.returncode == 0, result.stderr
    chosen = json.loads((config.run_dir / "submission.json").read_text())["entry"]
    assert json.loads((tmp_path / "default.json").read_text())["entry"] == chosen == chosen_row(rows)["entry"]
    score = run_cli("score", str(one), "--truth", str(truth), "--size", "96x64")
    assert score.returncode == 0, score.stderr
    mean_row = next(r for r in rows if r["entry"] == "mean")
    assert f"mean Dice {float(mean_row['test_mean_dice']):.6f}" in score.stdout  # the leaderboard agrees
    blended = tmp_path / "blend.csv.gz"
    files = sorted(str(p) for p in (config.run_dir / "submissions").glob("*.csv.gz"))
    result = run_cli("blend", *files, str(one), "--config", str(path), "--out", str(blended))
    assert result.returncode == 0, result.stderr
    assert blended.exists() and (tmp_path / "blend.csv.gz.json").exists()
