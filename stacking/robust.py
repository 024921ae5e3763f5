"""Level-2 models that do not fall over when a member does: a learned entry guarded by inner folds.

`Guarded(stacker=..., params=...)` wraps a pixel stacker (`make_stacker(stacker, **params)`). Fitted on some
folds F, it first runs inner car-grouped CV inside F: for each fold j of F, the wrapped entry and the selected
blend (`SelectedBlend`, the fallback) are both fitted on F minus j and scored (exact mean per-image Dice at
0.5) on fold j. Only when the wrapped entry's mean inner score beats the fallback's by more than `margin` is
it refitted on all of F and used; otherwise the selected blend fitted on F answers. Each outer fit decides on
its own folds only, so the honest OOF map of fold k never depended on fold k. A member whose fold models
differ in quality (a collapsed fold) makes the learned model lose on some inner fold, and the wrapper then
keeps the blend.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from stacking.blenders import SelectedBlend
from stacking.crossfit import Entry
from stacking.levels import predict_levels
from stacking.maps import MapBatch, TrainMaps
from stacking.pixel_stacker import make_stacker


def batch_dice(proba: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-image Dice (n,) float64 of maps (n, H, W) thresholded at 0.5 vs truths (n, H, W) 0/1."""
    pred = proba >= 0.5
    car = truth > 0
    tp = np.count_nonzero(pred & car, axis=(1, 2))
    total = np.count_nonzero(pred, axis=(1, 2)) + np.count_nonzero(car, axis=(1, 2))
    return np.where(total == 0, 1.0, 2.0 * tp / np.maximum(total, 1))


def entry_per_image(model: Entry, X: TrainMaps) -> np.ndarray:
    """The fitted entry's per-image Dice (n,) on the images of X, streamed."""
    return np.concatenate([batch_dice(model.predict_proba(b), np.asarray(b.truth)) for b in X.batches()])


class Guarded(BaseEstimator):
    """The stacker where inner folds say it beats the selected blend by `margin`, else the selected blend.

    Learned: `model_` (the entry used), `used_` ("model" or "fallback"), `inner_` {fold: (model, fallback)}
    inner mean Dice. With fewer than 2 fitting folds there are no inner folds and the fallback is used.
    """

    fits_on_evaluator: ClassVar[bool] = True  # the fallback's inner scores come from the shared evaluator

    def __init__(self, *, stacker: str, params: Mapping[str, Any] | None = None, margin: float = 0.0) -> None:
        self.stacker = stacker
        self.params = params
        self.margin = margin

    def _make(self) -> Entry:
        return make_stacker(self.stacker, **(self.params or {}))

    def fit(self, X: TrainMaps, y: None = None) -> Guarded:
        folds = X.fold_set
        self.inner_: dict[int, tuple[float, float]] = {}
        for j in folds if len(folds) > 1 else ():
            rest, held = X.folds([k for k in folds if k != j]), X.folds([j])
            model = entry_per_image(self._make().fit(rest), held).mean()
            fallback = SelectedBlend().fit(rest)
            self.inner_[j] = (float(model), held.evaluator().score(0.5, fallback.weights_))
        gain = np.mean([m - f for m, f in self.inner_.values()]) if self.inner_ else -np.inf
        self.used_ = "model" if gain > self.margin else "fallback"
        self.model_ = (self._make() if self.used_ == "model" else SelectedBlend()).fit(X)
        print(
            f"{self.stacker} (guarded) on folds {list(folds)}: inner mean Dice gain over the selected blend "
            f"{gain:+.5f}; "
            f"uses the {'learned model' if self.used_ == 'model' else 'selected blend'}"
        )
        return self

    def predict_proba(self, X: MapBatch) -> np.ndarray:
        check_is_fitted(self, "model_")
        return self.model_.predict_proba(X)

    def predict_levels(self, X: MapBatch) -> np.ndarray:
        check_is_fitted(self, "model_")
        return predict_levels(self.model_, X)
