"""The checked store of out-of-fold (OOF) and test probability maps, one folder per ensemble member.

Layout of `Store(run_dir / "oof")`:

    <member>/member.json                   spec, folds_hash, resolution (H, W), times, format version
    <member>/train/fold<k>/<img>.npy.zst   OOF map of train image <img>, predicted by fold k's model
    <member>/test/<img>.npy.zst            test map: the caller's average of the fold models

Every map is (H, W) uint8 probability x 255 at the store's one resolution. The fold that produced an
OOF map is part of its path, so it lands atomically with the map and a fold job never touches
another fold's files: member x fold jobs can write one member at the same time.

About 300 lines: the store and its writer keep every rule about a member's folder (identity, generation,
resolution, paths, atomic writes) in one class each; `oof.member` holds the member.json side.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from carvana.errors import WorkbenchError
from oof import checks
from oof.format import (
    FOLD_DIR_PATTERN,
    MAP_SUFFIX,
    canonical_id,
    check_member_name,
    check_split,
    encode_map,
    fold_dir_name,
    read_map,
    redo_hint,
    retrain_hint,
    to_uint8,
    write_atomic,
)
from oof.member import META_NAME, load_meta, open_meta, record_result, record_sessions, stale_message

# One thread by default: from a warm page cache on 2 cores, 2-4 threads were never faster than 1 and up to
# 3x slower (bench_store), a map decoding in under a millisecond. They may pay off on a slow network disk.
READ_THREADS = 1


class Store:
    """Probability maps of every member, for the train split (OOF) and the test split."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._shapes: dict[str, tuple[int, int]] = {}

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    # ---- reading ---------------------------------------------------------------------------------
    def members(self) -> list[str]:
        """Sorted names of the members that have metadata."""
        self._require_store()
        return sorted(d.name for d in self.path.iterdir() if (d / META_NAME).is_file())

    def metadata(self, member: str) -> dict:
        """The member's member.json: spec, folds_hash, resolution [H, W], created, updated, sessions."""
        meta = load_meta(self._member_dir(member))
        if meta is None:
            raise WorkbenchError(self._no_member_message(member))
        return meta

    def resolution(self, member: str) -> tuple[int, int]:
        """(H, W) of the member's maps."""
        if member not in self._shapes:
            self._shapes[member] = tuple(self.metadata(member)["resolution"])
        return self._shapes[member]

    def ids(self, member: str, split: str) -> list[str]:
        """Sorted image ids (`<car>_<NN>`, no extension) that have a map in `split`."""
        if check_split(split) == "train":
            return sorted(self.train_folds(member))
        self.resolution(member)  # refuses a missing store or member
        return sorted(_map_stems(self.path / member / "test"))

    def train_folds(self, member: str) -> dict[str, list[int]]:
        """{train image id: sorted folds whose model wrote an OOF map of it}; an honest store has one each."""
        self.resolution(member)
        train_dir = self.path / member / "train"
        index: dict[str, list[int]] = {}
        for fold, fold_dir in sorted(_fold_dirs(train_dir).items()):
            for img in _map_stems(fold_dir):
                index.setdefault(img, []).append(fold)
        return index

    def has(self, member: str, split: str, img: str) -> bool:
        """True if `img` has at least one map in `split`."""
        return bool(self._candidates(member, check_split(split), canonical_id(img)))

    def read(self, member: str, split: str, img: str) -> np.ndarray:
        """(H, W) uint8 probability x 255 of `img` (id with or without `.jpg`)."""
        return read_map(self._locate(member, check_split(split), canonical_id(img)), self.resolution(member)).copy()

    def read_many(self, member: str, split: str, imgs: Iterable[str], n_threads: int = READ_THREADS) -> np.ndarray:
        """(N, H, W) uint8 maps of `imgs` in the given order; `n_threads` > 1 reads that many files at a time."""
        imgs = [canonical_id(img) for img in imgs]
        height, width = self.resolution(member)
        paths = self._paths(member, check_split(split), imgs)
        out = np.empty((len(imgs), height, width), dtype=np.uint8)

        def fill(i: int) -> None:
            out[i] = read_map(paths[i], (height, width))

        if n_threads <= 1 or len(imgs) <= 1:
            for i in range(len(imgs)):
                fill(i)
        else:
            with ThreadPoolExecutor(n_threads) as pool:
                list(pool.map(fill, range(len(imgs))))
        return out

    # ---- writing ---------------------------------------------------------------------------------
    def open_member(
        self,
        member: str,
        spec: dict,
        folds_hash: str,
        resolution: tuple[int, int],
        reset: bool = False,
        session: str = "test",
        unshaping: Sequence[str] = (),
    ) -> MemberWriter:
        """Create or reopen `member` and return a writer for it.

        `spec` (JSON-serialisable dict), `folds_hash` (sha256 hex of folds.csv) and `resolution` (H, W)
        must equal what the member was created with, else WorkbenchError; `reset=True` deletes the
        member's maps and starts it afresh. Every member of a store has the same resolution. `session`
        names the writer's test maps in member.json's counts (one per test shard, so none overwrites another's).
        `unshaping`: dotted paths of spec settings that do not change the maps (e.g. "train.num_workers"), not
        compared, so a member resumes under other loading settings.
        """
        member_dir = self.path / check_member_name(member)
        self._refuse_other_resolution(member, resolution)
        meta = open_meta(member_dir, spec, folds_hash, resolution, reset, unshaping)
        self._shapes[member] = tuple(meta["resolution"])
        return MemberWriter(self, member, meta, session)

    def write(self, member: str, split: str, img: str, proba: np.ndarray, fold: int | None = None) -> Path:
        """Store `proba` ((H, W) uint8, or float in [0, 1] rounded x 255) as the map of `img`; return its path.

        Train maps need the `fold` whose model (trained without this car) predicted them; test maps take
        none. Atomic: a reader sees the old map or the new one.
        """
        img = canonical_id(img)
        path = self._map_path(member, check_split(split), img, fold)
        proba = to_uint8(proba, f"{self.path / member}: {split} map of {img}")
        if proba.shape != self.resolution(member):
            raise WorkbenchError(
                f"{self.path / member}: {split} map of {img} is {proba.shape}, the member's maps are "
                f"{self.resolution(member)}: resize predictions to the store's resolution before writing"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, encode_map(proba))
        return path

    # ---- checking --------------------------------------------------------------------------------
    def check_coverage(self, member: str, fold_of: Mapping[str, int], folds_hash: str) -> None:
        """Refuse (WorkbenchError) unless the OOF maps are exactly honest for these folds.

        Every image of `fold_of` ({img: fold holding its car out}) has exactly one OOF map, written by
        fold `fold_of[img]`; there is no other train map; the member was built on `folds_hash`.
        """
        checks.check_coverage(self, member, fold_of, folds_hash)

    def check_test(self, member: str, test_ids: Iterable[str]) -> None:
        """Refuse (WorkbenchError) unless the member has a test map for exactly `test_ids`."""
        checks.check_test(self, member, test_ids)

    # ---- internals -------------------------------------------------------------------------------
    def _require_store(self) -> None:
        if not self.path.is_dir():
            raise WorkbenchError(
                f"{self.path}: no OOF store here; run `workbench fold-train` first (or check --run-dir)"
            )

    def _member_dir(self, member: str) -> Path:
        self._require_store()
        return self.path / check_member_name(member)

    def _no_member_message(self, member: str) -> str:
        return (
            f"{self.path}: no member {member!r} in this OOF store (members: {', '.join(self.members()) or 'none'}); "
            f"run `workbench fold-train` for it"
        )

    def _refuse_other_resolution(self, member: str, resolution: tuple[int, int]) -> None:
        if not self.path.is_dir():
            return
        size = tuple(int(v) for v in resolution)
        for other in self.members():
            if other != member and self.resolution(other) != size:
                raise WorkbenchError(
                    f"{self.path}: member {other} holds maps at {self.resolution(other)}, not {size}; every member "
                    "of a store shares one resolution: resize predictions to it (or use another run dir)"
                )

    def _map_path(self, member: str, split: str, img: str, fold: int | None) -> Path:
        member_dir = self.path / check_member_name(member)
        if split == "test":
            if fold is not None:
                raise ValueError(f"test maps are the average of the fold models: pass fold=None, not {fold!r}")
            return member_dir / "test" / f"{img}{MAP_SUFFIX}"
        if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or fold < 0:
            raise ValueError(f"an OOF (train) map needs the fold (int >= 0) whose model predicted it, got {fold!r}")
        return member_dir / "train" / fold_dir_name(int(fold)) / f"{img}{MAP_SUFFIX}"

    def _candidates(self, member: str, split: str, img: str) -> list[Path]:
        self.resolution(member)
        if split == "test":
            path = self.path / member / "test" / f"{img}{MAP_SUFFIX}"
            return [path] if path.is_file() else []
        fold_dirs = _fold_dirs(self.path / member / "train")
        return [p for _, d in sorted(fold_dirs.items()) if (p := d / f"{img}{MAP_SUFFIX}").is_file()]

    def _locate(self, member: str, split: str, img: str) -> Path:
        found = self._candidates(member, split, img)
        if len(found) == 1:
            return found[0]
        if not found:
            fix = retrain_hint(member) if split == "train" else "re-run `workbench fold-train` (it predicts them)"
            raise WorkbenchError(f"{self.path / member}: no {split} map of {img}; {fix}")
        raise WorkbenchError(duplicate_message(self.path / member, img, found))

    def _paths(self, member: str, split: str, imgs: list[str]) -> list[Path]:
        if split == "test":
            return [self._locate(member, split, img) for img in imgs]
        # One listing of the fold folders instead of a stat per image and fold.
        index = self.train_folds(member)
        train_dir = self.path / member / "train"
        paths = []
        for img in imgs:
            folds = index.get(img, [])
            found = [train_dir / fold_dir_name(k) / f"{img}{MAP_SUFFIX}" for k in folds]
            paths.append(found[0] if len(found) == 1 else self._locate(member, split, img))
        return paths


