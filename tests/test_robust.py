"""The guarded entry: inner folds inside the fitting folds decide, by the car-bootstrap noise rule, between the
entry and the selected blend; the inner fits are shared by the outer fits of one source."""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator

from stacking.blenders import SelectedBlend
from stacking.crossfit import cross_fit
from stacking.maps import MapBatch, TrainMaps
from stacking.pixel_stacker import make_stacker
from stacking.robust import Guarded, batch_dice
from tests.test_selection import noisy_members

PARAMS = {"lo": 0.2, "hi": 0.8, "max_pixels": 3000, "random_state": 0}
FITS: list[tuple[int, ...]] = []  # the fold sets Peek was fitted on


class Peek(BaseEstimator):
    """Predicts the truth of a labelled batch (or its opposite): an entry far better (or worse) than any blend."""

    def __init__(self, *, opposite: bool = False) -> None:
        self.opposite = opposite

    def fit(self, X: TrainMaps, y: None = None) -> Peek:
        FITS.append(X.fold_set)
        self.n_members_ = X.n_members
        return self

    def predict_proba(self, X: MapBatch) -> np.ndarray:
        truth = np.asarray(X.truth, dtype=np.float32)
        return 1 - truth if self.opposite else truth


def source(seed: int, n_images: int = 24) -> tuple[TrainMaps, np.ndarray]:
    """Noisy members of 24 one-photo cars in 3 folds (car-grouped: every photo its own car), and their maps."""
    maps, truth, fold = noisy_members(seed, n_images=n_images)
    angles = np.arange(n_images) % 16 + 1
    return TrainMaps.from_arrays(maps, truth, fold=fold, angles=angles), maps


def test_the_entry_is_used_only_when_its_inner_gain_is_clear_of_the_noise():
    train, maps = source(0)
    part = train.folds([0, 2])
    better = Guarded(entry=Peek()).fit(part)
    assert better.used_ == "model" and better.gain_.lo > 0 and sorted(better.inner_) == [0, 2]
    assert all(entry == 1.0 > fallback for entry, fallback in better.inner_.values())
    worse = Guarded(entry=Peek(opposite=True)).fit(part)
    assert worse.used_ == "fallback" and worse.gain_.hi < 0
    batch = MapBatch.of(maps)
    assert np.array_equal(worse.predict_proba(batch), SelectedBlend().fit(part).predict_proba(batch))
    assert np.array_equal(worse.predict_levels(batch), SelectedBlend().fit(part).predict_levels(batch))


def test_a_stacker_is_used_exactly_when_the_interval_of_its_inner_gain_lies_above_zero():
    for seed in range(3):
        train, _ = source(seed)
        guarded = Guarded(entry=make_stacker("logistic", **PARAMS)).fit(train)
        # the gain is the mean per-image difference over the inner held-out images, recomputed here by brute force
        differences = []
        for j in train.fold_set:
            rest = [k for k in train.fold_set if k != j]
            stacker = make_stacker("logistic", **PARAMS).fit(train.folds(rest))
            blend = SelectedBlend().fit(train.folds(rest))
            for batch in train.folds([j]).batches():
                differences += list(batch_dice(stacker.predict_proba(batch), batch.truth)
                                    - batch_dice(blend.predict_proba(batch), batch.truth))
        assert np.isclose(guarded.gain_.gain, np.mean(differences))
        assert guarded.used_ == ("model" if guarded.gain_.lo > 0 else "fallback")
        assert guarded.gain_.lo <= guarded.gain_.gain <= guarded.gain_.hi


def test_outer_fits_share_their_inner_fits():
    """3 folds: the entry is fitted on each single fold, each pair and all three, once each (7 fits, not 13)."""
    train, _ = source(1)
    FITS.clear()
    fitted = dict(cross_fit(lambda: Guarded(entry=Peek()), train))
    assert sorted(FITS) == [(0,), (0, 1), (0, 1, 2), (0, 2), (1,), (1, 2), (2,)]
    assert all(model.used_ == "model" for model in fitted.values())


def test_without_inner_folds_the_selected_blend_is_used():
    train, _ = source(7)
    guarded = Guarded(entry=Peek()).fit(train.folds([1]))
    assert guarded.used_ == "fallback" and guarded.gain_ is None
