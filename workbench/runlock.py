"""One writer per run folder: `stack`, `submit`, `import-member` and `fold-train --retrain` hold the run's
lock exclusively; `tune` and `fold-train` hold it shared (several tune processes share their studies, the
fold-train processes of a fan-out share the run, but none runs beside an exclusive holder: a `--retrain`
discards maps a `stack` is reading).

The lock is `carvana.atomic.file_lock` on `RUN/.run.lock` (an `flock`: the kernel frees it when its
holder dies, so the lock of a killed process is simply taken over). The holder writes its verb, host and
pid into the file; a second process refuses at once, in one line naming that holder. Taking the lock
also cleans the temp files that dead processes left in the run folder (see `clean_stale_temps`), once the
folder is known to be a run (`workbench.runfolder.open_run_dir`): a folder of someone else's is never
locked, written or cleaned.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from carvana.atomic import TEMP_MARK, LockHeld, file_lock, pid_alive
from carvana.errors import WorkbenchError
from workbench.runfolder import LOCK_NAME, open_run_dir

__all__ = ["LOCK_NAME", "clean_stale_temps", "run_lock"]

STALE_TEMP_S = 600.0  # a temp file untouched this long whose writer is not a live process here is litter
# `.<name>.[<host>.]<pid>.<8 hex>.tmp<suffixes>` (carvana.atomic.temp_path)
_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}" + re.escape(TEMP_MARK) + r"(\.|$)")
_held: dict[Path, int] = {}  # lock paths this process holds, with a depth: the lock is reentrant


def _holder(verb: str) -> str:
    return json.dumps(
        {"verb": verb, "host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    )


def _describe(text: str) -> str:
    try:
        record = json.loads(text)
        return f"`workbench {record['verb']}` (host {record['host']}, pid {record['pid']}, since {record['since']})"
    except (ValueError, KeyError, TypeError):
        return "another workbench process"


@contextlib.contextmanager
def run_lock(run_dir: Path, verb: str, *, shared: bool = False) -> Iterator[None]:
    """Hold the run folder's lock for `verb` (exclusive unless `shared`); WorkbenchError naming the holder
    when another live process has it. Reentrant: `stack` calls `submit` under its own lock. A new or empty
    folder becomes a run here; any other folder that is not a run is refused before the lock file is made."""
    path = (Path(run_dir) / LOCK_NAME).resolve()
    if _held.get(path):
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    open_run_dir(run_dir, claim=True)
    try:
        with file_lock(path, wait=False, shared=shared, holder=_holder(verb)):
            _held[path] = 1
            try:
                clean_stale_temps(Path(run_dir))
                yield
            finally:
                _held.pop(path, None)
    except LockHeld as held:
        raise WorkbenchError(
            f"{run_dir}: {_describe(held.holder)} is writing this run folder; wait for it to finish and "
            f"re-run `workbench {verb}`, or use another --run-dir"
        ) from None


def clean_stale_temps(run_dir: Path, min_age_s: float = STALE_TEMP_S) -> list[Path]:
    """Delete temp files (carvana.atomic names) under `run_dir` whose writer cannot still be writing them:
    its pid is no live process on this host and the file is older than `min_age_s` (a writer on another
    host of a shared folder keeps touching its file). Returns what was deleted."""
    removed = []
    for folder, _, names in os.walk(run_dir):
        for name in names:
            match = _TEMP_NAME.match(name)
            if match is None:
                continue
            path = Path(folder) / name
            with contextlib.suppress(FileNotFoundError):
                if not pid_alive(int(match.group(1))) and time.time() - path.stat().st_mtime > min_age_s:
                    path.unlink()
                    removed.append(path)
    return removed
