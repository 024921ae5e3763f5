"""The guarded stacker: inner folds inside the fitting folds decide between the stacker and the selected blend."""
from __future__ import annotations

import numpy as np

from stacking.blenders import SelectedBlend
from stacking.maps import MapBatch, TrainMaps
from stacking.pixel_stacker import make_stacker
from stacking.robust import Guarded
from tests.test_selection import noisy_members

PARAMS = {"lo": 0.2, "hi": 0.8, "max_pixels": 3000, "random_state": 0}


def test_guarded_follows_its_inner_folds():
    maps, truth, fold = noisy_members(6, broken_fold=1)
    train = TrainMaps.from_arrays(maps, truth, fold=fold)
    batch = MapBatch.of(maps)
    for fit_folds in ([0, 2], [0, 1, 2]):
        part = train.folds(fit_folds)
        always_blend = Guarded(stacker="logistic", params=PARAMS, margin=1.0).fit(part)
        always_model = Guarded(stacker="logistic", params=PARAMS, margin=-1.0).fit(part)
        assert sorted(always_blend.inner_) == fit_folds and always_blend.used_ == "fallback"
        assert always_model.used_ == "model"
        assert np.array_equal(always_blend.predict_proba(batch), SelectedBlend().fit(part).predict_proba(batch))
        assert np.array_equal(always_model.predict_proba(batch),
                              make_stacker("logistic", **PARAMS).fit(part).predict_proba(batch))
        default = Guarded(stacker="logistic", params=PARAMS).fit(part)
        gain = np.mean([m - f for m, f in default.inner_.values()])
        assert default.used_ == ("model" if gain > 0 else "fallback")


def test_guarded_without_inner_folds_uses_the_selected_blend():
    maps, truth, fold = noisy_members(7)
    one_fold = TrainMaps.from_arrays(maps, truth, fold=fold).folds([1])
    assert Guarded(stacker="logistic", params=PARAMS, margin=-1.0).fit(one_fold).used_ == "fallback"
