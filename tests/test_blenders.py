"""Blenders against obvious formulas; the learned blend against the exact brute-force Dice."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from carvana.errors import WorkbenchError
from stacking.blenders import (
    BLENDERS,
    LogitMeanBlender,
    MeanBlender,
    VoteBlender,
    WeightedMeanBlender,
    _registry,
    make_blender,
)
from stacking.evaluate import brute_force_mean_dice
from stacking.maps import MapBatch, TrainMaps


def random_members(seed: int = 0, shape=(3, 4, 6, 5)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def train(X, y=None) -> TrainMaps:
    return TrainMaps.from_arrays(X, y)


def batch(X) -> MapBatch:
    return MapBatch.of(X)


def test_mean_blender_is_the_mean_for_uint8_and_float_input():
    X = random_members()
    expected = (X / 255.0).mean(axis=1)
    for inputs in (X, X / 255.0):
        out = MeanBlender().fit(train(inputs)).predict_proba(batch(inputs))
        assert out.dtype == np.float32 and out.shape == (3, 6, 5)
        np.testing.assert_allclose(out, expected, atol=1e-6)


def test_logit_mean_blender_is_normalised_geometric_mean_of_clipped_probabilities():
    X = random_members(1)
    p = np.clip(X / 255.0, 0.01, 0.99)
    geo, geo_not = np.exp(np.log(p).mean(axis=1)), np.exp(np.log(1 - p).mean(axis=1))
    out = LogitMeanBlender(eps=0.01).fit(train(X)).predict_proba(batch(X))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, geo / (geo + geo_not), atol=1e-5)


def test_vote_blender_counts_votes_at_level_128_and_ties_give_half():
    levels = np.array([[127, 128, 255, 0], [128, 128, 0, 0], [255, 127, 127, 127]], dtype=np.uint8)
    X = levels[:, :, None, None]  # (N=3, M=4, 1, 1)
    out = VoteBlender().fit(train(X)).predict_proba(batch(X))[:, 0, 0]
    np.testing.assert_array_equal(out, np.array([0.5, 0.5, 0.25], dtype=np.float32))


def learnable_data(seed: int = 0):
    """Member 0 is nearly right, members 1 and 2 are confident noise: weight should go to member 0."""
    rng = np.random.default_rng(seed)
    y = np.zeros((12, 16, 16), np.uint8)
    for i in range(12):
        r, c = rng.integers(3, 8, 2)
        y[i, r:r + 6, c:c + 7] = 1
    good = np.where(y == 1, 200, 40).astype(np.uint8)
    noise = [rng.choice(np.array([0, 255], np.uint8), y.shape) for _ in range(2)]
    return np.stack([good, *noise], axis=1), y


def test_weighted_mean_blender_learns_useful_simplex_weights_deterministically():
    X, y = learnable_data()
    blender = WeightedMeanBlender(random_state=3).fit(train(X, y))
    w = blender.weights_
    assert w.shape == (3,) and (w >= 0).all() and w.sum() == pytest.approx(1)
    maps = [X[:, m] for m in range(3)]
    angles = np.ones(len(y), int)
    assert blender.score_ == pytest.approx(brute_force_mean_dice(maps, y, angles, 0.5, w), abs=1e-12)
    assert blender.score_ > brute_force_mean_dice(maps, y, angles, 0.5) + 0.05
    assert blender.score_ == pytest.approx(1.0)
    np.testing.assert_array_equal(WeightedMeanBlender(random_state=3).fit(train(X, y)).weights_, w)
    out = blender.predict_proba(batch(X))
    np.testing.assert_allclose(out, np.tensordot(X / 255.0, w, axes=([1], [0])), atol=1e-5)


def test_weighted_mean_blender_accepts_float_maps_and_needs_truth():
    X, y = learnable_data(1)
    from_float = WeightedMeanBlender().fit(train(X / 255.0, y))
    np.testing.assert_array_equal(from_float.weights_, WeightedMeanBlender().fit(train(X, y)).weights_)
    with pytest.raises(ValueError, match="truth"):
        WeightedMeanBlender().fit(train(X))


def test_estimator_contract_and_input_checks():
    X = random_members()
    for cls in BLENDERS.values():
        blender = cls()
        with pytest.raises(NotFittedError):
            blender.predict_proba(batch(X))
        assert clone(blender).get_params() == blender.get_params()
    fitted = MeanBlender().fit(train(X))
    with pytest.raises(ValueError, match="members"):
        fitted.predict_proba(batch(X[:, :2]))
    with pytest.raises(ValueError, match="N, M, H, W"):
        MeanBlender().fit(train(X[0]))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        MeanBlender().fit(train(X * 2.0))
    with pytest.raises(ValueError, match="truth must be"):
        MeanBlender().fit(train(X, np.zeros((3, 5, 5))))


def test_registry_names_and_errors():
    assert set(BLENDERS) == {"mean", "logit_mean", "vote", "weighted_mean", "selected"}
    assert isinstance(make_blender("vote", threshold=0.4), VoteBlender)
    with pytest.raises(WorkbenchError, match="logit_mean, mean, selected, vote, weighted_mean"):
        make_blender("median")
    with pytest.raises(ValueError, match="duplicate"):
        _registry([MeanBlender, MeanBlender])


@pytest.mark.parametrize("name", list(BLENDERS))
def test_every_blender_gives_probabilities_in_range_where_every_member_is_certain(name):
    """Members that are 1.0 and 0.0 everywhere (Carvana's 99.7% of pixels): the blend stays in [0, 1], also
    with weights whose float32 sum lands an ulp above 1 (a crash of `selected` at Dice 0.997)."""
    X = np.zeros((2, 4, 6, 5), dtype=np.uint8)
    X[:, :, :3] = 255
    truth = np.zeros((2, 6, 5), dtype=np.uint8)
    truth[:, :3] = 1
    blender = make_blender(name).fit(train(X, truth))
    if hasattr(blender, "weights_"):
        blender.weights_ = np.array([0.29423128395632503, 0.37217959958552005, 0.31786998754049334,
                                     0.015719128917661702])  # float32 sum 1.0000001
    out = blender.predict_proba(batch(X))
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert (out[:, :3] >= 0.5).all() and (out[:, 3:] < 0.5).all()
