"""A run folder nothing can corrupt (issue 13), through the real CLI on the tiny synthetic data: other data
refused, settings validated before any write, finished entries replaced only by finished ones, one writer
per run, escaped storage URLs, one line for OS-level failures, and every fix hint followed."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY_SIZE, assert_user_error, run_cli

RUN_YAML = """folds: {n_folds: 3}
zoo:
  members:
    - avg_mask_128
    - {name: avg_mask_32, arch: avg_mask, height: 32, width: 48}
stack: {blends: [mean, vote], stackers: [logistic], max_pixels: 2000, n_submissions: 1}
tune: {n_trials: 3, per_angle: false}
"""


def tree_digest(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder` (lock files aside)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".run.lock"}


@pytest.fixture(scope="module")
def finished_run(tiny_data_master, tmp_path_factory) -> Path:
    """A tiny run after fold-train and stack (two cheap average-mask members), made once."""
    root = tmp_path_factory.mktemp("guard")
    shutil.copytree(tiny_data_master, root / "data")
    (root / "run.yaml").write_text(f"data: {root / 'data'}\nrun_dir: {root / 'run'}\n" + RUN_YAML)
    for verb in ("fold-train", "stack"):
        result = run_cli(verb, "--config", str(root / "run.yaml"))
        assert result.returncode == 0, result.stderr
    return root


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    """A private copy of the finished run (data, config, run folder) that a test may damage."""
    shutil.copytree(finished_run / "data", tmp_path / "data")
    shutil.copytree(finished_run / "run", tmp_path / "run", symlinks=True)
    (tmp_path / "run.yaml").write_text(f"data: {tmp_path / 'data'}\nrun_dir: {tmp_path / 'run'}\n" + RUN_YAML)
    return tmp_path


def cli(root: Path, verb: str, *args: str, config: str = "run.yaml") -> subprocess.CompletedProcess:
    return run_cli(verb, "--config", str(root / config), *args)


# 1. other data with the same ids
def test_other_data_is_refused_and_both_hints_work(run_copy):
    from carvana.synth import generate

    generate(run_copy / "data2", n_cars=6, n_test_cars=2, size=(128, 96), seed=7, progress=False)
    before = tree_digest(run_copy / "run")
    result = cli(run_copy, "stack", "--data", str(run_copy / "data2"))
    assert_user_error(result, "data.json", "image size 96x64 -> 128x96", "another --run-dir", "--data")
    assert tree_digest(run_copy / "run") == before
    assert_user_error(cli(run_copy, "folds", "--data", str(run_copy / "data2")), "image size")
    # the hints: another run folder for the new data, or the data the run was built on
    result = cli(run_copy, "folds", "--data", str(run_copy / "data2"), "--run-dir", str(run_copy / "run2"))
    assert result.returncode == 0, result.stderr
    assert (run_copy / "run2" / "data.json").is_file()
    result = cli(run_copy, "stack")
    assert result.returncode == 0, result.stderr
    assert "complete, skipped" in result.stdout


# 2. every setting validated before anything is written
@pytest.mark.parametrize("setting, fragment", [
    ("stack: {band: [0.9, 0.1]}", "`stack.band` is [0.9, 0.1]"),
    ("stack: {max_pixels: -1}", "`stack.max_pixels` is -1"),
    ("stack: {blends: [mean, median]}", "`stack.blends` names 'median'; valid: mean"),
    ("stack: {n_submissions: 0}", "`stack.n_submissions` is 0"),
    ("stack: {postprocess: [largest, smooth]}", "`stack.postprocess` names 'smooth'; valid: largest"),
    ("stack: {weighting: area}", "`stack.weighting` is 'area'; use one of"),
    ("oof: {resolution: 0x0}", "size '0x0'"),
    ("folds:\n  n_folds: [3\n  seed: 1", "line 5"),
])
def test_bad_settings_are_refused_before_any_write(run_copy, setting, fragment):
    (run_copy / "bad.yaml").write_text(f"data: {run_copy / 'data'}\nrun_dir: {run_copy / 'run'}\n{setting}\n")
    before = tree_digest(run_copy / "run")
    for verb in ("stack", "fold-train"):
        assert_user_error(cli(run_copy, verb, config="bad.yaml"), "bad.yaml", fragment)
    assert tree_digest(run_copy / "run") == before


def test_fold_train_without_zoo_writes_nothing(tiny_config, tmp_path):
    assert_user_error(run_cli("fold-train", "--config", str(tiny_config)), "zoo")
    assert not (tmp_path / "run").exists()


# 3. finished work replaced only by finished work
def test_a_failed_rebuild_keeps_the_finished_entry(run_copy):
    entry = run_copy / "run" / "stack" / "logistic"
    before = tree_digest(entry)
    test_map = next((run_copy / "run" / "oof" / "avg_mask_32" / "test").iterdir())
    test_map.write_bytes(b"damaged")
    config = (run_copy / "run.yaml").read_text().replace("max_pixels: 2000", "max_pixels: 1500")
    (run_copy / "run.yaml").write_text(config)
    result = cli(run_copy, "stack")
    assert_user_error(result, str(test_map), "damaged map", "fold-train --retrain avg_mask_32")
    assert tree_digest(entry) == before  # the rebuild was written beside it and never swapped in
    assert not (run_copy / "run" / "stack" / ".building" / "logistic").exists()
    # the hint, followed, fixes it
    assert cli(run_copy, "fold-train", "--retrain", "avg_mask_32").returncode == 0
    result = cli(run_copy, "stack")
    assert result.returncode == 0, result.stderr
    assert tree_digest(entry) != before


def test_a_swap_cut_short_is_undone_and_dead_builders_litter_removed(run_copy):
    stack_dir = run_copy / "run" / "stack"
    before = tree_digest(stack_dir / "mean")
    os.rename(stack_dir / "mean", stack_dir / ".old-mean.0123abcd")  # killed between the swap's two renames
    (stack_dir / ".building" / "vote").mkdir(parents=True)
    litter = run_copy / "run" / ".leaderboard.csv.99999999.0123abcd.tmp.csv"
    litter.write_text("half")
    os.utime(litter, (0, 0))
    result = cli(run_copy, "stack")
    assert result.returncode == 0, result.stderr
    assert "mean: complete, skipped" in result.stdout
    assert tree_digest(stack_dir / "mean") == before
    assert not (stack_dir / ".building").exists() and not litter.exists()


# 4. one writer per run folder
def test_a_second_writer_is_refused_naming_the_holder(run_copy):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from workbench.runlock import run_lock\n"
         f"with run_lock({str(run_copy / 'run')!r}, 'submit'):\n    print('held', flush=True); sys.stdin.read()"],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        before = tree_digest(run_copy / "run")
        for verb in ("stack", "submit", "tune"):
            assert_user_error(cli(run_copy, verb), "`workbench submit`", f"pid {holder.pid}", "wait for it")
        assert tree_digest(run_copy / "run") == before
    finally:
        holder.communicate("")
    result = cli(run_copy, "submit")  # the hint: once the holder is done, the same command works
    assert result.returncode == 0, result.stderr


def test_a_dead_holders_lock_is_taken_over(run_copy):
    lock = run_copy / "run" / ".run.lock"
    lock.write_text('{"verb": "stack", "host": "h", "pid": 999999, "since": "then"}')  # no process holds it
    assert cli(run_copy, "submit").returncode == 0


# 5. storage URLs from any path
@pytest.mark.parametrize("name", ["run?x", "a%20b", "c#d", "with space", "caf\u00e9-\u00fc"])
def test_the_tuning_storage_stays_inside_any_run_folder(tmp_path, name):
    import optuna

    from workbench.tune import sqlite_url

    folder = tmp_path / name
    folder.mkdir()
    optuna.create_study(storage=sqlite_url(folder / "optuna.db"), study_name="s")
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted([name, "optuna.db"])


def test_tune_in_a_run_folder_with_url_characters(run_copy):
    odd = run_copy / "run?x %20#\u00e9"
    shutil.copytree(run_copy / "run", odd)
    result = cli(run_copy, "tune", "--run-dir", str(odd))
    assert result.returncode == 0, result.stderr
    assert (odd / "optuna.db").is_file() and not (run_copy / "run").joinpath("optuna.db.x").exists()
    assert sorted(p.name for p in run_copy.iterdir()) == sorted(["data", "run", "run.yaml", odd.name])


# 6. one line for OS-level failures
def test_out_naming_a_folder_and_run_dir_naming_a_file(run_copy):
    assert_user_error(cli(run_copy, "submit", "--out", str(run_copy)), str(run_copy), "is a folder")
    (run_copy / "file").write_text("x")
    for verb in ("stack", "submit", "tune", "folds", "fold-train"):
        assert_user_error(cli(run_copy, verb, "--run-dir", str(run_copy / "file")), "is a file, not a folder")


def test_a_damaged_optuna_database_and_its_hint(run_copy):
    db = run_copy / "run" / "optuna.db"
    db.write_bytes(b"this is no database" * 100)
    result = cli(run_copy, "tune")
    assert_user_error(result, str(db), "damaged Optuna database", "mv ")
    subprocess.run(["mv", str(db), f"{db}.damaged"], check=True)  # the hint
    result = cli(run_copy, "tune")
    assert result.returncode == 0, result.stderr


def _mount(folder: Path, size: str) -> None:
    folder.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {result.stderr.decode().strip()}")


@pytest.fixture
def small_fs(tmp_path):
    """A 16 MB tmpfs the test fills or remounts read-only, unmounted afterwards."""
    folder = tmp_path / "fs"
    _mount(folder, "16m")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def fill_disk(folder: Path) -> Path:
    """Fill `folder`'s file system to the last byte with one file; return it (unlink it to free the space)."""
    filler = folder / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def test_disk_full_during_stack_says_so_and_keeps_finished_work(run_copy, small_fs):
    run = small_fs / "run"
    shutil.copytree(run_copy / "run", run, ignore=shutil.ignore_patterns("cache"))
    shutil.rmtree(run / "stack" / "vote")
    before = tree_digest(run / "stack" / "mean")
    filler = fill_disk(small_fs)
    result = cli(run_copy, "stack", "--run-dir", str(run))
    assert_user_error(result, "the disk is full", "free up", str(small_fs))
    assert tree_digest(run / "stack" / "mean") == before
    assert not (run / "stack" / "vote").exists()
    filler.unlink()  # the hint: free space, then re-run the same command
    result = cli(run_copy, "stack", "--run-dir", str(run))
    assert result.returncode == 0, result.stderr
    assert (run / "stack" / "vote" / "member.json").is_file()


