"""Atomic writes and file locks: the one home for both.

`atomic_path(path)` yields a uniquely named temp path in the target's folder; whatever writes it
(`open`, `np.save`, `torch.save`, Keras' `save_weights`) writes a file that lands on `path` by `os.replace`
when the block ends without error, and is removed otherwise. Readers see the old file or the new one,
never a part; unique names let several processes write one folder at once; temp names start with `.`
so folder listings skip them, and end with the target's suffixes (`np.save` and Keras insist on them).

`file_lock(path)` holds an exclusive (or shared) `flock` on `path` for the duration of a block; with
`wait=False` a busy lock raises LockHeld naming the holder instead of blocking.

`refuse_overwrite(flag, out_path, record_path, taken)` is the one rule for every output path a user names
(`blend --out`, `submit --out`, `folds --export`, `synth --out`): neither the output nor its record may
replace a file the command reads (its inputs, a run folder's own files).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from carvana.errors import WorkbenchError

__all__ = [
    "LockHeld",
    "atomic_path",
    "copy_atomic",
    "file_lock",
    "pid_alive",
    "read_marker",
    "refuse_overwrite",
    "temp_path",
    "write_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

TEMP_MARK = ".tmp"  # every temp name holds it: `.<name>.<host>.<pid>.<hex>.tmp<suffixes>`
_HOST = socket.gethostname().split(".")[0]


def temp_path(path: Path) -> Path:
    """A unique hidden sibling of `path`, ending in `.tmp` and `path`'s suffixes (e.g. `.weights.h5`);
    host, pid and a uuid keep it unique across the hosts of a shared run folder."""
    path = Path(path)
    unique = f"{_HOST}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    return path.with_name(f".{path.name}.{unique}{TEMP_MARK}{''.join(path.suffixes)}")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """`with atomic_path(path) as tmp:` write `tmp`; on success it replaces `path`, on any error (or
    interrupt) it is deleted and `path` keeps its old bytes. WorkbenchError when the folder is missing."""
    path = Path(path)
    if not path.parent.is_dir():
        raise WorkbenchError(f"{path.parent}: no such folder; fix: create it or choose another output path")
    if path.is_dir():
        raise WorkbenchError(f"{path}: is a folder, not a file; give a file path (e.g. {path / path.name})")
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write `payload` as indented JSON atomically, flushed to disk (metadata is small and precious)."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def read_marker(path: Path) -> dict | None:
    """A JSON marker file (done.json, test.json...), or None when it is missing or damaged (truncated by a
    full disk, say): a marker only says work is finished, so a damaged one means the work is done again."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    write_atomic(path, text.encode())


def copy_atomic(source: Path, path: Path) -> None:
    """Copy `source` to `path` atomically."""
    write_atomic(path, Path(source).read_bytes())


def refuse_overwrite(
    flag: str,
    out_path: Path,
    record_path: Path | None,
    taken: Callable[[Path], str | None],
    example: str,
) -> None:
    """WorkbenchError when the output `out_path` or its `record_path` (the JSON written beside it) is a file
    the command reads: `taken(path)` (path absolute, symlinks resolved) says what the path is, e.g. "one of
    the inputs", or None when writing there destroys nothing. `example` is a path the message offers."""
    for path, subject in ((out_path, ""), (record_path, f"its record {record_path} ")):
        role = None if path is None else taken(Path(path).resolve())
        if role:
            raise WorkbenchError(
                f"{flag} {out_path}: {subject}is {role}; writing there would overwrite it: choose another {flag}, "
                f"e.g. {example}"
            )


class LockHeld(WorkbenchError):
    """`file_lock(..., wait=False)` found the lock held by a live process; `holder` is the text it left."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path}: held by {holder or 'another process'}")
        self.path, self.holder = path, holder


@contextlib.contextmanager
def file_lock(path: Path, *, wait: bool = True, shared: bool = False, holder: str | None = None) -> Iterator[None]:
    """Hold an `flock` on `path` (created if missing, with its folder) for the block: exclusive, or `shared`
    with other shared holders. `wait=False` raises LockHeld (with the holder's text) instead of blocking;
    `holder` (e.g. verb, host, pid) is written into the lock file for the next one to read. The lock goes
    with the process, so a killed holder frees it: a stale lock file is simply taken over."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as lock_file:
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(lock_file, mode)
        except BlockingIOError:
            lock_file.seek(0)
            raise LockHeld(path, lock_file.read().strip()) from None
        try:
            if holder is not None:
                lock_file.truncate(0)
                lock_file.write(holder)
                lock_file.flush()
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (another user's process counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
