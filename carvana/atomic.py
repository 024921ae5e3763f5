"""Atomic writes: a uniquely named temp file in the target's folder, then `os.replace`.

Readers see the old file or the new one, never a part; unique temp names let several processes write
the same folder at once; temp files start with `.` so folder listings skip them.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a uniquely named temp file in the same folder and `os.replace`.

    The unique name lets processes write the same folder at once; readers see the old file or the new
    one, never a part. Temp files start with `.` so listings skip them.
    """
    tmp = _temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: dict) -> None:
    """Write `payload` as indented JSON atomically, flushed to disk (metadata is small and precious)."""
    tmp = _temp_path(path)
    try:
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, text.encode())


def copy_atomic(source: Path, path: Path) -> None:
    """Copy `source` to `path` atomically."""
    write_atomic(path, Path(source).read_bytes())