def test_disk_full_during_fold_train_says_so_and_keeps_finished_work(run_copy, small_fs):
    """A real PyTorch member trained into a run on a full disk: one line naming the disk, no member lost."""
    run = small_fs / "run"
    shutil.copytree(run_copy / "run", run, ignore=shutil.ignore_patterns("cache"))
    cnn = "    - {name: simple_cnn_32, arch: simple_cnn, height: 32, width: 48, train: {epochs: 1}}\n"
    config = (run_copy / "run.yaml").read_text().replace(f"run_dir: {run_copy / 'run'}", f"run_dir: {run}")
    (run_copy / "cnn.yaml").write_text(config.replace("    - avg_mask_128\n", "    - avg_mask_128\n" + cnn))
    finished = tree_digest(run / "members")
    assert finished  # the two average-mask members, trained before
    filler = fill_disk(small_fs)
    result = cli(run_copy, "fold-train", config="cnn.yaml")
    assert_user_error(result, "the disk is full", "free up", str(small_fs))
    assert {k: v for k, v in tree_digest(run / "members").items() if not k.startswith("simple_cnn_32")} == finished
    filler.unlink()  # the hint: free space, then re-run the same command
    result = cli(run_copy, "fold-train", config="cnn.yaml")
    assert result.returncode == 0, result.stderr
    assert all((run / "members" / "simple_cnn_32" / f"fold{k}" / "done.json").is_file() for k in range(3))


