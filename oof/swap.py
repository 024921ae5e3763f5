"""Finished work replaced only by finished work: a member (or stacking entry) being rebuilt is written
beside the old one, in `<store>/.building/<member>`, and swapped in when complete.

A crash, kill or refusal at any point before the swap leaves the previous complete member in place;
the swap itself is two renames in one folder (old aside, new in), and `recover` (run by the next writer,
under the run's lock) puts an old member back if a process died between them, and removes what dead
builders left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator

from oof.store import Store

__all__ = ["BUILDING", "rebuild", "recover"]

BUILDING = ".building"  # hidden: Store.members() lists only folders holding member.json
OLD_PREFIX = ".old-"


@contextlib.contextmanager
def rebuild(store: Store, member: str) -> Iterator[Store]:
    """`with rebuild(store, m) as beside: beside.open_member(m, ...)` write m's maps into `beside`; when the
    block ends without error they replace `store`'s m, otherwise they are deleted and m is untouched."""
    beside = Store(store.path / BUILDING)
    target = beside.path / member
    shutil.rmtree(target, ignore_errors=True)  # a dead builder's part (the caller holds the run's lock)
    beside.path.mkdir(parents=True, exist_ok=True)
    try:
        yield beside
        _swap_in(store, member)
    finally:
        shutil.rmtree(target, ignore_errors=True)
        with contextlib.suppress(OSError):
            beside.path.rmdir()  # when no other part is in it


def _swap_in(store: Store, member: str) -> None:
    new, current = store.path / BUILDING / member, store.path / member
    old = store.path / f"{OLD_PREFIX}{member}.{uuid.uuid4().hex[:8]}"
    if current.exists():
        os.rename(current, old)
    os.rename(new, current)
    shutil.rmtree(old, ignore_errors=True)


def recover(store: Store) -> None:
    """Undo a swap cut short (old aside, new not in: the old comes back) and remove dead builders' parts."""
    if not store.path.is_dir():
        return
    for folder in sorted(store.path.glob(f"{OLD_PREFIX}*")):
        member = folder.name.removeprefix(OLD_PREFIX).rsplit(".", 1)[0]
        if (store.path / member).exists():
            shutil.rmtree(folder, ignore_errors=True)
        else:
            os.rename(folder, store.path / member)
    shutil.rmtree(store.path / BUILDING, ignore_errors=True)
