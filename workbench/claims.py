"""Per-job claims, so that two processes (two drivers, manual or SLURM fan-out, a Ray retry) never run
one member x fold or one member's test prediction at the same time.

A claim is a small JSON file created with O_CREAT | O_EXCL (atomic on local disks and on NFSv3+, as
Optuna's journal lock relies on) holding the owner's host, pid and engine task id. While the job runs a
heartbeat thread touches its mtime. A claim is stale, and taken over, when its owner is a dead process on
this host, or when its heartbeat is older than the grace period (an owner on another host that died).
Taking over renames the stale file to a unique name first: of two processes reclaiming at once, one
rename succeeds and the other sees the file gone and tries again.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from carvana.atomic import pid_alive
from carvana.errors import WorkbenchError

__all__ = ["ClaimedElsewhere", "claimed", "is_stale", "read_claim", "release", "try_claim"]

HEARTBEAT_S = 10.0  # the heartbeat thread touches the claim this often (well inside any sane grace period)
RECLAIM_LOCK_S = 30.0  # a takeover lock older than this was left by a process that died while holding it


class ClaimedElsewhere(Exception):
    """The job is being run by a live process: `owner` is its claim ({host, pid, task_id, started})."""

    def __init__(self, path: Path, owner: dict) -> None:
        super().__init__(f"{path}: held by {owner.get('host')} pid {owner.get('pid')}")
        self.path, self.owner = path, owner


def owner_record(task_id: str | None = None) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "task_id": task_id, "started": time.time()}


def read_claim(path: Path) -> dict | None:
    """The claim's owner, or None when there is no claim (a half-written claim reads as {})."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return {}


def is_stale(path: Path, owner: dict, grace_s: float, task_id: str | None = None) -> bool:
    """True when the claim's owner cannot still be running the job."""
    if task_id is not None and owner.get("task_id") == task_id:
        return True  # a retry of the same engine task: its first attempt's process is gone
    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
        if owner["pid"] == os.getpid():
            return False
        return not pid_alive(owner["pid"])
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    return age > grace_s


def try_claim(path: Path, grace_s: float, task_id: str | None = None) -> bool:
    """Create the claim at `path` for this process; False if a live owner holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = json.dumps(owner_record(task_id)).encode()
    for _ in range(50):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = read_claim(path)
            if owner is None:
                continue  # released meanwhile: try again
            if not is_stale(path, owner, grace_s, task_id):
                return False
            _take_over(path, owner, grace_s, task_id)
            continue
        with os.fdopen(fd, "wb") as f:
            f.write(record)
        return True
    raise WorkbenchError(f"{path}: could not claim this job after 50 tries; remove the file if no job is running")


def _take_over(path: Path, owner: dict, grace_s: float, task_id: str | None) -> None:
    """Remove the stale claim, holding `.<name>.reclaim` so that no other reclaimer removes a fresh one."""
    lock = path.with_name(f".{path.name}.reclaim")
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        with contextlib.suppress(FileNotFoundError):
            if time.time() - lock.stat().st_mtime > RECLAIM_LOCK_S:  # its holder died between two syscalls
                lock.unlink()
        time.sleep(0.05)
        return
    os.close(fd)
    try:
        current = read_claim(path)
        if current == owner and is_stale(path, current, grace_s, task_id):
            path.unlink(missing_ok=True)
    finally:
        lock.unlink(missing_ok=True)


def release(path: Path) -> None:
    """Remove the claim if this process still owns it."""
    owner = read_claim(path)
    if owner and owner.get("host") == socket.gethostname() and owner.get("pid") == os.getpid():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def claimed(path: Path, grace_s: float, task_id: str | None = None) -> Iterator[None]:
    """Hold the claim at `path` (heartbeat running) for the block; ClaimedElsewhere if a live owner has it."""
    if not try_claim(path, grace_s, task_id):
        raise ClaimedElsewhere(path, read_claim(path) or {})
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(path, stop), daemon=True, name=f"claim {path.name}")
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        release(path)


def _heartbeat(path: Path, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)
