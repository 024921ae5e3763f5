"""carvana.atomic (atomic paths, file locks) and carvana.progress (bars on a terminal, lines in a log)."""
from __future__ import annotations

import fcntl
import io
import subprocess
import sys
import time

import numpy as np
import pytest

from carvana import WorkbenchError
from carvana.atomic import atomic_path, file_lock, write_json_atomic
from carvana.progress import progress_bar


def test_atomic_path_replaces_on_success_and_keeps_the_old_file_on_error(tmp_path):
    target = tmp_path / "maps.npy"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".") and tmp.name.endswith(".tmp.npy")
        np.save(tmp, np.arange(3))  # np.save appends .npy unless the name ends in it
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        np.save(tmp, np.arange(5))
        raise RuntimeError("killed mid-write")
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps.npy"]


def test_atomic_path_names_are_unique_and_keep_every_suffix(tmp_path):
    with atomic_path(tmp_path / "best.weights.h5") as a, atomic_path(tmp_path / "best.weights.h5") as b:
        assert a != b and a.name.endswith(".tmp.weights.h5")  # Keras insists on .weights.h5
        a.write_bytes(b"a")
        b.write_bytes(b"b")
    assert (tmp_path / "best.weights.h5").read_bytes() == b"a"  # the last block to end wins
    assert [p.name for p in tmp_path.iterdir()] == ["best.weights.h5"]


def test_atomic_path_names_a_missing_folder(tmp_path):
    with pytest.raises(WorkbenchError, match="nope: no such folder"):
        write_json_atomic(tmp_path / "nope" / "x.json", {})


def test_file_lock_excludes_another_process(tmp_path):
    lock = tmp_path / "sub" / ".lock"
    holder = ("import sys, time; from carvana.atomic import file_lock\n"
              f"with file_lock({str(lock)!r}):\n    print('held', flush=True); time.sleep(1.5)\n")
    child = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "held"
        with open(lock, "a") as f, pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        start = time.perf_counter()
        with file_lock(lock):  # blocks until the child lets go
            assert child.poll() is not None or time.perf_counter() - start > 0.1
    finally:
        child.kill()
        child.wait()


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_on_a_terminal_and_prints_lines_in_a_log(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    for _ in progress_bar(range(500), desc="encoding", unit="mask", leave=False):
        pass
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert lines[0].startswith("encoding: 0/500 mask") and lines[-1].startswith("encoding: 500/500 mask")
    assert len(lines) <= 3  # start, end, and one every LOG_INTERVAL_S at most
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    for _ in progress_bar(range(5), desc="encoding"):
        pass
    assert "\r" in terminal.getvalue()
    quiet = io.StringIO()
    monkeypatch.setattr(sys, "stderr", quiet)
    for _ in progress_bar(range(5), desc="encoding", disable=True):
        pass
    assert quiet.getvalue() == ""
