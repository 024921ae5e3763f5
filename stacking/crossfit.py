"""The one cross-fit loop: every entry is fitted on folds != k and predicts fold k, then refitted on
every fold for the test maps. Nothing else in the workbench fits an entry for honest OOF maps.

An entry is any scikit-learn-style estimator over the stacking input type (`stacking.maps`):
`fit(TrainMaps) -> self` and `predict_proba(MapBatch) -> (n, H, W) float32`.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

import numpy as np

from carvana.progress import progress_bar
from stacking.maps import MapBatch, TestMaps, TrainMaps

EntryT = TypeVar("EntryT", bound="Entry")


class Entry(Protocol):
    """A blend or stacker: a scikit-learn estimator over member maps."""

    def fit(self: EntryT, X: TrainMaps) -> EntryT: ...

    def predict_proba(self, X: MapBatch) -> np.ndarray: ...

    def get_params(self, deep: bool = True) -> dict[str, Any]: ...


class MapWriter(Protocol):
    def write(self, split: str, img: str, proba: np.ndarray, fold: int | None = None) -> Any: ...


def cross_fit(make: Callable[[], EntryT], train: TrainMaps) -> Iterator[tuple[int | None, EntryT]]:
    """(k, a new entry fitted on every fold but k) for each fold k of the run, then (None, one fitted on all)."""
    for k in train.all_folds:
        yield k, make().fit(train.folds([j for j in train.all_folds if j != k]))
    yield None, make().fit(train)


def fit_predict(make: Callable[[], EntryT], train: TrainMaps, test: TestMaps | None, writer: MapWriter,
                progress: bool = False, desc: str = "entry") -> EntryT:
    """Write the entry's honest OOF map of every train image (fold k's from the fit without fold k) and,
    when `test` is given, its test maps from the fit on every fold; return that last fit. Prints the seconds
    spent on the train images (fits and OOF maps) and on the test maps (bench.scale reads the line)."""
    bar = progress_bar(total=train.n_images + (len(test.ids) if test else 0), desc=f"{desc}: cross-fit", leave=False,
               disable=not progress)
    model, start, test_start = None, time.perf_counter(), None
    with bar:  # closed on an error too, so that the CLI's one-line message starts its own line
        for k, model in cross_fit(make, train):
            if k is None:
                test_start = time.perf_counter()  # the fit on all folds is done: the rest is test-map work
            if k is None and test is None:
                break
            if k is not None:
                batches = train.folds([k]).batches(with_truth=False)
            else:
                assert test is not None  # without test maps the loop stopped above
                batches = test.batches()
            for batch in batches:
                for img, proba in zip(batch.ids, model.predict_proba(batch)):
                    writer.write("train" if k is not None else "test", img, proba, fold=k)
                bar.update(len(batch))
    end = time.perf_counter()
    test_start = test_start or end
    print(f"{desc}: cross-fit {test_start - start:.1f} s on train images, {end - test_start:.1f} s on test maps")
    assert model is not None  # cross_fit yields at least the fit on all folds
    return model
