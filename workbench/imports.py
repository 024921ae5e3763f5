"""Members from anywhere: a teammate's maps imported from folders (`workbench import-member`), or your own
training loop writing its maps through `open_member`, checked exactly as the zoo's members are.

Both build the member beside the store (`oof.rebuild`) and swap it in only when every check has passed:
every train photo has exactly one OOF map, made by the fold that held its car out of training in the
run's folds; every test photo has a map; no foreign id; no NaN, infinity or value out of range; the
photos' aspect. A refusal leaves the run's store as it was, and importing a name again replaces the
member whole. `member.json` records where the maps came from (`spec.imported`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from carvana.atomic import write_atomic
from carvana.errors import WorkbenchError
from carvana.progress import progress_bar
from oof import MemberWriter, Store, rebuild, recover
from oof.exchange import read_foreign_map, to_levels
from oof.format import MAP_SUFFIX, canonical_id, encode_map, fold_dir_name
from oof.member import replace_spec
from workbench.config import ExperimentConfig
from workbench.import_checks import test_files, train_files
from workbench.run import Run
from workbench.runlock import run_lock

__all__ = ["IMPORTED", "MemberMaps", "import_member", "imported_members", "open_member"]

IMPORTED = "imported"  # the key of an imported member's spec (its provenance) in member.json
TASK_CHUNK = 16  # maps per worker task: large enough to amortise the hand-off, small enough to balance


def imported_members(store: Store) -> list[str]:
    """Members of the store that were imported (by `import-member` or `open_member`), sorted."""
    if not store.path.is_dir():
        return []
    return [m for m in store.members() if IMPORTED in store.metadata(m)["spec"]]


@dataclass(frozen=True)
class MapJob:
    """One foreign map file and where its levels go."""

    source: Path
    target: Path
    resolution: tuple[int, int]
    photo_hw: tuple[int, int]
    logits: bool


def import_member(
    config: ExperimentConfig,
    name: str,
    oof_dir: Path,
    test_dir: Path,
    folds_file: Path | None = None,
    logits: bool = False,
    n_workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Import `name` from `oof_dir` (`<img>.<ext>` or `fold<k>/<img>.<ext>`) and `test_dir` (`<img>.<ext>`);
    return its provenance. Every check on names and folds runs before any map is decoded, and every map
    is decoded and checked before the member replaces anything (see the module docstring)."""
    run = Run.open(config)
    with run_lock(config.run_dir, "import-member"):
        _refuse_name(run, name)
        train_maps, fold_of, folds_note = train_files(run, Path(oof_dir), folds_file)
        test_maps = test_files(run, Path(test_dir))
        sources = {"oof": str(Path(oof_dir).resolve()), "test": str(Path(test_dir).resolve())}
        provenance = {
            "sources": sources,
            "folds": folds_note,
            "logits": logits,
            "n_files": len(train_maps) + len(test_maps),
            "files_sha256": _files_hash([*train_maps.values(), *test_maps.values()]),
            "imported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        print(f"{name}: {len(train_maps)} OOF and {len(test_maps)} test maps; {folds_note}")
        with _building(run, name, provenance) as writer:
            jobs = _jobs(writer, run, train_maps, fold_of, test_maps, logits)
            kinds, top = _convert(jobs, n_workers or config.compute.cpu_workers or os.cpu_count() or 1, progress, name)
            _record(writer, train_maps, fold_of, len(test_maps))
            provenance["format"] = _one_format(kinds, Path(oof_dir))
            _note_scale(name, kinds, top)
        return provenance


@contextlib.contextmanager
def _building(run: Run, name: str, provenance: dict) -> Iterator[MemberWriter]:
    """A writer of `name` beside the store; swapped in when the block ends cleanly and its maps are complete."""
    store = run.members_store
    existed = store.path.exists()
    if existed:
        recover(store)
    try:
        with rebuild(store, name) as beside:
            writer = beside.open_member(name, {IMPORTED: provenance}, run.folds.hash, run.resolution, reset=True)
            yield writer
            writer.close()
            beside.check_coverage(name, run.folds.fold_of, run.folds.hash)
            beside.check_test(name, run.data.test_ids)
            replace_spec(beside.path / name, writer.meta["generation"], {IMPORTED: provenance})  # with what was learnt
    except BaseException:
        if not existed:  # leave no trace in a run that had no store
            with contextlib.suppress(OSError):
                store.path.rmdir()
        raise


def _refuse_name(run: Run, name: str) -> None:
    store = run.members_store
    if name in {spec.name for spec in run.config.zoo}:
        raise WorkbenchError(
            f"member {name!r} is in the config's zoo (trained by `workbench fold-train`); import under another name"
        )
    if store.path.is_dir() and name in store.members() and name not in imported_members(store):
        raise WorkbenchError(
            f"{store.path / name}: member {name} was trained by `workbench fold-train`, not imported; "
            "import under another name"
        )


def _jobs(
    writer: MemberWriter,
    run: Run,
    train_files: dict[str, Path],
    fold_of: dict[str, int],
    test_files: dict[str, Path],
    logits: bool,
) -> list[MapJob]:
    """One job per map, its target the store's path for it (`train/fold<k>/<img>` or `test/<img>`)."""
    member_dir = writer.store.path / writer.member
    folders = {img: member_dir / "train" / fold_dir_name(fold_of[img]) for img in train_files}
    folders.update({img: member_dir / "test" for img in test_files})
    for folder in set(folders.values()):
        folder.mkdir(parents=True, exist_ok=True)
    sources = {**train_files, **test_files}
    return [
        MapJob(sources[img], folder / f"{img}{MAP_SUFFIX}", run.resolution, run.native_hw, logits)
        for img, folder in folders.items()
    ]


def convert_maps(jobs: list[MapJob]) -> list[tuple[str, int]]:
    """Decode, check, resize and store each job's map; [(format, highest level)] (a worker's task)."""
    done = []
    for job in jobs:
        array, kind = read_foreign_map(job.source)
        levels = to_levels(array, job.source, job.resolution, job.photo_hw, job.logits)
        write_atomic(job.target, encode_map(levels))
        done.append((kind, int(levels.max(initial=0))))
    return done


def _convert(jobs: list[MapJob], n_workers: int, progress: bool, name: str) -> tuple[set[str], int]:
    """Run `convert_maps` over the jobs in chunks on `n_workers` processes; (formats seen, highest level)."""
    chunks = [jobs[i : i + TASK_CHUNK] for i in range(0, len(jobs), TASK_CHUNK)]
    bar = progress_bar(total=len(jobs), desc=f"importing {name}", disable=not progress, unit="map")
    kinds: set[str] = set()
    top = 0
    with contextlib.ExitStack() as stack:
        if n_workers > 1 and len(chunks) > 1:
            pool = stack.enter_context(ProcessPoolExecutor(min(n_workers, len(chunks))))
            stack.callback(pool.shutdown, cancel_futures=True)  # a refusal stops the other chunks at once
            results = pool.map(convert_maps, chunks)
        else:
            results = map(convert_maps, chunks)
        for done in results:
            for kind, level in done:
                kinds.add(kind)
                top = max(top, level)
            bar.update(len(done))
    bar.close()
    return kinds, top


def _record(writer: MemberWriter, train_files: dict[str, Path], fold_of: dict[str, int], n_test: int) -> None:
    """The counts the workers wrote, in member.json (as a MemberWriter records its own writes)."""
    for img in train_files:
        session = f"train/{fold_dir_name(fold_of[img])}"
        writer.n_written[session] = writer.n_written.get(session, 0) + 1
    writer.n_written["test"] = n_test


def _one_format(kinds: set[str], folder: Path) -> str:
    scales = {"png16": 65535, "npy-uint16": 65535, "png8": 255, "npy-uint8": 255}
    if len({scales.get(k, k) for k in kinds}) > 1:
        raise WorkbenchError(
            f"{folder}: the maps come in several forms ({', '.join(sorted(kinds))}), which scale probabilities "
            "differently; export every map of a member in one form"
        )
    return ", ".join(sorted(kinds))


def _note_scale(name: str, kinds: set[str], top: int) -> None:
    if kinds <= {"png8", "npy-uint8"} and 0 < top < 255:
        print(
            f"note: no pixel of {name} reaches 255 (highest {top}); if its maps are probability x {top} rather "
            "than x 255, rescale them and import again"
        )


def _files_hash(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(f"{path.name}\t{path.stat().st_size}\n".encode())
    return digest.hexdigest()


class MemberMaps:
    """Your own training loop's maps, written into a run as a member (see `open_member`).

    `write_oof(img, proba, fold)` takes the map of train photo `img` predicted by the model of `fold`
    (which must be the fold holding its car out in the run's folds); `write_test(img, proba)` the
    fold-averaged map of a test photo. `proba` is anything `import-member` accepts as an array: floats in
    [0, 1] (or logits with `logits=True`), uint8 x 255, uint16 x 65535, at any size of the photos' aspect.
    """

    def __init__(self, run: Run, writer: MemberWriter, logits: bool) -> None:
        self.run, self._writer, self.logits = run, writer, logits
        self.fold_of: dict[str, int] = dict(run.folds.fold_of)
        self.n_folds: int = run.folds.n_folds
        self.test_ids: list[str] = list(run.data.test_ids)

    def fold_ids(self, fold: int) -> list[str]:
        """The train photos that fold `fold`'s model must predict (its held-out cars)."""
        return self.run.folds.ids(fold)

    def train_ids(self, fold: int) -> list[str]:
        """The train photos fold `fold`'s model may train on (every other fold)."""
        return self.run.folds.ids(fold, held_out=False)

    def write_oof(self, img: str, proba: np.ndarray, fold: int) -> None:
        img = canonical_id(img)
        if img not in self.fold_of:
            raise WorkbenchError(
                f"{img} is not a train photo of {self.run.config.data}; write OOF maps of train photos"
            )
        if fold != self.fold_of[img]:
            raise WorkbenchError(
                f"OOF map of {img} from fold {fold}, whose model trained on its car (a leak); the run's folds "
                f"hold it out in fold {self.fold_of[img]}: predict it with that fold's model"
            )
        self._writer.write("train", img, self._levels(img, proba), fold=fold)

    def write_test(self, img: str, proba: np.ndarray) -> None:
        img = canonical_id(img)
        if img not in set(self.test_ids):
            raise WorkbenchError(f"{img} is not a test photo of {self.run.config.data}; write test maps of test photos")
        self._writer.write("test", img, self._levels(img, proba))

    def _levels(self, img: str, proba: np.ndarray) -> np.ndarray:
        where = Path(f"{self._writer.member}: map of {img}")
        return to_levels(np.asarray(proba), where, self.run.resolution, self.run.native_hw, self.logits)


@contextlib.contextmanager
def open_member(config: ExperimentConfig, name: str, *, logits: bool = False, source: str = "") -> Iterator[MemberMaps]:
    """`with open_member(config, "my_net") as member:` write every OOF and test map of a member of your own;
    when the block ends it is checked as `import-member` checks a folder and swapped into the run (an
    error, or a map missing, leaves the run's store as it was). `source` is recorded as its provenance."""
    run = Run.open(config)
    with run_lock(config.run_dir, "import-member"):
        _refuse_name(run, name)
        provenance = {
            "sources": {"python": source or "open_member"},
            "folds": "written through open_member, each OOF map checked against the run's folds",
            "logits": logits,
            "imported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        with _building(run, name, provenance) as writer:
            yield MemberMaps(run, writer, logits)