def test_a_read_only_run_folder(run_copy, small_fs):
    run = small_fs / "run"
    shutil.copytree(run_copy / "run", run, ignore=shutil.ignore_patterns("cache"))
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    before = tree_digest(run)
    for verb in ("stack", "submit"):
        assert_user_error(cli(run_copy, verb, "--run-dir", str(run)), "read-only")
    assert_user_error(cli(run_copy, "submit", "--out", str(small_fs / "s.csv.gz")), "read-only")
    assert tree_digest(run) == before


# 7. fix hints that work
def test_retrain_needs_member_names_from_the_zoo(run_copy):
    result = cli(run_copy, "fold-train", "--retrain")
    assert result.returncode == 2 and "expected at least one argument" in result.stderr
    assert_user_error(cli(run_copy, "fold-train", "--retrain", "nope"), "no member 'nope'", "avg_mask_128")


def test_a_damaged_entry_map_names_a_fix_that_works(run_copy):
    entry = run_copy / "run" / "stack" / "vote"
    damaged = next((entry / "test").iterdir())
    damaged.write_bytes(b"damaged")
    result = cli(run_copy, "submit", "--entry", "vote")
    assert_user_error(result, str(damaged), f"rm -r {entry}", "workbench stack")
    shutil.rmtree(entry)  # the hint
    assert cli(run_copy, "stack").returncode == 0
    assert cli(run_copy, "submit", "--entry", "vote").returncode == 0


