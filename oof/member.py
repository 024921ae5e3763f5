"""A member's metadata (`<store>/<member>/member.json`): creation, the spec/folds/resolution guard, reset.

Several processes (one per fold job) open the same member at once, so every read-modify-write of
member.json happens under an exclusive `flock` on `<member>/.lock` and lands by atomic replace: no
process loses another's update. The maps themselves are separate files and need no lock.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import json
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from carvana.atomic import file_lock
from carvana.errors import WorkbenchError
from oof.format import FORMAT, FORMAT_VERSION, SPLITS, redo_hint, write_json_atomic

META_NAME = "member.json"
LOCK_NAME = ".lock"
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def canonical_spec(spec: dict) -> dict:
    """The spec as it reads back from JSON (tuples become lists, keys sorted), so comparisons are fair."""
    try:
        return json.loads(json.dumps(spec, sort_keys=True))
    except TypeError as error:
        raise TypeError(f"member spec must be JSON-serialisable (plain dicts, lists, str, numbers): {error}") from None


def check_identity(folds_hash: str, resolution: tuple[int, int]) -> tuple[str, list[int]]:
    """Validated (folds_hash, [H, W])."""
    if not isinstance(folds_hash, str) or not _SHA256_HEX.match(folds_hash):
        raise ValueError(f"folds_hash must be the sha256 hex digest of folds.csv, got {folds_hash!r}")
    height, width = (int(v) for v in resolution)
    if height <= 0 or width <= 0:
        raise ValueError(f"resolution must be positive (H, W), got {resolution!r}")
    return folds_hash, [height, width]


@contextlib.contextmanager
def locked(member_dir: Path) -> Iterator[None]:
    """Hold the member's exclusive lock (blocking) for the duration of the block."""
    with file_lock(member_dir / LOCK_NAME):
        yield


def load_meta(member_dir: Path) -> dict | None:
    """The member's metadata, or None if it has none; WorkbenchError if it is damaged or too new."""
    path = member_dir / META_NAME
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise WorkbenchError(f"{path}: unreadable ({error}); {redo_hint(member_dir)}") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise WorkbenchError(
            f"{path}: store format {meta.get('format')} v{meta.get('format_version')}, this workbench reads "
            f"{FORMAT} v{FORMAT_VERSION}; upgrade the workbench or {redo_hint(member_dir)}"
        )
    return meta


def open_meta(
    member_dir: Path,
    spec: dict,
    folds_hash: str,
    resolution: tuple[int, int],
    reset: bool,
    unshaping: Sequence[str] = (),
) -> dict:
    """Create, verify or (with `reset`) recreate the member's metadata under its lock; return it.

    A member whose spec, folds_hash or resolution differs is refused unless `reset`, which deletes
    all its maps first: old maps must never pass for the new spec's. `unshaping`: dotted paths of spec
    settings that do not change the maps (how batches are loaded), left out of the comparison on both sides.
    """
    spec = canonical_spec(spec)
    folds_hash, size = check_identity(folds_hash, resolution)
    with locked(member_dir):
        meta = None if reset else load_meta(member_dir)
        if meta is not None:
            _refuse_changes(member_dir, meta, spec, folds_hash, size, unshaping)
            meta["updated"] = now()
        else:
            for split in SPLITS:
                shutil.rmtree(member_dir / split, ignore_errors=True)
            stamp = now()
            meta = {
                "member": member_dir.name,
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "spec": spec,
                "folds_hash": folds_hash,
                "resolution": size,
                "generation": uuid.uuid4().hex,
                "created": stamp,
                "updated": stamp,
                "sessions": {},
            }
        write_json_atomic(member_dir / META_NAME, meta)
    return meta


def _refuse_changes(
    member_dir: Path, meta: dict, spec: dict, folds_hash: str, size: list[int], unshaping: Sequence[str]
) -> None:
    changes = []
    before, now_ = _without(meta["spec"], unshaping), _without(spec, unshaping)
    if before != now_:
        keys = sorted(k for k in set(before) | set(now_) if before.get(k) != now_.get(k))
        changes.append(f"spec (keys {', '.join(map(str, keys))})")
    if meta["folds_hash"] != folds_hash:
        changes.append("folds_hash (folds.csv changed)")
    if meta["resolution"] != size:
        changes.append(f"resolution ({meta['resolution']} -> {size})")
    if changes:
        raise WorkbenchError(
            f"{member_dir}: member {member_dir.name} was written with a different {'; '.join(changes)}; its maps "
            f"would not match: {redo_hint(member_dir)} (or give the new spec a new member name)"
        )


def _without(spec: dict, paths: Sequence[str]) -> dict:
    """A copy of `spec` without the settings at the dotted `paths` (e.g. "train.num_workers"), where present."""
    spec = copy.deepcopy(spec)
    for path in paths:
        *parents, key = path.split(".")
        node: dict | None = spec
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(key, None)
    return spec


def record_sessions(member_dir: Path, generation: str, n_maps: dict[str, int]) -> None:
    """Note under the lock that a writer finished, with {`train/fold2` or `test`: maps written}."""
    stamp = now()
    _update(
        member_dir,
        generation,
        lambda meta: meta["sessions"].update(
            {session: {"n_maps": count, "finished": stamp} for session, count in n_maps.items()}
        ),
    )


def record_result(member_dir: Path, generation: str, result: dict) -> None:
    """Keep a finished writer's result (JSON-serialisable, e.g. a tuned entry's tuned-on score) in member.json."""
    _update(member_dir, generation, lambda meta: meta.update(result=result))


def replace_spec(member_dir: Path, generation: str, spec: dict) -> None:
    """Set the spec of a member being built (e.g. an import's provenance, complete only once its maps are read)."""
    _update(member_dir, generation, lambda meta: meta.update(spec=canonical_spec(spec)))


def _update(member_dir: Path, generation: str, change: Callable[[dict], object]) -> None:
    """Apply `change` to member.json under the member's lock, unless another process reset the member."""
    with locked(member_dir):
        meta = load_meta(member_dir)
        if meta is None or meta["generation"] != generation:
            raise WorkbenchError(stale_message(member_dir))
        change(meta)
        meta["updated"] = now()
        write_json_atomic(member_dir / META_NAME, meta)


def stale_message(member_dir: Path) -> str:
    return (
        f"{member_dir}: member {member_dir.name} was reset by another process while this one was writing it; "
        "its maps from before the reset are gone: re-run this `workbench fold-train` job"
    )
