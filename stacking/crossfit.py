"""The one cross-fit loop: every entry is fitted on folds != k and predicts fold k, then refitted on
every fold for the test maps. Nothing else in the workbench fits an entry for honest OOF maps.

An entry is any scikit-learn-style estimator over the stacking input type (`stacking.maps`):
`fit(TrainMaps) -> self` and `predict_proba(MapBatch) -> (n, H, W) float32`.

`fit_predict_all` runs the loop for several entries in one pass over the maps: each entry's fits first (kept,
k + 1 per entry), then one read of every train chunk and of every test photo's member maps for all entries
together (each given its members' columns), so a stack of E entries reads the test maps once, not E times.
`fit_predict` is the same for one entry. The test maps (100,064 photos at Kaggle's size: the slow part) can
be predicted by `n_jobs` joblib workers, chunk by chunk, under whatever joblib backend the caller has set
(loky processes, or Ray's backend: `workbench.compute.parallel_backend`); the caller alone writes them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar, cast

import numpy as np

from carvana.progress import progress_bar
from stacking.levels import predict_levels
from stacking.maps import MapBatch, TestMaps, TrainMaps, read_batch

EntryT = TypeVar("EntryT", bound="Entry")


class Entry(Protocol):
    """A blend or stacker: a scikit-learn estimator over member maps."""

    def fit(self: EntryT, X: TrainMaps) -> EntryT: ...

    def predict_proba(self, X: MapBatch) -> np.ndarray: ...

    def get_params(self, deep: bool = True) -> dict[str, Any]: ...


class MapWriter(Protocol):
    """Where an entry's maps go (an `oof` member writer): the pass hands it (H, W) uint8 levels, the store's format
    (`stacking.levels.predict_levels`)."""

    def write(self, split: str, img: str, proba: np.ndarray, fold: int | None = None) -> Any: ...


@dataclass
class TestClock:
    """Seconds spent writing test maps, summed over every entry of a stack (`workbench stack` prints them as
    `test maps: <seconds> s`, comparable with the time of a plain mean over the same maps)."""

    seconds: float = 0.0


def write_each_map(
    store: Any, entry: str, writer: MapWriter, make_map: Callable[[str, str], np.ndarray], clock: TestClock | None
) -> None:
    """Write make_map(split, img) for every OOF map of `entry` in `store` (to the fold that wrote it), then for
    every test map, timing the test maps on `clock`: the loop of entries made map by map from stored maps."""
    for img, (fold, *_) in store.train_folds(entry).items():
        writer.write("train", img, make_map("train", img), fold=fold)
    start = time.perf_counter()
    for img in store.ids(entry, "test"):
        writer.write("test", img, make_map("test", img))
    if clock is not None:
        clock.seconds += time.perf_counter() - start


def cross_fit(make: Callable[[], EntryT], train: TrainMaps) -> Iterator[tuple[int | None, EntryT]]:
    """(k, a new entry fitted on every fold but k) for each fold k of the run, then (None, one fitted on all)."""
    for k in (*train.all_folds, None):
        yield k, make().fit(fitting_folds(train, k))


def fitting_folds(train: TrainMaps, k: int | None) -> TrainMaps:
    """The maps the fit that leaves fold k out is fitted on: every fold but k (k None: every fold)."""
    return train if k is None else train.folds([j for j in train.all_folds if j != k])


@dataclass(frozen=True)
class CrossFitEntry:
    """One entry of a pass: `make()` -> a new estimator, `train` the maps its fits read (its own members), `writer`
    where its maps go, and `columns` its members' positions among the maps the pass reads (None: all, in order)."""

    name: str
    make: Callable[[], Entry]
    train: TrainMaps
    writer: MapWriter
    columns: tuple[int, ...] | None = None


def fit_predict(
    make: Callable[[], EntryT],
    train: TrainMaps,
    test: TestMaps | None,
    writer: MapWriter,
    *,
    progress: bool = False,
    desc: str = "entry",
    n_jobs: int = 1,
    clock: TestClock | None = None,
) -> EntryT:
    """Write the entry's honest OOF map of every train image (fold k's from the fit without fold k) and,
    when `test` is given, its test maps from the fit on every fold (predicted by `n_jobs` joblib workers);
    return that last fit. Prints the seconds spent on the train images (fits and OOF maps) and on the test
    maps (bench.scale reads the line), and adds the latter to `clock`. `fit_predict_all` with one entry."""
    entry = CrossFitEntry(desc, make, train, writer)
    model = fit_predict_all([entry], train, test, progress=progress, n_jobs=n_jobs, clock=clock)[0]
    return cast(EntryT, model)  # made by `make`


