"""Pixel stackers: features and the band rule against per-pixel loops, the sampling budget,
determinism, streaming = arrays, and a held-out win over the mean blend on members with a bias."""
from __future__ import annotations

import math
from fractions import Fraction

import cv2
import numpy as np
import pytest
from sklearn.base import clone

from carvana.errors import WorkbenchError
from carvana.metric import mean_dice
from stacking.blenders import MeanBlender
from stacking.features import (
    band_levels,
    band_mask,
    feature_names,
    member_features,
    pixel_features,
    sample_band_features,
    window_sides,
)
from stacking.maps import MapBatch, TrainMaps
from stacking.pixel_stacker import (
    STACKERS,
    Level2Model,
    LogisticDesign,
    PixelStacker,
    _registry,
    make_stacker,
)


def toy_data(n: int = 12, height: int = 48, width: int = 64, seed: int = 0):
    """Ellipse cars; 3 members = blurred truth + per-pixel noise through a steep logit, member 2 biased outward.

    Returns X (n, 3, H, W) uint8, y (n, H, W) uint8 0/1, angles (n,) 1..16.
    """
    rng = np.random.default_rng(seed)
    y = np.zeros((n, height, width), np.uint8)
    X = np.empty((n, 3, height, width), np.uint8)
    for i in range(n):
        centre = (int(rng.integers(20, 44)), int(rng.integers(16, 32)))
        axes = (int(rng.integers(10, 20)), int(rng.integers(6, 12)))
        cv2.ellipse(y[i], centre, axes, 0, 0, 360, 1, -1)
        soft = cv2.GaussianBlur(y[i].astype(np.float32), (0, 0), 1.5)
        for m, bias in enumerate((0.0, 0.0, 0.25)):
            noise = rng.normal(0, 0.05, (height, width)).astype(np.float32)
            X[i, m] = np.rint(255 / (1 + np.exp(-30 * (soft - 0.5 + bias + noise))))
    return X, y, np.arange(n) % 16 + 1


@pytest.fixture(scope="module")
def toy():
    return toy_data()


def train(X, y, angles) -> TrainMaps:
    return TrainMaps.from_arrays(X, y, angles=angles)


def batch(X, angles=None) -> MapBatch:
    return MapBatch.of(X, angles=angles)


def stream(X, y, angles):
    """A generator (no len) of (maps, truth, angle), as a caller streaming from the store would pass."""
    for i in range(len(X)):
        yield X[i], y[i], int(angles[i])


