"""The Optuna-tuned blend as a stacking entry: per-angle thresholds and member weights, one study per fit.

A new study holds the baseline (0.5, equal weights) and the weighted blend's weights fitted on the same
folds (`warm_start`) as its first trials: TPE over ~22 parameters rarely finds weights as good as the
coordinate search does, so it starts from them and refines thresholds and weights.

`TunedBlend.fit(X)` runs (or continues) the study for X's folds on the shared streamed evaluator:
`<study>` when X holds every fold, `<study>-outer<k>` when it leaves fold k out, so `workbench tune`
processes and `workbench stack` share the same studies. Its maps are stored so that thresholding at
0.5 gives exactly the tuned decision: the blend is remapped piecewise-linearly so that its angle's
threshold lands on 0.5.

`nested_tune` (`workbench tune`) makes the tuning honest through the same loop: the params applied to fold
k's images come from the study that never scored a fold-k image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from oof.format import CAR_LEVEL
from stacking.blenders import WeightedMeanBlender
from stacking.crossfit import cross_fit
from stacking.evaluate import FoldedEvaluator, level_thresholds, quantize_weights
from stacking.levels import pointwise_levels
from stacking.maps import MapBatch, TrainMaps
from stacking.tune import TunedParams, TuneSpace, tune_study


def blend_levels(maps: np.ndarray, params: TunedParams) -> tuple[np.ndarray, int]:
    """(S, sum W): the (H, W) int32 sum S of the integer weights W times one image's maps (M, H, W) uint8, added
    member by member (no int64 copy of the maps: 255 x sum W stays inside int32, see WEIGHT_SCALE). The products
    are int32 whatever NumPy's promotion rules (NumPy 1.26 would multiply in uint16 and wrap)."""
    w = quantize_weights(params.weights, len(maps))
    level_sum = np.zeros(maps.shape[1:], dtype=np.int32)
    for weight, member in zip(w, maps):
        if weight:
            level_sum += np.multiply(member, np.int32(weight), dtype=np.int32)
    return level_sum, int(w.sum())


def blend_proba(maps: np.ndarray, params: TunedParams) -> np.ndarray:
    """(H, W) float32 blend S / (255 sum W) of one image's maps (M, H, W) uint8 under the tuned weights."""
    return levels_proba(*blend_levels(maps, params))


def blend_mask(maps: np.ndarray, angle: int, params: TunedParams) -> np.ndarray:
    """(H, W) bool car mask of one image's maps (M, H, W) uint8 at angle 1..16, by the evaluator's exact rule."""
    return levels_mask(*blend_levels(maps, params), angle, params)


def levels_proba(level_sum: np.ndarray, total: int) -> np.ndarray:
    """`blend_proba` from a ready `blend_levels` (S, sum W)."""
    return (level_sum / float(255 * total)).astype(np.float32)


def levels_mask(level_sum: np.ndarray, total: int, angle: int, params: TunedParams) -> np.ndarray:
    """`blend_mask` from a ready `blend_levels` (S, sum W)."""
    return level_sum >= level_thresholds(params.threshold, total)[int(angle) - 1]


def study_for(study: str, held_out: tuple[int, ...]) -> str:
    """The study of a fit that leaves `held_out` folds out: `study`, or `study-outer<k>`."""
    return study if not held_out else f"{study}-outer{'-'.join(str(k) for k in held_out)}"


def tuned_map(maps: np.ndarray, angle: int, params: TunedParams) -> np.ndarray:
    """(H, W) float32 in [0, 1] whose >= 0.5 pixels are exactly the tuned blend's car pixels.

    maps: (M, H, W) uint8 in `params.members` order; angle: 1..16.
    """
    level_sum, total = blend_levels(maps, params)  # once per image: the map and the decision share it
    proba = levels_proba(level_sum, total)
    t = float(params.threshold[angle - 1])
    remapped = np.where(proba < t, 0.5 * proba / t, 0.5 + 0.5 * (proba - t) / (1 - t))
    car = levels_mask(level_sum, total, angle, params)
    # Pin the decision against float and uint8 rounding: car at or above the car level, background below it.
    car_floor, background_ceiling = CAR_LEVEL / 255, (CAR_LEVEL - 1) / 255
    return np.where(car, np.maximum(remapped, car_floor), np.minimum(remapped, background_ceiling)).astype(np.float32)


