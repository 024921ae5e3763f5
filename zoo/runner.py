"""Running one member x fold end to end (train, predict its held-out cars into the store) and one
member's test predictions (its fold models averaged, streamed image batch by batch).

Both are idempotent and resumable: a finished member x fold leaves `done.json` and is skipped; an
interrupted one resumes from its last epoch; test maps already in the store are not predicted again.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from carvana.atomic import read_marker, write_json_atomic
from carvana.dataset import CarvanaData, angle_of
from carvana.errors import WorkbenchError
from carvana.resize import resize_image, resize_proba
from folds import Folds
from oof import MemberWriter, Store
from oof.format import CACHE_DIR, TRAINED_DIR
from zoo.board import board_dir
from zoo.cache import cached_pseudo, cached_split
from zoo.families import Member, load_member, train_member_fold
from zoo.faults import die_for_tests
from zoo.fold_data import FoldData, PseudoData, split_fold
from zoo.pipeline import StageTimes, run_in_line, run_pipeline
from zoo.pseudo import PseudoSet
from zoo.spec import UNSHAPING, MemberSpec

PREDICT_CHUNK = 16  # images predicted and written at a time: bounded memory at any test size


def member_dir(run_dir: Path, spec: MemberSpec) -> Path:
    return run_dir / TRAINED_DIR / spec.name


def claim_member(run_dir: Path, spec: MemberSpec, folds_hash: str, retrain: bool = False) -> Path:
    """The member's folder. `retrain` discards everything in it; otherwise results made under another
    spec or other folds (checkpoints too, which a resumed run would continue) are refused."""
    folder = member_dir(run_dir, spec)
    spec_path = folder / "spec.json"
    if retrain and folder.exists():
        shutil.rmtree(folder)
    if spec_path.exists():
        recorded = json.loads(spec_path.read_text())
        if (recorded.get("hash"), recorded.get("folds_hash")) != (spec.hash, folds_hash):
            what = "another spec" if recorded.get("hash") != spec.hash else "other folds (folds.csv changed)"
            raise WorkbenchError(
                f"{spec_path}: member {spec.name} was trained with {what}; rename it in the config, "
                f"or re-run with `--retrain {spec.name}` to discard its results"
            )
    else:
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(spec_path, {"hash": spec.hash, "folds_hash": folds_hash, "spec": spec.to_dict()})
    return folder


def fold_done(run_dir: Path, spec: MemberSpec, fold: int) -> bool:
    return read_marker(member_dir(run_dir, spec) / f"fold{fold}" / "done.json") is not None  # damaged: redo


def run_member_fold(
    spec: MemberSpec,
    fold: int,
    data: CarvanaData,
    folds: Folds,
    run_dir: Path,
    store: Store,
    resolution: tuple[int, int],
    progress: bool = True,
    cache_dir: Path | None = None,
    provenance: dict | None = None,
    pseudo: PseudoSet | None = None,
) -> None:
    """Train `spec` without fold `fold`'s cars, then write their OOF maps to `store` at `resolution`.

    `cache_dir` (default RUN/cache) holds the decoded photos; `provenance` (host, engine, task id...)
    is recorded in the fold's `done.json`; `pseudo` is fold `fold`'s pseudo-label set when the member
    trains on one (made by models that never saw this fold's cars: `zoo.pseudo`)."""
    work_dir = member_dir(run_dir, spec) / f"fold{fold}"
    work_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    cache = cache_dir or run_dir / CACHE_DIR
    ids, images, masks = cached_split(data, "train", spec.height, spec.width, cache)
    train_idx, val_idx, oof_idx = split_fold(ids, folds, fold, spec.train.seed)
    assert masks is not None  # the train split has masks
    fold_data = FoldData(fold, ids, images, masks, train_idx, val_idx, oof_idx, pseudo_data(pseudo, spec, data, cache))
    checkpoint = train_member_fold(spec, fold_data, work_dir, progress, board_dir(run_dir, spec.name, fold))
    member = load_member(spec, [checkpoint])
    oof_ids = [ids[i] for i in oof_idx]
    position = {ids[i]: i for i in oof_idx}
    with store.open_member(spec.name, spec.to_dict(), folds.hash, resolution, unshaping=UNSHAPING) as writer:
        predict_maps(
            writer,
            member,
            oof_ids,
            lambda img: np.asarray(images[position[img]]),  # the cached photos: "decoding" is a read
            "train",
            resolution,
            fold,
            desc=f"{spec.name} fold {fold}: OOF maps",
            progress=progress,
        )
    write_json_atomic(
        work_dir / "done.json",
        {
            "checkpoint": checkpoint.name,
            "n_oof": len(oof_ids),
            "seconds": round(time.time() - start, 1),
            "spec_hash": spec.hash,
            "finished": time.time(),
            **(provenance or {}),
        },
    )


def pseudo_data(pseudo: PseudoSet | None, spec: MemberSpec, data: CarvanaData, cache: Path) -> PseudoData | None:
    """The fold's pseudo-labelled photos and labels at the member's size, with the set's loss settings."""
    if pseudo is None or not pseudo.ids:  # no photo passed the set's confidence rule: the member trains without
        return None
    images, levels = cached_pseudo(pseudo, data, spec.height, spec.width, cache)
    cfg = pseudo.cfg
    return PseudoData(
        images, levels, cfg.labels, cfg.uncertain if cfg.ignore_uncertain else None, spec.train.pseudo_share
    )


def predict_member_test(
    spec: MemberSpec,
    folds: Folds,
    data: CarvanaData,
    run_dir: Path,
    store: Store,
    resolution: tuple[int, int],
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
) -> bool:
    """Average the member's fold models over shard `s` of `n` (`shard`: a contiguous range of the sorted
    test ids), chunk by chunk; the shard's marker says it is complete. A shard whose marker is not
    current (killed, or made by other fold models) is predicted again whole. False when it was current."""
    index, n_shards = shard
    done = fold_records(run_dir, spec, folds.n_folds)
    marker = shard_marker(run_dir, spec, index, n_shards)
    if read_marker(marker) == {"folds": done}:
        return False
    todo = shard_ids(sorted(data.test_ids), index, n_shards)
    folder = member_dir(run_dir, spec)
    member = load_member(spec, [folder / f"fold{k}" / d["checkpoint"] for k, d in enumerate(done)])

    # Test photos are decoded on the fly, not cached: each is read once per member (100,064 photos
    # at full size would need ~740 GB of cache).
    def load(img: str) -> np.ndarray:
        return resize_image(data.load_image(img, "test"), spec.height, spec.width)

    session = "test" if n_shards == 1 else f"test/shard{index}-of-{n_shards}"
    desc = f"{spec.name}: test maps{'' if n_shards == 1 else f' shard {index + 1}/{n_shards}'}"
    opened = store.open_member(spec.name, spec.to_dict(), folds.hash, resolution, session=session, unshaping=UNSHAPING)
    with opened as writer:
        predict_maps(
            writer,
            member,
            todo,
            load,
            "test",
            resolution,
            None,
            desc=f"{desc} ({folds.n_folds} folds averaged)",
            progress=progress,
            after_chunk=lambda _: die_for_tests("IN_TEST_SHARD", index),
        )
    marker.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, {"folds": done})
    return True