def slow_features(maps: np.ndarray, angle: int, r: int, c: int) -> list[float]:
    """Feature row of pixel (r, c) computed the obvious way, per pixel."""
    n_members, height, width = maps.shape
    p = [maps[m, r, c] / 255 for m in range(n_members)]
    q = [min(max(v, 1 / 510), 1 - 1 / 510) for v in p]
    mean_map = maps.astype(np.float64).mean(axis=0) / 255
    context = []
    for side in window_sides(height):
        padded = np.pad(mean_map, side // 2, mode="reflect")  # numpy "reflect" is OpenCV's reflect-101
        context.append(padded[r:r + side, c:c + side].mean())
    mean = sum(p) / n_members
    std = math.sqrt(sum((v - mean) ** 2 for v in p) / n_members)
    return (p + [math.log(v / (1 - v)) for v in q] + [mean, std, min(p), max(p)] + context
            + [(r + 0.5) / height, (c + 0.5) / width, angle])


def slow_band(maps: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(H, W) bool per pixel: not (every member <= lo or every member >= hi), in exact rationals."""
    _, height, width = maps.shape
    band = np.zeros((height, width), bool)
    for r in range(height):
        for c in range(width):
            p = [Fraction(int(v), 255) for v in maps[:, r, c]]
            band[r, c] = not (all(v <= Fraction(lo) for v in p) or all(v >= Fraction(hi) for v in p))
    return band


def test_pixel_features_match_a_per_pixel_computation(toy):
    X, _, angles = toy
    maps = X[3]
    pixels = [(0, 0), (47, 63), (20, 30), (5, 60), (30, 2)]
    index = np.array([r * maps.shape[2] + c for r, c in pixels])
    out = pixel_features(maps, int(angles[3]), index)
    assert out.dtype == np.float32 and out.shape == (len(pixels), len(feature_names(3))) == (5, 15)
    expected = np.array([slow_features(maps, int(angles[3]), r, c) for r, c in pixels])
    np.testing.assert_allclose(out, expected, atol=2e-6)


def test_window_sides_scale_with_the_image_height():
    assert window_sides(640) == (5, 17)
    assert window_sides(1280) == (11, 35)
    assert window_sides(48) == (3, 9)  # tiny images keep two distinct scales


@pytest.mark.parametrize("lo, hi", [(0.02, 0.98), (5 / 255, 250 / 255), (0.0, 1.0), (0.2, 0.7)])
def test_band_mask_and_band_share_match_the_per_pixel_rule(toy, lo, hi):
    X, y, angles = toy
    lo_level, hi_level = band_levels(lo, hi)
    bands = [slow_band(X[i], lo, hi) for i in range(4)]
    for i in range(4):
        np.testing.assert_array_equal(band_mask(X[i], lo_level, hi_level), bands[i])
    stacker = PixelStacker(lo=lo, hi=hi).fit(train(X[:4], y[:4], angles[:4]))
    assert stacker.band_share_ == sum(b.sum() for b in bands) / y[:4].size
    assert stacker.n_band_pixels_ == stacker.n_fit_pixels_ == sum(b.sum() for b in bands)


def test_default_band_is_a_minority_of_pixels_on_the_toy_maps(toy):
    X, y, angles = toy
    assert 0.02 < PixelStacker().fit(train(X, y, angles)).band_share_ < 0.15


@pytest.mark.parametrize("model", ["lightgbm", "logistic"])
def test_fit_predict_shapes_range_and_consensus_pixels_get_the_members_mean(toy, model):
    X, y, angles = toy
    stacker = PixelStacker(model=model).fit(train(X[:8], y[:8], angles[:8]))
    assert stacker.model_ is not None and stacker.n_members_ == 3
    out = stacker.predict_proba(batch(X[8:], angles[8:]))
    assert out.shape == (4, 48, 64) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_array_equal(stacker.predict_proba(batch(X[9:10], angles[9:10]))[0], out[1])
    np.testing.assert_array_equal(stacker.predict_proba(batch(X[8:] / 255.0, angles[8:])), out)  # float input
    mean = MeanBlender().fit(train(X[8:], None, None)).predict_proba(batch(X[8:]))
    consensus = ~np.stack([slow_band(X[i], 0.02, 0.98) for i in range(8, 12)])
    assert consensus.mean() > 0.5
    np.testing.assert_allclose(out[consensus], mean[consensus], atol=1e-6)
    assert not np.allclose(out[~consensus], mean[~consensus], atol=1e-3)  # the model decides the band


def test_sampling_budget_is_respected_and_spread_evenly_over_images(toy):
    X, y, angles = toy
    lo_level, hi_level = band_levels(0.02, 0.98)
    bands = [int(band_mask(X[i], lo_level, hi_level).sum()) for i in range(12)]
    assert min(bands) > 100 // 12  # every image has more band pixels than its quotas below
    sample = sample_band_features(stream(X, y, angles), lo_level, hi_level, max_pixels=60)
    assert sample.features.shape == (60, 15) and sample.labels.shape == (60,)
    assert np.bincount(sample.features[:, -1].astype(int) - 1).tolist() == [5] * 12  # angle = image here
    stacker = PixelStacker(max_pixels=60).fit(train(X, y, angles))
    assert stacker.n_fit_pixels_ == 60 and stacker.n_band_pixels_ == sum(bands)
    odd_budget = PixelStacker(max_pixels=100).fit(train(X, y, angles))
    assert odd_budget.n_fit_pixels_ == 12 * (100 // 12) <= 100
    with pytest.raises(ValueError, match="max_pixels"):
        PixelStacker(max_pixels=11).fit(train(X, y, angles))


def test_dice_weights_follow_each_images_car_and_band(toy):
    """A row's weight is band_i / (taken_i x (|truth_i| + |predicted_i|)), normalised to mean 1; weighting="dice"
    fits with them (a different model than the pooled loss), an unknown weighting is refused."""
    X, y, angles = toy
    lo_level, hi_level = band_levels(0.02, 0.98)
    sample = sample_band_features(stream(X, y, angles), lo_level, hi_level, max_pixels=60)
    expected = []
    for i in range(12):
        band = int(band_mask(X[i], lo_level, hi_level).sum())
        predicted = int((X[i].astype(np.float64).mean(axis=0) >= 127.5).sum())
        expected += [band / 5 / (int(y[i].sum()) + predicted)] * 5  # 5 rows of each image (previous test)
    expected = np.array(expected) / np.mean(expected)
    np.testing.assert_allclose(sample.weights, expected, rtol=1e-5)
    pooled = PixelStacker(max_pixels=600, model="logistic").fit(train(X[:8], y[:8], angles[:8]))
    weighted = PixelStacker(max_pixels=600, model="logistic", weighting="dice").fit(train(X[:8], y[:8], angles[:8]))
    held = batch(X[8:], angles[8:])
    assert not np.array_equal(pooled.predict_proba(held), weighted.predict_proba(held))
    with pytest.raises(ValueError, match="weighting"):
        PixelStacker(max_pixels=600, weighting="area").fit(train(X[:8], y[:8], angles[:8]))


def test_streaming_fit_equals_array_fit(toy):
    X, y, angles = toy
    lo_level, hi_level = band_levels(0.02, 0.98)
    # 60 pixels over a stream of unknown length: quotas shrink 60, 30, 20, ... and held samples get cut
    streamed = sample_band_features(stream(X, y, angles), lo_level, hi_level, 60)
    known = sample_band_features(list(stream(X, y, angles)), lo_level, hi_level, 60)
    np.testing.assert_array_equal(streamed.features, known.features)
    np.testing.assert_array_equal(streamed.labels, known.labels)
    assert known.max_held == 60 and 60 < streamed.max_held <= 150  # uncut, the stream would hold 184 rows
    from_arrays = PixelStacker(max_pixels=600).fit(train(X[:8], y[:8], angles[:8]))
    one_at_a_time = TrainMaps.from_arrays(X[:8], y[:8], chunk=1, angles=angles[:8])
    from_stream = PixelStacker(max_pixels=600).fit(one_at_a_time)
    assert from_stream.n_fit_pixels_ == from_arrays.n_fit_pixels_ <= 600
    np.testing.assert_array_equal(from_stream.predict_proba(batch(X[8:], angles[8:])),
                                  from_arrays.predict_proba(batch(X[8:], angles[8:])))


def test_fit_sample_equals_fit_and_checks_the_sample_settings(toy):
    X, y, angles = toy
    sample = sample_band_features(stream(X[:8], y[:8], angles[:8]), *band_levels(0.02, 0.98), 300, 0)
    direct = PixelStacker(max_pixels=300).fit(train(X[:8], y[:8], angles[:8]))
    from_sample = PixelStacker(max_pixels=300)._fit_sample(sample)
    held = batch(X[8:], angles[8:])
    np.testing.assert_array_equal(from_sample.predict_proba(held), direct.predict_proba(held))
    assert from_sample.band_share_ == direct.band_share_
    with pytest.raises(ValueError, match="not this stacker's settings"):
        PixelStacker(max_pixels=300, hi=0.9)._fit_sample(sample)


def test_deterministic_for_a_seed(toy):
    X, y, angles = toy

    def fit(seed: int) -> PixelStacker:
        return PixelStacker(max_pixels=240, random_state=seed).fit(train(X[:8], y[:8], angles[:8]))

    first, again, other = fit(0), fit(0), fit(1)
    held = batch(X[8:], angles[8:])
    np.testing.assert_array_equal(first.predict_proba(held), again.predict_proba(held))
    assert not np.array_equal(first.predict_proba(held), other.predict_proba(held))


def test_lightgbm_beats_the_mean_blend_on_held_out_images(toy):
    X, y, angles = toy
    stacker = PixelStacker().fit(train(X[:8], y[:8], angles[:8]))
    held = slice(8, 12)
    stacked = mean_dice(stacker.predict_proba(batch(X[held], angles[held])) >= 0.5, y[held])
    blended = mean_dice(MeanBlender().fit(train(X[held], None, None)).predict_proba(batch(X[held])) >= 0.5, y[held])
    assert stacked > blended + 0.001


def test_one_class_band_sample_falls_back_to_the_members_mean(toy):
    X, y, angles = toy
    stacker = PixelStacker().fit(train(X[:4], np.ones_like(y[:4]), angles[:4]))
    assert stacker.model_ is None
    np.testing.assert_allclose(stacker.predict_proba(batch(X[4:6], angles[4:6])),
                               MeanBlender().fit(train(X[4:6], None, None)).predict_proba(batch(X[4:6])), atol=1e-6)


def test_registry_and_make_stacker():
    assert set(STACKERS) == {"lightgbm", "logistic"}
    stacker = make_stacker("logistic", max_pixels=1000)
    assert isinstance(stacker, PixelStacker) and stacker.model == "logistic" and stacker.max_pixels == 1000
    with pytest.raises(WorkbenchError, match="lightgbm, logistic"):
        make_stacker("xgboost")
    with pytest.raises(WorkbenchError, match="valid names"):
        PixelStacker(model="xgboost").fit(train(np.zeros((1, 2, 4, 4), np.uint8), np.zeros((1, 4, 4)), [1]))
    with pytest.raises(ValueError, match="duplicate"):
        _registry([STACKERS["lightgbm"], Level2Model("lightgbm", STACKERS["logistic"].build, dict, "sample_weight")])
    assert clone(PixelStacker(lo=0.1, lgbm_params={"n_estimators": 5})).get_params()["lo"] == 0.1


def test_input_errors(toy):
    X, y, angles = toy
    with pytest.raises(ValueError, match="angles must be"):
        PixelStacker().fit(train(X[:2], y[:2], np.array([1, 17])))
    with pytest.raises(ValueError, match="lo < 0.5 < hi"):
        PixelStacker(lo=0.6).fit(train(X[:2], y[:2], angles[:2]))
    with pytest.raises(ValueError, match="lightgbm"):
        PixelStacker(model="logistic", lgbm_params={"n_jobs": 1}).fit(train(X[:4], y[:4], angles[:4]))
    stacker = PixelStacker().fit(train(X[:4], y[:4], angles[:4]))
    with pytest.raises(ValueError, match="members"):
        stacker.predict_proba(batch(X[:2, :2], angles[:2]))
    with pytest.raises(ValueError, match="angle must be"):
        stacker.predict_proba(batch(X[:2], np.array([1, 17])))


def test_logistic_design_is_the_scaled_features_beside_the_one_hot_angle():
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(3)
    X = rng.random((500, 6), dtype=np.float32)
    X[:, 2] = 0.25  # a constant feature is only centred, as StandardScaler does
    X[:, -1] = rng.integers(1, 17, 500)
    design = LogisticDesign().fit(X).transform(X)
    assert design.dtype == np.float64 and design.shape == (500, 5 + 16)
    np.testing.assert_allclose(design[:, :5], StandardScaler().fit_transform(X[:, :5].astype(np.float64)), atol=1e-6)
    one_hot = OneHotEncoder(categories=[np.arange(1, 17)], sparse_output=False).fit_transform(X[:, -1:].astype(int))
    np.testing.assert_array_equal(design[:, 5:], one_hot)
    with pytest.raises(ValueError, match="angle 1..16"):
        LogisticDesign().fit(X).transform(np.column_stack([X[:, :5], np.full(500, 17, np.float32)]))


@pytest.mark.parametrize("name", list(STACKERS))
@pytest.mark.parametrize("disagree", [False, True], ids=["all-certain", "certain-but-disagreeing"])
def test_stackers_give_probabilities_where_members_are_certain(name, disagree):
    """Members at 0 and 255 only (Carvana's 99.7% of pixels): an empty uncertain band (every member agrees)
    or a band of certain but disagreeing members; the stacker fits and its maps stay in [0, 1]."""
    X = np.zeros((6, 3, 16, 12), dtype=np.uint8)
    X[:, :, :8] = 255
    if disagree:
        X[:, 0, 8:] = 255  # member 0 also says car below the roofline
    truth = np.zeros((6, 16, 12), dtype=np.uint8)
    truth[:, :8] = 1
    angles = np.arange(6) % 16 + 1
    model = make_stacker(name, lo=0.02, hi=0.98, max_pixels=1000, random_state=0).fit(train(X, truth, angles))
    out = model.predict_proba(batch(X, angles))
    assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0
    assert (out[:, :8] >= 0.5).all()


@pytest.mark.parametrize("model", ["lightgbm", "logistic"])
def test_a_band_predicted_in_chunks_equals_one_chunk(toy, model, monkeypatch):
    """The band is featurised PREDICT_CHUNK pixels at a time; every chunk's context features come from the members'
    mean, never from the model's answers for the chunks before it (which an in-place map once fed them)."""
    import stacking.pixel_stacker as pixel_stacker

    X, y, angles = toy
    stacker = make_stacker(model, max_pixels=20_000).fit(train(X[:8], y[:8], angles[:8]))
    whole = stacker.predict_proba(batch(X[8:], angles[8:]))
    monkeypatch.setattr(pixel_stacker, "PREDICT_CHUNK", 7)
    np.testing.assert_array_equal(stacker.predict_proba(batch(X[8:], angles[8:])), whole)


def test_member_features_are_each_members_probability_and_logit():
    names = feature_names(3)
    assert [name for name, own in zip(names, member_features(3)) if own] == [
        "p_0", "p_1", "p_2", "logit_0", "logit_1", "logit_2"]


@pytest.mark.parametrize("monotone", [True, False])
def test_monotone_lightgbm_only_rises_with_a_members_probability(toy, monotone):
    """Raising one member's probability and logit (the rest equal) never lowers the monotone model's answer; the
    free model's answer falls somewhere on the same rows, so the check can fail."""
    X, y, angles = toy
    stacker = PixelStacker(max_pixels=20_000, monotone=monotone).fit(train(X[:8], y[:8], angles[:8]))
    rows = sample_band_features(stream(X[8:], y[8:], angles[8:]), *band_levels(0.02, 0.98), 20_000).features
    before = stacker.model_.predict_proba(rows)[:, 1]
    drops = []
    for m in range(3):
        higher = rows.copy()
        higher[:, m] = np.minimum(rows[:, m] + 0.05, 1.0)
        clipped = np.clip(higher[:, m], 1 / 510, 1 - 1 / 510)
        higher[:, 3 + m] = np.log(clipped / (1 - clipped))
        drops.append((before - stacker.model_.predict_proba(higher)[:, 1]).max())
    assert max(drops) <= 0.0 if monotone else max(drops) > 0.01


def test_monotone_constraints_do_not_override_lgbm_params(toy):
    X, y, angles = toy
    own = [0] * len(feature_names(3))
    stacker = PixelStacker(lgbm_params={"monotone_constraints": own}).fit(train(X[:4], y[:4], angles[:4]))
    assert stacker.model_.get_params()["monotone_constraints"] == own
    default = PixelStacker().fit(train(X[:4], y[:4], angles[:4]))
    assert default.model_.get_params()["monotone_constraints"] == member_features(3)
    assert make_stacker("logistic").fit(train(X[:4], y[:4], angles[:4])).model_ is not None  # linear: left free
