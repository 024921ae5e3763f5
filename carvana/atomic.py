"""Atomic writes and file locks: the one home for both.

`atomic_path(path)` yields a uniquely named temp path in the target's folder; whatever writes it
(`open`, `np.save`, `torch.save`, Keras' `save_weights`) writes a file that lands on `path` by `os.replace`
when the block ends without error, and is removed otherwise. Readers see the old file or the new one,
never a part; unique names let several processes write one folder at once; temp names start with `.`
so folder listings skip them, and end with the target's suffixes (`np.save` and Keras insist on them).

`file_lock(path)` holds an exclusive `flock` on `path` for the duration of a block.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

from carvana.errors import WorkbenchError

__all__ = ["atomic_path", "copy_atomic", "file_lock", "temp_path", "write_atomic", "write_json_atomic",
           "write_text_atomic"]

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


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    write_atomic(path, text.encode())


def copy_atomic(source: Path, path: Path) -> None:
    """Copy `source` to `path` atomically."""
    write_atomic(path, Path(source).read_bytes())


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` (created if missing, with its folder) for the block; blocks
    until no other process holds it. The lock goes with the process, so a killed holder frees it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)
