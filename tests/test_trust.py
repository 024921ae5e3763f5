"""Trust what you share and receive (issue 23), through the real CLI on the tiny synthetic data: a folder that
is not a run is never written, outputs never replace a run's own files, a local Ray listens on loopback
only (tests/test_engine_ray.py), photos are never turned against their masks, CSV ids name photos, one
writer per run includes `fold-train --retrain`, and the small messages say what is wrong."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carvana.dataset import CarvanaData, load_image
from tests.conftest import assert_user_error, run_cli

ZOO_YAML = """folds: {n_folds: 3}
zoo:
  members:
    - avg_mask_128
    - {name: avg_mask_32, arch: avg_mask, height: 32, width: 48}
stack: {blends: [mean], stackers: [], n_submissions: 1}
tune: {n_trials: 2, per_angle: false}
"""
MARKER = "workbench-run.json"


@pytest.fixture
def zoo_config(tiny_data, tmp_path) -> Path:
    """A config with two cheap average-mask members on the tiny data and a private run dir."""
    path = tmp_path / "zoo.yaml"
    path.write_text(f"data: {tiny_data}\nrun_dir: {tmp_path / 'run'}\n" + ZOO_YAML)
    return path


def snapshot(folder: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every entry under `folder` (hidden ones too): its bytes (None for a folder) and mtime."""
    return {
        str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


# 1. a folder that is not a run is refused by every verb, byte-identical afterwards
def users_folder(root: Path) -> Path:
    """A user's own work that happens to hold the names a run has, and a file named like a dead temp file."""
    folder = root / "my_work"
    (folder / "submissions").mkdir(parents=True)
    (folder / "report").mkdir()
    for name, text in [("submission.csv.gz", "mine"), ("submissions/vote.csv.gz", "my vote"),
                       ("leaderboard.csv", "my scores"), ("config.yaml", "my: settings"),
                       ("report/report.md", "# my report")]:
        (folder / name).write_text(text)
    litter = folder / ".thesis.tex.99999999.0123abcd.tmp.tex"  # clean_stale_temps' pattern, a dead pid, old
    litter.write_text("two years of work")
    os.utime(litter, (0, 0))
    return folder


@pytest.mark.slow
def test_every_verb_refuses_a_folder_that_is_not_a_run_and_changes_nothing(zoo_config, tmp_path):
    folder = users_folder(tmp_path)
    before = snapshot(folder)
    maps = tmp_path / "maps"
    maps.mkdir()
    verbs = [
        ["folds"], ["folds", "--export", str(tmp_path / "team.csv")], ["fold-train"],
        ["fold-train", "--retrain", "avg_mask_32"], ["jobs"], ["stack"], ["tune"], ["submit"],
        ["dashboard", "--port", "0"], ["demo"], ["import-member", "mate", "--oof", str(maps), "--test", str(maps)],
    ]
    for verb in verbs:
        result = run_cli(verb[0], "--config", str(zoo_config), "--run-dir", str(folder), *verb[1:])
        assert_user_error(result, str(folder), "not a workbench run folder", "new or empty folder as --run-dir")
        assert "`workbench" not in result.stderr, (verb, result.stderr)  # no hint to a command that writes there
        assert snapshot(folder) == before, verb
    assert not (tmp_path / "team.csv").exists()


def test_new_empty_and_earlier_runs_are_runs(zoo_config, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli("folds", "--config", str(zoo_config), "--run-dir", str(empty)).returncode == 0
    assert json.loads((empty / MARKER).read_text())["workbench"] == "run folder"
    (empty / MARKER).unlink()  # a run made before the marker: folds.csv and data.json
    result = run_cli("jobs", "--config", str(zoo_config), "--run-dir", str(empty))
    assert result.returncode == 0, result.stderr
    assert (empty / MARKER).is_file()  # recorded when first opened
    half = tmp_path / "half"  # folds.csv alone is no run
    half.mkdir()
    shutil.copy(empty / "folds.csv", half / "folds.csv")
    assert_user_error(run_cli("folds", "--config", str(zoo_config), "--run-dir", str(half)), "not a workbench run")


def test_a_run_dir_that_is_a_file_or_lies_in_one(zoo_config, tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    for run_dir, fragment in [(file, "is a file, not a folder"), (file / "run", f"{file}: is a file, not a folder")]:
        for verb in ("folds", "stack", "submit"):
            result = run_cli(verb, "--config", str(zoo_config), "--run-dir", str(run_dir))
            assert_user_error(result, fragment)
    assert file.read_text() == "x"


# 4. outputs never replace the run's own files
def test_outputs_refuse_the_runs_own_files(zoo_config, tmp_path):
    run = tmp_path / "run"
    assert run_cli("folds", "--config", str(zoo_config)).returncode == 0
    (run / "leaderboard.csv").write_text("entry,kind,oof_mean_dice\n")
    before = snapshot(run)
    for out, fragment in [
        (run / "folds.csv", "the run's own folds.csv"),
        (run / "leaderboard.csv", "the run's own leaderboard.csv"),
        (run / "tune.csv.gz", "its record"),  # its record would be RUN/tune.json
        (run / "oof" / "a.csv.gz", "a folder of the run"),
        (run, "the run folder"),
    ]:
        result = run_cli("submit", "--config", str(zoo_config), "--out", str(out))
        assert_user_error(result, f"--out {out}", fragment, "choose another --out")
    result = run_cli("folds", "--config", str(zoo_config), "--export", str(run / "leaderboard.csv"))
    assert_user_error(result, "--export", "the run's own leaderboard.csv", "team_folds.csv")
    some = tmp_path / "a.csv"
    some.write_text("img,rle_mask\n")
    result = run_cli("blend", str(some), "--out", str(run / "folds.csv"), "--size", "96x64")  # found by its marker
    assert_user_error(result, "the run's own folds.csv")
    result = run_cli("synth", "--out", str(run))
    assert_user_error(result, "the run folder")
    assert snapshot(run) == before


# 6. photos are never turned against their masks
def tag_orientation(path: Path, orientation: int = 6) -> None:
    with Image.open(path) as photo:
        exif = photo.getexif()
        exif[0x0112] = orientation
        pixels = photo.copy()
    pixels.save(path, quality=95, exif=exif.tobytes())


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_photo_with_an_exif_orientation_is_refused_by_check_data(tiny_data, split):
    img = CarvanaData(tiny_data).ids(split)[0]
    path = tiny_data / split / f"{img}.jpg"
    tag_orientation(path)
    for quick in ([], ["--quick"]):
        result = run_cli("check-data", str(tiny_data), *quick)
        assert_user_error(result, str(path), "EXIF orientation", "rotate the pixels and drop the tag")


def test_photos_are_decoded_as_stored(tiny_data):
    img = CarvanaData(tiny_data).train_ids[0]
    path = tiny_data / "train" / f"{img}.jpg"
    stored = load_image(path)
    tag_orientation(path, 6)  # "turn 90 degrees": OpenCV's default decoding would give 96 x 64
    turned = load_image(path)
    assert turned.shape == stored.shape == (64, 96, 3)
    assert np.abs(turned.astype(int) - stored.astype(int)).mean() < 3  # the same pixels, re-encoded


# 7. every CSV id names a photo, sample_submission.csv's included
def test_a_sample_id_with_a_folder_is_refused_before_any_work(tiny_data, zoo_config):
    path = tiny_data / "sample_submission.csv"
    lines = path.read_text().splitlines()
    lines[3] = "../../" + lines[3]
    path.write_text("\n".join(lines) + "\n")
    result = run_cli("check-data", str(tiny_data), "--quick")
    assert_user_error(result, str(path), "line 4", "not a photo's name", "no folder")
    result = run_cli("folds", "--config", str(zoo_config))
    assert_user_error(result, str(path), "line 4")
    assert not (zoo_config.parent / "run").exists()


# 8. fold-train shares the run with fold-train, never with stack or submit while it retrains
def cli(config: Path, *args: str):
    return run_cli(args[0], "--config", str(config), *args[1:])


@pytest.mark.slow
def test_a_retrain_beside_a_stack_is_refused(zoo_config, monkeypatch):
    import workbench.stack
    from workbench.config import load_config

    assert cli(zoo_config, "folds").returncode == 0
    seen = {}

    def during_stack(run, start, progress):
        seen["retrain"] = cli(zoo_config, "fold-train", "--retrain", "avg_mask_32")
        seen["train"] = cli(zoo_config, "fold-train")
        return []

    monkeypatch.setattr(workbench.stack, "_stack", during_stack)
    workbench.stack.stack(load_config(zoo_config), progress=False)
    for result in seen.values():
        assert_user_error(result, "`workbench stack`", f"pid {os.getpid()}", "wait for it to finish")
    assert "re-run `workbench fold-train --retrain avg_mask_32`" in seen["retrain"].stderr
    assert not (zoo_config.parent / "run" / "members").exists()


@pytest.mark.slow
def test_stack_and_submit_are_refused_while_a_retrain_holds_the_run(zoo_config, monkeypatch):
    import workbench.fold_train
    from workbench.config import load_config

    assert cli(zoo_config, "fold-train").returncode == 0
    seen = {}

    def during_retrain(config, selected, n_folds, progress, checked):
        seen.update({verb: cli(zoo_config, verb) for verb in ("stack", "submit", "tune", "fold-train")})
        return []

    monkeypatch.setattr(workbench.fold_train, "_drive", during_retrain)
    monkeypatch.setattr(workbench.fold_train, "_write_member_rows", lambda run, folds, start: None)
    workbench.fold_train.fold_train(load_config(zoo_config), retrain=("avg_mask_32",), progress=False)
    for result in seen.values():
        assert_user_error(result, "`workbench fold-train --retrain avg_mask_32`", "wait for it to finish")


@pytest.mark.slow
def test_fold_train_processes_share_the_run(zoo_config, monkeypatch):
    import workbench.fold_train
    from workbench.config import load_config

    seen = {}

    def during_train(config, selected, n_folds, progress, checked):
        seen.update({verb: cli(zoo_config, *verb.split()) for verb in
                     ("fold-train", "fold-train --retrain avg_mask_32", "stack")})
        return []

    monkeypatch.setattr(workbench.fold_train, "_drive", during_train)
    workbench.fold_train.fold_train(load_config(zoo_config), progress=False)
    assert seen["fold-train"].returncode == 0, seen["fold-train"].stderr  # a second process of a fan-out
    assert "avg_mask_32/fold2: trained" in seen["fold-train"].stdout
    for verb in ("fold-train --retrain avg_mask_32", "stack"):
        assert_user_error(seen[verb], "`workbench fold-train`", "wait for it to finish")


# 10. the small ones
def test_csvs_with_a_byte_order_mark_are_read(tiny_data):
    for name in ("train_masks.csv", "sample_submission.csv", "metadata.csv", "test_masks.csv"):
        path = tiny_data / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    result = run_cli("check-data", str(tiny_data))
    assert result.returncode == 0, result.stderr


def test_a_bad_header_names_the_fix(tiny_data):
    path = tiny_data / "metadata.csv"
    path.write_text(path.read_text().replace("id,", "car,", 1))
    assert_user_error(run_cli("check-data", str(tiny_data)), str(path), "make line 1 id,year,make")


def test_a_folder_as_config_and_a_file_as_data_folder(tmp_path):
    assert_user_error(run_cli("stack", "--config", str(tmp_path)), str(tmp_path), "is a folder", "YAML file")
    file = tmp_path / "data.zip"
    file.write_text("x")
    result = run_cli("check-data", str(file))
    assert_user_error(result, str(file), "is a file, not a data folder", "train/")
    assert "synth" not in result.stderr


def test_an_uppercase_id_asks_for_lowercase_hex_digits(tiny_data):
    img = next(i for i in CarvanaData(tiny_data).train_ids if not i[:12].isdigit())
    (tiny_data / "train" / f"{img}.jpg").rename(tiny_data / "train" / f"{img[:12].upper()}{img[12:]}.jpg")
    assert_user_error(run_cli("check-data", str(tiny_data)), "12 lowercase hex digits")