def test_a_folds_mismatch_names_a_fix_that_works(run_copy):
    folds = run_copy / "run" / "folds.csv"
    folds.write_text("\n".join(folds.read_text().splitlines()[:-1]) + "\n")
    result = cli(run_copy, "folds")
    assert_user_error(result, "folds.csv", "another --run-dir")
    assert cli(run_copy, "folds", "--run-dir", str(run_copy / "fresh")).returncode == 0


# 8. blend
def test_blend_refuses_its_input_as_output_and_an_input_twice(run_copy):
    sub = run_copy / "run" / "submission.csv.gz"
    before = sub.read_bytes()
    size = f"{TINY_SIZE[0]}x{TINY_SIZE[1]}"
    assert_user_error(run_cli("blend", str(sub), str(sub), "--out", str(run_copy / "b.csv.gz"), "--size", size),
                      "listed twice")
    other = run_copy / "run" / "submissions"
    files = sorted(str(p) for p in other.glob("*.csv.gz"))
    assert_user_error(run_cli("blend", str(sub), *files, "--out", str(sub), "--size", size), "is one of the inputs")
    assert sub.read_bytes() == before


def test_a_truncated_marker_is_treated_as_missing(run_copy):
    marker = run_copy / "run" / "members" / "avg_mask_32" / "test.json"
    marker.write_text(marker.read_text()[:10])
    assert_user_error(cli(run_copy, "stack"), "at least 2 finished members", "fold-train")
    assert cli(run_copy, "fold-train").returncode == 0  # the hint: the test maps are made again
    assert cli(run_copy, "stack").returncode == 0


def test_torch_and_sqlite_words_for_a_full_disk_are_named(small_fs):
    """torch says "file write failed", SQLite "database or disk is full": both read as a full disk."""
    import optuna
    import torch

    from stacking.storage import sqlite_url
    from workbench.failures import explain

    fill_disk(small_fs)
    errors = []
    for write in (lambda: torch.save(torch.zeros(1 << 16), small_fs / "model.pt"),
                  lambda: optuna.create_study(storage=sqlite_url(small_fs / "optuna.db"))):
        with pytest.raises(Exception) as caught:
            write()
        errors.append(caught.value)
    for error in errors:
        message = explain(error, small_fs)
        assert message is not None and "the disk is full" in message and str(small_fs) in message, (error, message)