def finish_member_test(run_dir: Path, spec: MemberSpec, n_folds: int, n_shards: int) -> bool:
    """Write `test.json` (the member is finished) when every one of the `n_shards` shards is current."""
    made_by = {"folds": fold_records(run_dir, spec, n_folds)}
    markers = [shard_marker(run_dir, spec, s, n_shards) for s in range(n_shards)]
    if not all(read_marker(m) == made_by for m in markers):
        return False
    write_json_atomic(member_dir(run_dir, spec) / "test.json", made_by)
    return True


def fold_records(run_dir: Path, spec: MemberSpec, n_folds: int) -> list[dict]:
    """Every fold's done.json, in fold order (all must exist)."""
    folder = member_dir(run_dir, spec)
    return [json.loads((folder / f"fold{k}" / "done.json").read_text()) for k in range(n_folds)]


def shard_marker(run_dir: Path, spec: MemberSpec, index: int, n_shards: int) -> Path:
    return member_dir(run_dir, spec) / "test_shards" / f"{index}-of-{n_shards}.json"


def shard_ids(ids: list[str], index: int, n_shards: int) -> list[str]:
    """The `index`-th of `n_shards` contiguous, near-equal ranges of `ids`."""
    if not 0 <= index < n_shards:
        raise ValueError(f"shard {index} of {n_shards}: need 0 <= shard < n_shards")
    return ids[len(ids) * index // n_shards : len(ids) * (index + 1) // n_shards]


def member_finished(run_dir: Path, spec: MemberSpec, n_folds: int) -> bool:
    """Every fold trained and the test maps made by exactly those fold models."""
    folder = member_dir(run_dir, spec)
    if not all(fold_done(run_dir, spec, k) for k in range(n_folds)):
        return False
    return read_marker(folder / "test.json") == {"folds": fold_records(run_dir, spec, n_folds)}


def predict_maps(
    writer: MemberWriter,
    member: Member,
    ids: list[str],
    load: Callable[[str], np.ndarray],
    split: str,
    resolution: tuple[int, int],
    fold: int | None,
    desc: str,
    progress: bool = True,
    after_chunk: Callable[[int], None] | None = None,
) -> StageTimes:
    """Maps of `ids` into `writer` at `resolution`: photos by `load` (id -> (h, w, 3) uint8 at the member's
    size), predicted `PREDICT_CHUNK` at a time, resized and written; decode, predict and write overlapped
    (`zoo.pipeline`), or one after another with WORKBENCH_PREDICT_IN_LINE=1 (the same maps, byte for byte)."""

    def predict(photos: np.ndarray, names: list[str]) -> np.ndarray:
        return member.predict_proba(photos, angles=np.array([angle_of(img) for img in names]))

    def write(img: str, proba: np.ndarray) -> dict[str, int]:
        # A writer per map: MemberWriter counts are plain dict updates, so the pool's threads count apart
        # and this thread adds them up (`on_written`).
        own = MemberWriter(writer.store, writer.member, writer.meta, writer.test_session)
        own.write(split, img, resize_proba(proba, *resolution), fold=fold)
        return own.n_written

    def count(n_written: dict[str, int]) -> None:
        for session, n in n_written.items():
            writer.n_written[session] = writer.n_written.get(session, 0) + n

    run = run_in_line if os.environ.get("WORKBENCH_PREDICT_IN_LINE") == "1" else run_pipeline
    return run(
        ids,
        load,
        predict,
        write,
        chunk=PREDICT_CHUNK,
        after_chunk=after_chunk,
        on_written=count,
        desc=desc,
        progress=progress,
    )
