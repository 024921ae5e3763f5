"""Learned per-pixel second-level models (stackers) over the members' probability maps.

Near 0.997 most pixels are decided by every member alike; a stacker only learns and predicts on the
uncertain band (see `stacking.features`): a pixel is decided by consensus when every member's
probability is <= lo or every member's is >= hi (defaults 0.02 and 0.98, i.e. all levels <= 5 or all
>= 250). Output map: consensus pixels get the members' mean probability, band pixels the level-2
model's probability. The model sees at most `max_pixels` sampled band pixels, spread evenly over the
images, and the feature matrix is only ever built for those, so memory stays bounded at any scale.

Level-2 models (`STACKERS`): "lightgbm" (gradient-boosted trees, the angle as a categorical feature)
and "logistic" (logistic regression on standardised features, the angle one-hot).
With `monotone` (the default) LightGBM's answer may only rise with each member's own probability and logit,
the other features equal (`stacking.features.member_features`): trees fitted on the fitting folds' fold models
otherwise learn to read a member against the others in ways that a weaker fold model of that member turns upside
down on the held-out fold. The consensus features (the members' mean, min, max and context) and the rest stay
free: held monotone too, they cost LightGBM its gain at 0.997. The logistic stacker is linear and left free.
Measured: bench/RESULTS.md, "Monotone LightGBM on the robustness datasets".
If the sampled band pixels are all one class (or there are none) there is nothing to learn:
`model_` is None and band pixels get the members' mean too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from carvana.errors import WorkbenchError
from carvana.registry import by_name
from oof.format import to_uint8
from stacking.features import (
    N_ANGLES,
    BandSample,
    band_levels,
    band_mask,
    band_of_range,
    check_image,
    feature_names,
    level_sum,
    mean_levels,
    member_features,
    member_mean,
    pixel_features,
    sample_band_features,
)
from stacking.maps import MapBatch, TrainMaps

WEIGHTINGS = ("pixel", "dice")  # every sampled band pixel alike, or weighted to follow per-image Dice
PREDICT_CHUNK = 2**18  # band pixels featurised at a time when predicting: bounded memory per image


def _lightgbm(random_state: int, params: dict | None) -> Any:
    from lightgbm import (
        LGBMClassifier,  # imported here so `import stacking` stays light
    )

    # One thread: on the team's busy 2-core boxes 2 OpenMP threads fitted 5x slower (bench_stacker).
    defaults = dict(
        n_estimators=200,
        num_leaves=31,
        learning_rate=0.05,
        min_child_samples=50,
        n_jobs=1,
        verbose=-1,
        deterministic=True,
        force_col_wise=True,
        random_state=random_state,
    )
    return LGBMClassifier(**{**defaults, **(params or {})})


def _logistic(random_state: int, params: dict | None) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    if params:
        raise ValueError(f"lgbm_params apply to model='lightgbm' only, got {params!r} for model='logistic'")
    return Pipeline(
        [
            ("encode", LogisticDesign()),
            ("logistic", LogisticRegression(C=1.0, max_iter=300, random_state=random_state)),
        ]
    )


class LogisticDesign(TransformerMixin, BaseEstimator):
    """The logistic stacker's design matrix, built in one float64 array: every feature but the last
    standardised (zero mean, unit variance; a constant one only centred), the last (the angle 1..16) one-hot.
    That is StandardScaler beside OneHotEncoder, without their float32 and one-hot intermediates and the
    copy that joins them: at 1M sampled pixels of 7 members the fit peaks 0.18 GB lower (0.31 GB vs 0.49 GB).
    Learned: `mean_`, `scale_` (F - 1,) float64, `n_features_in_`."""

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> LogisticDesign:
        X = np.asarray(X)
        self.mean_, std = np.zeros(X.shape[1] - 1), np.zeros(X.shape[1] - 1)
        for j in range(X.shape[1] - 1):  # one float64 column at a time
            column = X[:, j].astype(np.float64)
            self.mean_[j], std[j] = column.mean(), column.std()
        self.scale_ = np.where(std > 0, std, 1.0)
        self.n_features_in_ = X.shape[1]
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self)
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X must be (n, {self.n_features_in_}) features, got shape {X.shape}")
        angles = X[:, -1].astype(np.int64)
        if angles.size and (angles.min() < 1 or angles.max() > N_ANGLES):
            raise ValueError(f"the last feature must be the angle 1..{N_ANGLES}, got {angles.min()}..{angles.max()}")
        n, f = X.shape[0], X.shape[1] - 1
        design = np.zeros((n, f + N_ANGLES))
        values = design[:, :f]
        values[:] = X[:, :f]
        values -= self.mean_
        values /= self.scale_
        design[np.arange(n), f + angles - 1] = 1.0
        return design


def _monotone_lightgbm(n_members: int) -> dict:
    # "intermediate" splits less greedily than "basic" under the constraints (LightGBM's docs); with the consensus
    # features held monotone too, it kept +0.0001 to +0.0003 more honest OOF than "basic" on three robustness datasets
    return {"monotone_constraints": member_features(n_members), "monotone_constraints_method": "intermediate"}


@dataclass(frozen=True)
class Level2Model:
    """A level-2 model: `build(random_state, lgbm_params)` returns an unfitted sklearn classifier."""

    name: str
    build: Callable[[int, dict | None], Any]
    fit_params: Callable[[int], dict]  # n_features -> extra keyword arguments of the classifier's fit
    weight_param: str  # the fit's keyword argument taking per-row sample weights
    monotone: Callable[[int], dict] | None = None  # n_members -> the parameters holding it monotone, if it can be


_registry = functools.partial(by_name, what="stacker")

STACKERS = _registry(
    [
        Level2Model(
            "lightgbm",
            _lightgbm,
            lambda n_features: {"categorical_feature": [n_features - 1]},
            "sample_weight",
            _monotone_lightgbm,
        ),
        Level2Model("logistic", _logistic, lambda n_features: {}, "logistic__sample_weight"),
    ]
)


def _level2(name: str) -> Level2Model:
    if name not in STACKERS:
        raise WorkbenchError(
            f"unknown stacker {name!r}; valid names: {', '.join(sorted(STACKERS))} "
            "(fix the stacker name in the experiment config)"
        )
    return STACKERS[name]


class PixelStacker(BaseEstimator):
    """Per-pixel level-2 model on the uncertain band; scikit-learn estimator rules.

    Learned: `model_` (the fitted classifier, or None when the band sample had one class),
    `n_members_`, `feature_names_`, `band_share_` (share of all fit pixels in the band),
    `n_band_pixels_`, `n_fit_pixels_` (rows of the feature matrix the model was fitted on,
    <= max_pixels), `n_images_`.
    """

    def __init__(
        self,
        *,
        model: str = "lightgbm",
        lo: float = 0.02,
        hi: float = 0.98,
        max_pixels: int = 2_000_000,
        random_state: int = 0,
        lgbm_params: dict | None = None,
        max_band_share: float = 1.0,
        weighting: str = "pixel",
        monotone: bool = True,
    ) -> None:
        self.model = model
        self.lo = lo
        self.hi = hi
        self.max_pixels = max_pixels
        self.random_state = random_state
        self.lgbm_params = lgbm_params
        self.max_band_share = max_band_share
        self.weighting = weighting
        self.monotone = monotone

    def fit(self, X: TrainMaps, y: None = None) -> PixelStacker:
        """Fit on the band pixels of X's images, streamed one image at a time."""
        _level2(self.model)
        lo_level, hi_level = band_levels(self.lo, self.hi)
        return self._fit_sample(
            sample_band_features(X.images(), lo_level, hi_level, self.max_pixels, self.random_state, X.n_images)
        )

    def _fit_sample(self, sample: BandSample) -> PixelStacker:
        """Fit on a ready `sample_band_features` sample drawn with this stacker's lo, hi, max_pixels and
        random_state (a benchmark builds it once and fits several level-2 models on it)."""
        spec = _level2(self.model)
        drawn = (sample.lo_level, sample.hi_level, sample.max_pixels, sample.random_state)
        if drawn != (*band_levels(self.lo, self.hi), self.max_pixels, self.random_state):
            raise ValueError(
                f"the sample was drawn with (lo_level, hi_level, max_pixels, random_state) = {drawn}, "
                "not this stacker's settings"
            )
        self.n_members_, self.n_images_ = sample.n_members, sample.n_images
        self.feature_names_ = feature_names(sample.n_members)
        self.band_share_ = sample.n_band / max(sample.n_pixels, 1)
        self.n_band_pixels_, self.n_fit_pixels_ = sample.n_band, sample.labels.size
        self.model_ = None
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if np.unique(sample.labels).size == 2:
            params = self.lgbm_params
            if self.monotone and spec.monotone is not None:  # lgbm_params may still set its own
                params = {**spec.monotone(sample.n_members), **(params or {})}
            self.model_ = spec.build(self.random_state, params)
            fit_params = spec.fit_params(sample.features.shape[1])
            if self.weighting == "dice":
                fit_params[spec.weight_param] = sample.weights
            self.model_.fit(sample.features, sample.labels, **fit_params)
        return self

    def predict_proba(self, X: MapBatch) -> np.ndarray:
        """Probabilities (N, H, W) float32 of a batch's images."""
        check_is_fitted(self, "n_members_")
        out = np.empty(X.maps.shape[:1] + X.maps.shape[2:], dtype=np.float32)
        for i in range(len(X)):
            out[i] = self._predict_image(X.maps[i], int(X.angles[i]))
        return out

    def predict_levels(self, X: MapBatch) -> np.ndarray:
        """The store's (N, H, W) uint8 levels of `predict_proba(X)`: the consensus pixels' levels looked up from
        the members' level sum, only the band's probabilities rounded."""
        check_is_fitted(self, "n_members_")
        out = np.empty(X.maps.shape[:1] + X.maps.shape[2:], dtype=np.uint8)
        lo_level, hi_level = band_levels(self.lo, self.hi)
        for i, (maps, angle, img, lowest, highest) in enumerate(zip(X.maps, X.angles, X.ids, *X.level_range)):
            check_image(maps, int(angle), self.n_members_)
            total = level_sum(maps)
            np.take(mean_levels(maps.shape[0]), total, out=out[i])
            flat = out[i].reshape(-1)
            band = band_of_range(lowest, highest, lo_level, hi_level)
            for index, proba in self._band_probabilities(maps, int(angle), member_mean(maps, total), band):
                flat[index] = to_uint8(proba.astype(np.float32)[None], f"map of {img}")[0]
        return out

    def _predict_image(self, maps: np.ndarray, angle: int) -> np.ndarray:
        """Probability map (H, W) float32 of one image's maps (M, H, W) uint8 and its angle 1..16."""
        check_image(maps, angle, self.n_members_)
        mean = member_mean(maps)
        out = mean.copy()
        flat = out.reshape(-1)
        band = band_mask(maps, *band_levels(self.lo, self.hi))
        for index, proba in self._band_probabilities(maps, angle, mean, band):
            flat[index] = proba
        return out

    def _band_probabilities(
        self, maps: np.ndarray, angle: int, mean: np.ndarray, band: np.ndarray
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(flat indices, the level-2 model's probabilities) of the image's `band` pixels ((H, W) bool, capped),
        PREDICT_CHUNK at a time (none without a model), every chunk's features from the members' `mean` as it came."""
        if self.model_ is None:
            return
        pixels = self._capped(np.flatnonzero(band), mean)
        for start in range(0, pixels.size, PREDICT_CHUNK):
            index = pixels[start : start + PREDICT_CHUNK]
            yield index, self.model_.predict_proba(pixel_features(maps, angle, index, mean=mean))[:, 1]

    def _capped(self, band: np.ndarray, mean: np.ndarray) -> np.ndarray:
        """At most max_band_share of the image's pixels: the band pixels whose members' mean is nearest 0.5
        (the rest keep the members' mean), so the cost per image is bounded however soft the members are."""
        cap = int(self.max_band_share * mean.size)
        if not 0 < self.max_band_share <= 1:
            raise ValueError(f"max_band_share must be in (0, 1], got {self.max_band_share}")
        if band.size <= cap:
            return band
        doubt = np.abs(mean.reshape(-1)[band] - np.float32(0.5))
        return np.sort(band[np.argpartition(doubt, cap - 1)[:cap]])


def make_stacker(name: str, **params: Any) -> PixelStacker:
    """A new PixelStacker with level-2 model `name`; an unknown name raises WorkbenchError listing the valid ones."""
    _level2(name)
    return PixelStacker(model=name, **params)
