"""The one cross-fit loop: every entry is fitted on folds != k and predicts fold k, then refitted on
every fold for the test maps. Nothing else in the workbench fits an entry for honest OOF maps.

An entry is any scikit-learn-style estimator over the stacking input type (`stacking.maps`):
`fit(TrainMaps) -> self` and `predict_proba(MapBatch) -> (n, H, W) float32`.

The test maps (100,064 photos at Kaggle's size: the slow part for a pixel stacker) can be predicted
by `n_jobs` joblib workers, chunk by chunk, under whatever joblib backend the caller has set (loky
processes, or Ray's backend: `workbench.compute.parallel_backend`); the caller alone writes them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

from carvana.progress import progress_bar
from oof.format import to_uint8
from stacking.maps import MapBatch, TestMaps, TrainMaps, read_batch

EntryT = TypeVar("EntryT", bound="Entry")


class Entry(Protocol):
    """A blend or stacker: a scikit-learn estimator over member maps."""

    def fit(self: EntryT, X: TrainMaps) -> EntryT: ...

    def predict_proba(self, X: MapBatch) -> np.ndarray: ...

    def get_params(self, deep: bool = True) -> dict[str, Any]: ...


class MapWriter(Protocol):
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
    for k in train.all_folds:
        yield k, make().fit(train.folds([j for j in train.all_folds if j != k]))
    yield None, make().fit(train)


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
    maps (bench.scale reads the line), and adds the latter to `clock`."""
    bar = progress_bar(
        total=train.n_images + (len(test.ids) if test else 0),
        desc=f"{desc}: cross-fit",
        leave=False,
        disable=not progress,
    )
    model, start, test_start = None, time.perf_counter(), None
    with bar:  # closed on an error too, so that the CLI's one-line message starts its own line
        for k, model in cross_fit(make, train):
            if k is None:
                test_start = time.perf_counter()  # the fit on all folds is done: the rest is test-map work
            if k is None and test is None:
                break
            predicted: Iterator[tuple[tuple[str, ...], np.ndarray]]
            if k is not None:
                predicted = ((b.ids, model.predict_proba(b)) for b in train.folds([k]).batches(with_truth=False))
            else:
                assert test is not None  # without test maps the loop stopped above
                predicted = predict_test(model, test, n_jobs=n_jobs)
            for ids, probas in predicted:
                for img, proba in zip(ids, probas):
                    writer.write("train" if k is not None else "test", img, proba, fold=k)
                bar.update(len(ids))
    end = time.perf_counter()
    test_start = test_start or end
    print(f"{desc}: cross-fit {test_start - start:.1f} s on train images, {end - test_start:.1f} s on test maps")
    if clock is not None:
        clock.seconds += end - test_start
    assert model is not None  # cross_fit yields at least the fit on all folds
    return model


def predict_test(model: Entry, test: TestMaps, *, n_jobs: int = 1) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """(ids, (n, H, W) uint8 levels: the store's format) of every chunk of `test`, in order. With `n_jobs` != 1
    and more than one chunk, joblib workers read and predict the chunks (at most 2 x n_jobs in flight, so
    memory stays bounded by chunks, not by the test set); the model is sent to each worker with its chunk, and
    the worker sends back levels, a quarter of the float maps' bytes."""
    chunks = test.chunks()
    if n_jobs == 1 or len(chunks) < 2:
        for ids in chunks:
            yield _predict_chunk(model, test, ids)
        return
    import joblib

    jobs = (joblib.delayed(_predict_chunk)(model, test, ids) for ids in chunks)
    yield from joblib.Parallel(n_jobs=n_jobs, return_as="generator", pre_dispatch="2*n_jobs")(jobs)


def _predict_chunk(model: Entry, test: TestMaps, ids: tuple[str, ...]) -> tuple[tuple[str, ...], np.ndarray]:
    """The chunk's (n, H, W) uint8 levels, rounded as the store rounds them. Predicted image by image: a
    worker holds one image's member maps (17 MB at 1918x1280 with 7 members) and the entry's float temporaries,
    not a chunk's, while the model travels once per chunk."""
    levels = [
        to_uint8(model.predict_proba(read_batch(test.read, (img,), test.photo))[0], f"test map of {img}") for img in ids
    ]
    return ids, np.stack(levels)