class TunedBlend(BaseEstimator):
    """Blend with Optuna-tuned thresholds and weights. Learned: `params_` (TunedParams), `study_`, `n_members_`."""

    fits_on_evaluator: ClassVar[bool] = True  # its studies score trials on the maps' shared exact-Dice evaluator

    def __init__(
        self,
        *,
        storage: Any,
        study: str = "blend",
        n_trials: int = 100,
        seed: int = 0,
        space: TuneSpace | None = None,
        context: Mapping[str, object] | None = None,
        user_attrs: Mapping[str, object] | None = None,
        progress: bool = False,
        warm_start: bool = True,
    ) -> None:
        self.storage = storage
        self.study = study
        self.n_trials = n_trials
        self.seed = seed
        self.space = space
        self.context = context
        self.user_attrs = user_attrs
        self.progress = progress
        self.warm_start = warm_start

    def fit(self, X: TrainMaps, y: None = None) -> TunedBlend:
        """Tune on the folds of X (its shared evaluator); the study is named after the folds left out."""
        self.study_ = study_for(self.study, X.held_out)
        attrs = {**(self.user_attrs or {}), "outer_fold": X.held_out[0] if len(X.held_out) == 1 else "all"}
        space = self.space or TuneSpace()

        def starts() -> list[dict[str, float]]:
            """The weighted blend's weights on the same folds: the study's first trial after the baseline."""
            if not (self.warm_start and space.tune_weights and X.n_members > 1):
                return []
            weights = WeightedMeanBlender().fit(X).weights_
            return [{f"w_{m}": float(w) for m, w in zip(X.members, weights)}]

        self.params_ = tune_study(
            X.evaluator().folded,
            list(X.fold_set),
            list(X.members),
            space,
            self.storage,
            self.study_,
            self.n_trials,
            self.seed,
            context=self.context,
            progress=self.progress,
            user_attrs=attrs,
            starts=starts,
        )
        self.n_members_ = X.n_members
        return self

    def predict_proba(self, X: MapBatch) -> np.ndarray:
        """(n, H, W) float32 maps whose >= 0.5 pixels are the tuned decision."""
        check_is_fitted(self, "params_")
        return np.stack([tuned_map(maps, int(a), self.params_) for maps, a in zip(X.maps, X.angles)])

    def predict_levels(self, X: MapBatch) -> np.ndarray:
        """The store's (n, H, W) uint8 levels of `predict_proba(X)`, computed where the members disagree only."""
        return pointwise_levels(self.predict_proba, X)


@dataclass
class NestedResult:
    """Honest (nested) and tuned-on scores of a tuning, and the params to apply to the test set.

    honest_per_image: {img: Dice} where fold k's images use the params of the study that never saw
    fold k; tuned_on: the full study's best value (optimistic: tuned and scored on the same images);
    params: the full study's best (apply these to the test set); outer: {k: outer-k study's best}.
    """

    honest_per_image: dict[str, float]
    honest_mean: float
    tuned_on: float
    baseline: float  # threshold 0.5, equal weights, all folds
    params: TunedParams
    outer: dict[int, TunedParams]

    def to_dict(self) -> dict:
        return {
            "honest_mean": self.honest_mean,
            "tuned_on": self.tuned_on,
            "baseline": self.baseline,
            "params": self.params.to_dict(),
            "outer": {str(k): p.to_dict() for k, p in self.outer.items()},
        }


def nested_tune(evaluator: FoldedEvaluator, blend: TunedBlend, *, members: Sequence[str], n_folds: int) -> NestedResult:
    """Study `<study>-outer<k>` on folds != k for each k (scored on fold k), then study `<study>` on all folds,
    through the one cross-fit loop (`stacking.crossfit`) with new blends of the unfitted `blend`'s settings.

    Each study gets `n_trials` complete trials (see `tune_study`), so the whole costs (n_folds + 1) x n_trials.
    """
    all_folds = list(range(n_folds))
    if evaluator.folds != all_folds:
        raise ValueError(f"the evaluator holds folds {evaluator.folds}, expected 0..{n_folds - 1}")
    train = TrainMaps.from_evaluator(evaluator, members)

    outer: dict[int, TunedParams] = {}
    honest: dict[str, float] = {}

    def make() -> TunedBlend:  # the same settings, the storage object shared (sklearn's clone would copy it)
        return TunedBlend(**blend.get_params(deep=False))

    for k, model in cross_fit(make, train):
        if k is None:
            full = model.params_
            break
        outer[k] = model.params_
        scores = evaluator.per_image(outer[k].threshold, outer[k].weights, [k])
        ids = evaluator.ids.get(k) or [f"fold{k}/{i}" for i in range(scores.size)]
        honest.update(zip(ids, scores.tolist(), strict=True))
    return NestedResult(
        honest, float(np.mean(list(honest.values()))), full.value, evaluator.score(0.5, None, all_folds), full, outer
    )