def fit_predict_all(
    entries: Sequence[CrossFitEntry],
    train: TrainMaps,
    test: TestMaps | None,
    *,
    progress: bool = False,
    n_jobs: int = 1,
    fit_jobs: int = 1,
    clock: TestClock | None = None,
) -> list[Entry]:
    """`fit_predict` for several entries in one pass over the maps: each entry's fits on every fold but k and on
    every fold (reading its own `train`), then ONE read of each train chunk of `train` (every entry's fit without
    the chunk's fold predicts it) and ONE read of each test photo's maps of `test` (every entry's fit on all folds
    predicts it; `n_jobs` joblib workers over the chunks, OOF and test alike). With `fit_jobs` != 1 the fits of every
    entry and fold run at once in that many joblib workers (each holds its fit's memory: a pixel stacker's
    sample). `train` and `test` read the union of the entries' members; each entry is given its `columns`. Maps
    equal fit_predict's entry by entry, byte for byte, whatever the workers. Returns the fits on every fold;
    prints each entry's seconds (its fits' and its share of the shared passes) and adds the test pass's to
    `clock`."""
    fits = _fit_all(entries, fit_jobs) if fit_jobs != 1 else [_fit_folds(entry, progress) for entry in entries]
    oof_seconds = _write_oof(entries, fits, train, n_jobs, progress)
    test_seconds, start = [0.0] * len(entries), time.perf_counter()
    if test is not None:
        test_seconds = _write_test(entries, [full for _, full, _ in fits], test, n_jobs, progress)
        if clock is not None:
            clock.seconds += time.perf_counter() - start
    for entry, (_, _, fit_seconds), oof, on_test in zip(entries, fits, oof_seconds, test_seconds):
        print(f"{entry.name}: cross-fit {fit_seconds + oof:.1f} s on train images, {on_test:.1f} s on test maps")
    return [full for _, full, _ in fits]


def _fit_folds(entry: CrossFitEntry, progress: bool) -> tuple[dict[int, Entry], Entry, float]:
    """({k: the entry fitted on every fold but k}, the entry fitted on every fold, the fits' seconds)."""
    n_fits, start = len(entry.train.all_folds) + 1, time.perf_counter()
    bar = progress_bar(total=n_fits, desc=f"{entry.name}: fits", unit="fit", leave=False, disable=not progress)
    with bar:  # closed on an error too, so that the CLI's one-line message starts its own line
        fits = {}
        for k, model in cross_fit(entry.make, entry.train):
            fits[k] = model
            bar.update(1)
    full = fits.pop(None)  # cross_fit ends with the fit on every fold
    return {k: m for k, m in fits.items() if k is not None}, full, time.perf_counter() - start


def _fit_all(entries: Sequence[CrossFitEntry], fit_jobs: int) -> list[tuple[dict[int, Entry], Entry, float]]:
    """`_fit_folds` of every entry, the fits of all entries and folds by `fit_jobs` joblib workers at once. The
    exact-Dice evaluator an entry fits on (`fits_on_evaluator`) is built here first, once per source, so that the
    workers receive it rather than each re-reading the maps."""
    import joblib

    for entry in entries:
        if getattr(entry.make(), "fits_on_evaluator", False):
            entry.train.evaluator()
    tasks = [(i, k) for i, entry in enumerate(entries) for k in (*entry.train.all_folds, None)]
    done = joblib.Parallel(n_jobs=fit_jobs)(
        joblib.delayed(_fit_one)(entries[i].make, entries[i].train, k) for i, k in tasks
    )
    fits: list[tuple[dict[int, Entry], Entry, float]] = [({}, cast(Entry, None), 0.0) for _ in entries]
    for (i, k), (model, seconds) in zip(tasks, done):
        by_fold, full, spent = fits[i]
        if k is None:
            full = model
        else:
            by_fold[k] = model
        fits[i] = (by_fold, full, spent + seconds)
    return fits


def _fit_one(make: Callable[[], Entry], train: TrainMaps, k: int | None) -> tuple[Entry, float]:
    """(a new entry fitted on every fold but k, its seconds): one task of `_fit_all`."""
    start = time.perf_counter()
    return make().fit(fitting_folds(train, k)), time.perf_counter() - start


def _write_oof(
    entries: Sequence[CrossFitEntry],
    fits: Sequence[tuple[dict[int, Entry], Entry, float]],
    train: TrainMaps,
    n_jobs: int,
    progress: bool,
) -> list[float]:
    """Every entry's OOF maps from one read of each chunk of `train`, fold by fold (each entry's fit without the
    fold predicts it; `n_jobs` joblib workers over the chunks as for the test maps); returns each entry's seconds:
    its predictions and writes plus its share of the reads."""
    spent = np.zeros(len(entries) + 1)
    columns = [entry.columns for entry in entries]
    desc = entries[0].name if len(entries) == 1 else f"{len(entries)} entries"
    with progress_bar(total=train.n_images, desc=f"{desc}: OOF maps", leave=False, disable=not progress) as bar:
        for k in train.all_folds:
            models = [by_fold[k] for by_fold, _, _ in fits]
            for ids, levels, seconds in predict_test_all(models, columns, train.folds([k]).unlabelled(), n_jobs=n_jobs):
                spent += seconds
                for i, entry in enumerate(entries):
                    start = time.perf_counter()
                    for img, level in zip(ids, levels[i]):
                        entry.writer.write("train", img, level, fold=k)
                    spent[i] += time.perf_counter() - start
                bar.update(len(ids))
    return list(spent[:-1] + spent[-1] / len(entries))