class MemberWriter:
    """Writes one member's maps after `Store.open_member` has checked its identity.

    Use as a context manager: on a clean exit it records in member.json how many maps it wrote per
    `train/fold<k>` and `test`. Each write first checks that no other process reset the member since.
    """

    def __init__(self, store: Store, member: str, meta: dict, test_session: str = "test") -> None:
        self.store, self.member, self.meta, self.test_session = store, member, meta, test_session
        self.resolution: tuple[int, int] = tuple(meta["resolution"])
        self.n_written: dict[str, int] = {}

    def write(self, split: str, img: str, proba: np.ndarray, fold: int | None = None) -> Path:
        """Store.write for this member (see there)."""
        member_dir = self.store.path / self.member
        current = load_meta(member_dir)
        if current is None or current["generation"] != self.meta["generation"]:
            raise WorkbenchError(stale_message(member_dir))
        path = self.store.write(self.member, split, img, proba, fold)
        if split == "test":
            session = self.test_session
        else:
            session = split if fold is None else f"train/{fold_dir_name(int(fold))}"
        self.n_written[session] = self.n_written.get(session, 0) + 1
        return path

    def record(self, result: dict) -> None:
        """Keep `result` (JSON-serialisable) in member.json as the member's "result" (`Store.metadata`)."""
        record_result(self.store.path / self.member, self.meta["generation"], result)

    def close(self) -> None:
        """Record this writer's counts in member.json (under the member's lock)."""
        if self.n_written:
            record_sessions(self.store.path / self.member, self.meta["generation"], self.n_written)
            self.n_written = {}

    def __enter__(self) -> MemberWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


def duplicate_message(member_dir: Path, img: str, paths: list[Path]) -> str:
    folds = ", ".join(p.parent.name for p in paths)
    return (
        f"{member_dir}: train image {img} has OOF maps from several folds ({folds}); only the fold that held its "
        f"car out may predict it: {redo_hint(member_dir)}"
    )


def _fold_dirs(train_dir: Path) -> dict[int, Path]:
    """{k: train_dir/fold<k>} for the fold folders that exist."""
    try:
        entries = list(os.scandir(train_dir))
    except FileNotFoundError:
        return {}
    found = {}
    for entry in entries:
        match = FOLD_DIR_PATTERN.match(entry.name)
        if match and entry.is_dir():
            found[int(match.group(1))] = Path(entry.path)
    return found


def _map_stems(folder: Path) -> list[str]:
    """Image ids of the maps in `folder` (temp files start with `.` and are skipped)."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return [n[: -len(MAP_SUFFIX)] for n in names if n.endswith(MAP_SUFFIX) and not n.startswith(".")]
