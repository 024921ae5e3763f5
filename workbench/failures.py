"""One line for every operating-system failure a user can cause or meet (the CLI prints it, exit 2).

Disk full, a read-only folder, a path that is a file where a folder is needed (or the reverse), a
damaged Optuna database: libraries report these in their own words (torch: "file write failed", SQLite:
"database or disk is full", "file is not a database"), never as the fix. `explain` turns them into one
sentence naming the path and the fix, or returns None for an error it does not know (a real bug keeps
its traceback).
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from pathlib import Path

from oof.format import TRAINED_DIR
from workbench.runfolder import ENTRIES_DIR, MEMBERS_DIR

__all__ = ["explain", "free_space_needed"]

DISK_FULL_WORDS = (
    "no space left",
    "disk is full",
    "disk full",
    "quota exceeded",
    "file write failed",
    "unexpected pos",
    "pytorchstreamwriter",
)  # the last three: torch.save on a full disk
LOW_FREE_BYTES = 16 << 20  # below this, a library's vague write failure is taken for a full disk


def _mb(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.1f} MB"


def _folder_size(folder: Path) -> int:
    total = 0
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def free_space_needed(run_dir: Path) -> int:
    """Bytes one more member or entry needs, estimated as the largest one the run already holds (its maps)."""
    sizes = [
        _folder_size(d)
        for store in (MEMBERS_DIR, ENTRIES_DIR, TRAINED_DIR)
        if (run_dir / store).is_dir()
        for d in (run_dir / store).iterdir()
        if d.is_dir()
    ]
    return max(sizes, default=0)


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _disk_full(where: Path, run_dir: Path | None) -> str:
    folder = _existing_parent(where)
    free = shutil.disk_usage(folder).free
    need = free_space_needed(run_dir) if run_dir is not None and run_dir.is_dir() else 0
    need_text = f"about {_mb(need)} more (the size of the run's largest member or entry)" if need else "more space"
    return (
        f"{folder}: the disk is full ({_mb(free)} free); free up {need_text} on that file system, then re-run "
        "the same command (finished work is kept)"
    )


def _os_error(error: OSError, run_dir: Path | None) -> str | None:
    path = Path(error.filename) if error.filename else run_dir
    where = str(path) if path is not None else "a file"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return _disk_full(path or Path("."), run_dir)
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        why = "read-only file system" if error.errno == errno.EROFS else "permission denied"
        return f"{where}: cannot write here ({why}); make it writable, or choose another --run-dir / --out"
    if error.errno == errno.ENOTDIR:
        return f"{where}: a part of this path is a file, not a folder; give a folder path (or a new name)"
    if error.errno == errno.EISDIR:
        return f"{where}: is a folder, not a file; give a file path (e.g. --out {where}/submission.csv.gz)"
    if error.errno == errno.EEXIST:
        return f"{where}: exists and is not a folder; give a folder path (or a new name)"
    if error.errno == errno.ENOENT:
        return f"{where}: no such file or folder; check the path"
    return f"{where}: {error.strerror or error}"


def _database_error(error: Exception, storage: str | None) -> str | None:
    text = str(error).lower()
    if "disk is full" in text or "disk i/o" in text:
        return None  # left to the disk-full check
    if any(word in text for word in ("not a database", "malformed", "no such table", "file is encrypted")):
        from stacking.storage import sqlite_path

        path = (sqlite_path(storage) if storage else None) or storage
        return (
            f"{path}: damaged Optuna database ({str(error).splitlines()[0][:120]}); move it aside "
            f"(`mv {path} {path}.damaged`) and re-run: the tuning studies start over"
        )
    return None


def explain(error: BaseException, run_dir: Path | None = None, storage: str | None = None) -> str | None:
    """One line naming the path and the fix for an OS-level failure, or None when `error` is not one."""
    if isinstance(error, OSError):
        return _os_error(error, run_dir)
    if "sqlalchemy" in sys.modules:
        from sqlalchemy.exc import DBAPIError

        if isinstance(error, DBAPIError):
            found = _database_error(error, storage)
            if found:
                return found
    text = str(error).lower()
    if any(word in text for word in DISK_FULL_WORDS):
        where = run_dir or Path(".")
        if shutil.disk_usage(_existing_parent(where)).free < LOW_FREE_BYTES or "space" in text or "full" in text:
            return _disk_full(where, run_dir)
    cause = error.__cause__ or error.__context__
    return explain(cause, run_dir, storage) if isinstance(cause, BaseException) and cause is not error else None