def _write_test(
    entries: Sequence[CrossFitEntry], models: Sequence[Entry], test: TestMaps, n_jobs: int, progress: bool
) -> list[float]:
    """Every entry's test maps from one read of each test photo's maps; returns each entry's share of the pass's
    wall seconds, in proportion to its predictions' and writes' seconds (the reads shared evenly)."""
    start, spent = time.perf_counter(), np.zeros(len(entries) + 1)
    columns = [entry.columns for entry in entries]
    desc = entries[0].name if len(entries) == 1 else f"{len(entries)} entries"
    with progress_bar(total=len(test.ids), desc=f"{desc}: test maps", leave=False, disable=not progress) as bar:
        for ids, levels, seconds in predict_test_all(models, columns, test, n_jobs=n_jobs):
            spent += seconds
            for i, entry in enumerate(entries):
                written = time.perf_counter()
                for img, level in zip(ids, levels[i]):
                    entry.writer.write("test", img, level)
                spent[i] += time.perf_counter() - written
            bar.update(len(ids))
    wall, shares = time.perf_counter() - start, spent[:-1] + spent[-1] / len(entries)
    return list(wall * shares / max(shares.sum(), 1e-12))


def predict_test(model: Entry, test: TestMaps, *, n_jobs: int = 1) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """(ids, (n, H, W) uint8 levels: the store's format) of every chunk of `test`, in order (`predict_test_all`
    with one model)."""
    for ids, levels, _ in predict_test_all([model], [None], test, n_jobs=n_jobs):
        yield ids, levels[0]


def predict_test_all(
    models: Sequence[Entry], columns: Sequence[tuple[int, ...] | None], test: TestMaps, *, n_jobs: int = 1
) -> Iterator[tuple[tuple[str, ...], list[np.ndarray], np.ndarray]]:
    """(ids, [each model's (n, H, W) uint8 levels], seconds (len(models) + 1,): each model's predictions, then the
    reads) of every chunk of `test` (the test maps, or a fold's train maps as `TrainMaps.unlabelled`), in order,
    each photo's maps read once for every model (model i sees its `columns[i]`). With `n_jobs` != 1 and more than
    one chunk, joblib workers read and predict the chunks (at most 2 x n_jobs in flight, so memory stays bounded
    by chunks, not by the test set); every model is sent to each worker with its chunk, and the worker sends back
    levels, a quarter of the float maps' bytes."""
    chunks = test.chunks()
    if n_jobs == 1 or len(chunks) < 2:
        for ids in chunks:
            yield _predict_chunk(models, columns, test, ids)
        return
    import joblib
    from joblib.parallel import get_active_backend

    jobs = [joblib.delayed(_predict_chunk)(models, columns, test, ids) for ids in chunks]  # specs, not maps
    if get_active_backend()[0].supports_return_generator:
        yield from joblib.Parallel(n_jobs=n_jobs, return_as="generator", pre_dispatch="2*n_jobs")(jobs)
        return
    # Ray's joblib backend returns lists only: windows of 2 x n_jobs chunks keep memory bounded by chunks all the same
    window = 2 * joblib.effective_n_jobs(n_jobs)
    with joblib.Parallel(n_jobs=n_jobs) as parallel:
        for start in range(0, len(jobs), window):
            yield from parallel(jobs[start : start + window])


def _predict_chunk(
    models: Sequence[Entry], columns: Sequence[tuple[int, ...] | None], test: TestMaps, ids: tuple[str, ...]
) -> tuple[tuple[str, ...], list[np.ndarray], np.ndarray]:
    """The chunk's (n, H, W) uint8 levels of each model (`stacking.levels.predict_levels`), and the seconds spent
    (each model's, then the reads'). Predicted image by image: a worker holds one image's member maps (17 MB at
    1918x1280 with 7 members) and the entries' float temporaries, not a chunk's, while the models travel once per
    chunk."""
    levels: list[list[np.ndarray]] = [[] for _ in models]
    seconds = np.zeros(len(models) + 1)
    for img in ids:
        start = time.perf_counter()
        batch = read_batch(test.read, (img,), test.photo)
        seconds[-1] += time.perf_counter() - start
        for i, (model, members) in enumerate(zip(models, columns)):
            start = time.perf_counter()
            levels[i].append(predict_levels(model, select_members(batch, members))[0])
            seconds[i] += time.perf_counter() - start
    return ids, [np.stack(each) for each in levels], seconds


def select_members(batch: MapBatch, columns: tuple[int, ...] | None) -> MapBatch:
    """The batch with only the member maps at `columns` (None: the batch itself)."""
    return batch if columns is None else replace(batch, maps=batch.maps[:, list(columns)])


def member_columns(members: Sequence[str], read: Sequence[str]) -> tuple[int, ...] | None:
    """The positions of `members` among the `read` members, or None when they are all of them, in order."""
    if tuple(members) == tuple(read):
        return None
    missing = sorted(set(members) - set(read))
    if missing:
        raise ValueError(f"members {missing} are not among the maps read ({list(read)})")
    return tuple(list(read).index(m) for m in members)
