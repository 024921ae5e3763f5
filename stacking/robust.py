"""Learned entries that do not lose to the simple blend by noise: an entry guarded by inner folds.

`Guarded(entry=...)` wraps any learned entry (a pixel stacker, the tuned blend). Fitted on some folds F, it
first runs inner car-grouped CV inside F: for each fold j of F, the wrapped entry and the selected blend
(`SelectedBlend`, the fallback: greedy selection from the best member, so the dominant member itself when one
dominates) are both fitted on F minus j and scored per image (exact Dice at 0.5) on fold j. The entry is used
(refitted on all of F) only when its inner gain over the fallback is clear of the noise, by the rule the
leaderboard's choice uses: the paired car-bootstrap 95% interval of the gain (`stacking.uncertainty`) lies
above 0. Otherwise the selected blend fitted on F answers. Each outer fit decides on its own folds only, so
the honest OOF map of fold k never depended on fold k.

Fits are shared: the inner fit on F minus j of the outer fit that leaves k out is the same fit (all folds but
k and j) as the outer fit that leaves j out needs, and the fit on every fold decides from the outer fits'
own held-out scores. A source's fits and inner scores are kept in its shared state
(`TrainMaps.shared.fits`), so with 5 folds a guarded entry costs 16 fits instead of 6 (not 31), and with 3
folds 7 instead of 4. Fits that joblib workers run in other processes recompute what they need.

What it cannot do: a member whose fold-k model failed shows it only in fold k's maps, which no fit without
fold k sees; the guard protects against what the fitting folds can show (a learned entry that does not
transfer between folds, or gains too small to trust), not against that.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, cast

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.utils.validation import check_is_fitted

from stacking.blenders import SelectedBlend
from stacking.crossfit import Entry
from stacking.levels import predict_levels
from stacking.maps import MapBatch, TrainMaps
from stacking.uncertainty import Gain, paired_gains


def batch_dice(proba: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Per-image Dice (n,) float64 of maps (n, H, W) thresholded at `threshold` vs truths (n, H, W) 0/1."""
    pred = proba >= threshold
    car = truth > 0
    tp = np.count_nonzero(pred & car, axis=(1, 2))
    total = np.count_nonzero(pred, axis=(1, 2)) + np.count_nonzero(car, axis=(1, 2))
    return np.where(total == 0, 1.0, 2.0 * tp / np.maximum(total, 1))


def entry_per_image(model: Entry, X: TrainMaps) -> np.ndarray:
    """The fitted entry's per-image Dice (n,) on the images of X (in `X.ids` order), streamed."""
    return np.concatenate([batch_dice(model.predict_proba(b), np.asarray(b.truth)) for b in X.batches()])


def _key(entry: Any) -> str:
    """What identifies an unfitted entry's fits: its class and every parameter."""
    params = sorted((name, repr(value)) for name, value in entry.get_params(deep=True).items())
    return f"{type(entry).__qualname__}{params}"


def shared_fit(entry: Any, X: TrainMaps, folds: Sequence[int]) -> Entry:
    """A clone of `entry` fitted on `folds` of X, fitted once per source and set of folds."""
    cache = X.shared.fits
    key = (_key(entry), "fit", tuple(sorted(folds)))
    if key not in cache:
        cache[key] = clone(entry).fit(X.folds(folds))
    return cache[key]


def shared_scores(entry: Any, X: TrainMaps, folds: Sequence[int], held: int) -> np.ndarray:
    """Per-image Dice on fold `held` of `entry` fitted on `folds` (both once per source)."""
    cache = X.shared.fits
    key = (_key(entry), "scores", tuple(sorted(folds)), held)
    if key not in cache:
        cache[key] = entry_per_image(shared_fit(entry, X, folds), X.folds([held]))
    return cache[key]


class Guarded(BaseEstimator):
    """`entry` where inner folds show it beats the selected blend clear of the car-bootstrap noise, else the
    selected blend.

    Learned: `model_` (the fitted entry used), `used_` ("model" or "fallback"), `gain_` (the inner `Gain` of
    the entry over the fallback; None without inner folds), `inner_` {fold: (entry, fallback)} inner mean Dice.
    With fewer than 2 fitting folds there are no inner folds and the fallback is used.
    """

    fits_on_evaluator: ClassVar[bool] = True  # the fallback's inner scores come from the shared evaluator

    def __init__(self, *, entry: Any, name: str | None = None) -> None:
        self.entry = entry
        self.name = name

    def fit(self, X: TrainMaps, y: None = None) -> Guarded:
        folds = X.fold_set
        self.inner_: dict[int, tuple[float, float]] = {}
        model: dict[str, float] = {}
        fallback: dict[str, float] = {}
        for j in folds if len(folds) > 1 else ():
            rest = [k for k in folds if k != j]
            ids = X.folds([j]).ids
            ours = shared_scores(self.entry, X, rest, j)
            weights = cast(SelectedBlend, shared_fit(SelectedBlend(), X, rest)).weights_
            theirs = X.folds([j]).evaluator().per_image(0.5, weights)
            model.update(zip(ids, ours))
            fallback.update(zip(ids, theirs))
            self.inner_[j] = (float(ours.mean()), float(theirs.mean()))
        self.gain_: Gain | None = None
        if model:
            self.gain_ = paired_gains({"entry": model, "fallback": fallback}, "fallback", X.fold_of)["entry"]
        self.used_ = "model" if self.gain_ is not None and self.gain_.lo > 0 else "fallback"
        self.model_ = shared_fit(self.entry if self.used_ == "model" else SelectedBlend(), X, folds)
        print(self._summary(folds))
        return self

    def _summary(self, folds: Sequence[int]) -> str:
        name = self.name or type(self.entry).__name__
        if self.gain_ is None:
            return f"{name} (guarded) on folds {list(folds)}: no inner folds; uses the selected blend"
        gain = self.gain_
        used = "the learned entry" if self.used_ == "model" else "the selected blend (the gain is within the noise)"
        return (
            f"{name} (guarded) on folds {list(folds)}: inner gain over the selected blend {gain.gain:+.5f} "
            f"(95% car bootstrap {gain.lo:+.5f} to {gain.hi:+.5f}); uses {used}"
        )

    def predict_proba(self, X: MapBatch) -> np.ndarray:
        check_is_fitted(self, "model_")
        return self.model_.predict_proba(X)

    def predict_levels(self, X: MapBatch) -> np.ndarray:
        check_is_fitted(self, "model_")
        return predict_levels(self.model_, X)
