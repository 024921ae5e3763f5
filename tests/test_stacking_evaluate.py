"""The fast evaluator must equal brute force exactly, and brute force must follow the documented rule."""
from __future__ import annotations

import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from carvana.metric import mean_dice
from stacking.evaluate import (
    DiceEvaluator,
    brute_force_mean_dice,
    brute_force_per_image,
    level_thresholds,
    quantize_weights,
)

TIE_LEVELS = np.array([0, 0, 0, 1, 64, 127, 128, 128, 200, 254, 255, 255, 255], dtype=np.uint8)


def make_data(seed: int = 0, n_members: int = 3, n_images: int = 40, shape=(9, 12)):
    """Tie-heavy maps (few distinct levels) with empty truths, empty predictions and a full truth."""
    rng = np.random.default_rng(seed)
    maps = [TIE_LEVELS[rng.integers(0, TIE_LEVELS.size, (n_images, *shape))] for _ in range(n_members)]
    truths = (rng.random((n_images, *shape)) < 0.5).astype(np.uint8)
    truths[0] = 0  # empty truth, non-empty prediction
    truths[1] = 0
    truths[2] = 1
    for m in maps:
        m[1] = 0  # empty prediction and empty truth: Dice 1
        m[3] = 0  # empty prediction, non-empty truth: Dice 0
        m[4] = 255
    angles = rng.integers(1, 17, n_images)
    return maps, truths, angles


THRESHOLDS = [0.5, 128 / 255, 127 / 255, 1 / 255, 1.0, 1e-9, 0.3333, 200 / 255 + 1e-12,
              np.linspace(0.05, 0.95, 16), np.round(np.arange(1, 17) * 15 / 255, 6), np.arange(1, 17) * 15 / 255]
WEIGHTS = [None, [1, 1, 1], [1, 0, 0], [0, 2, 1], [0.2, 0.5, 0.3], [1e-3, 1, 0], [0.1, 0.1, 0.2]]


@pytest.fixture(scope="module")
def data():
    maps, truths, angles = make_data()
    return maps, truths, angles, DiceEvaluator.from_arrays(maps, truths, angles)


@pytest.mark.parametrize("weights", WEIGHTS)
def test_equals_brute_force_exactly(data, weights):
    maps, truths, angles, evaluator = data
    for threshold in THRESHOLDS:
        expected = brute_force_per_image(maps, truths, angles, threshold, weights)
        np.testing.assert_array_equal(evaluator.per_image(threshold, weights), expected)
        assert evaluator.score(threshold, weights) == pytest.approx(expected.mean(), rel=1e-14, abs=0)


def test_random_configurations_match(data):
    maps, truths, angles, evaluator = data
    rng = np.random.default_rng(1)
    for _ in range(30):
        threshold = rng.uniform(0.01, 1.0, 16) if rng.random() < 0.5 else float(rng.uniform(0.01, 1.0))
        weights = rng.random(3) * (rng.random(3) < 0.7)
        weights = None if weights.sum() == 0 else weights
        expected = brute_force_mean_dice(maps, truths, angles, threshold, weights)
        assert evaluator.score(threshold, weights) == pytest.approx(expected, rel=1e-14, abs=0)


def test_brute_force_follows_plain_float_rule_away_from_ties(data):
    """Single member and equal weights against `map / 255 >= t` and `mean / 255 >= t` with carvana's metric."""
    maps, truths, angles, _ = data
    for threshold in [0.1, 0.5, 0.77, 1 / 255 / 2]:  # no level mean lies within 1e-6 of these
        single = brute_force_mean_dice(maps, truths, angles, threshold, [0, 1, 0])
        assert single == pytest.approx(mean_dice(list(maps[1] / 255 >= threshold), list(truths)), abs=1e-15)
        mean = sum(m.astype(float) for m in maps) / 3 / 255
        equal = brute_force_mean_dice(maps, truths, angles, threshold)
        assert equal == pytest.approx(mean_dice(list(mean >= threshold), list(truths)), abs=1e-15)


def test_per_angle_threshold_applies_to_its_angle(data):
    maps, truths, angles, evaluator = data
    per_angle = np.full(16, 0.9)
    per_angle[angles[5] - 1] = 0.2
    scores = evaluator.per_image(per_angle, [0.2, 0.5, 0.3])
    at_02 = evaluator.per_image(0.2, [0.2, 0.5, 0.3])
    at_09 = evaluator.per_image(0.9, [0.2, 0.5, 0.3])
    same_angle = angles == angles[5]
    np.testing.assert_array_equal(scores[same_angle], at_02[same_angle])
    np.testing.assert_array_equal(scores[~same_angle], at_09[~same_angle])


def test_level_threshold_is_exact_on_levels():
    # 128/255 as a float is just above or below 128/255; exactly k = ceil(that * 255) either way.
    assert level_thresholds(0.5, 1)[0] == 128
    assert level_thresholds(1.0, 1)[0] == 255
    assert level_thresholds(1e-12, 1)[0] == 1
    assert level_thresholds(0.5, 3)[0] == 383  # ceil(382.5)
    assert (level_thresholds(np.full(16, 0.25), 4) == 255).all()
    for scale in (255, 255 * 3, 255 * 65536):
        for t in [j / 255 for j in range(1, 256)] + [j / 765 for j in range(1, 766)]:
            k = int(level_thresholds(t, scale // 255)[0])
            # k is the least integer S with S / scale >= t, t taken at its exact binary value.
            assert Fraction(k, scale) >= Fraction(t) > Fraction(k - 1, scale)


def test_scaled_weights_decide_exactly_like_equal_weights(data):
    _, _, _, evaluator = data
    for threshold in [0.5, 128 / 255, 1 / 3]:
        np.testing.assert_array_equal(evaluator.per_image(threshold, [7, 7, 7]), evaluator.per_image(threshold))
    assert quantize_weights([0.25, 0.75], 2).tolist() == [16384, 49152]


def test_streaming_after_scoring_equals_fresh_build():
    maps, truths, angles = make_data(seed=2, n_images=12)
    grown = DiceEvaluator(3)
    for i in range(6):
        grown.add_image(np.stack([m[i] for m in maps]), truths[i], angles[i])
    grown.score(0.5, [1, 2, 3])  # packs; later images must unpack and re-pack correctly
    for i in range(6, 12):
        grown.add_image(np.stack([m[i] for m in maps]), truths[i], angles[i])
    fresh = DiceEvaluator.from_images((np.stack([m[i] for m in maps]), truths[i], angles[i]) for i in range(12))
    for weights in [None, [1, 2, 3], [0, 0, 1]]:
        np.testing.assert_array_equal(grown.per_image(0.4, weights), fresh.per_image(0.4, weights))
        np.testing.assert_array_equal(grown.per_image(0.4, weights),
                                      brute_force_per_image(maps, truths, angles, 0.4, weights))


def test_uncertain_pixels_exclude_only_unanimous_0_and_255():
    maps = np.array([[[0, 255, 0, 255, 3]], [[0, 255, 255, 254, 3]]], dtype=np.uint8)  # (M=2, H=1, W=5)
    evaluator = DiceEvaluator(2)
    evaluator.add_image(maps, np.array([[1, 1, 0, 0, 1]]), 1)
    assert evaluator.n_pixels == 5 and evaluator.n_uncertain == 3
    assert evaluator.uncertain_share == pytest.approx(0.6)
    assert evaluator.nbytes > 0


@pytest.mark.parametrize("n_members", [2, 8, 9])
def test_repeated_level_tuples_are_stored_once_and_still_exact(n_members):
    """Each distinct (image, truth, member levels) tuple is stored once with its pixel count: fewer stored
    tuples than uncertain pixels on tie-heavy maps, the same scores as brute force (9 members: byte keys)."""
    maps, truths, angles = make_data(seed=n_members, n_members=n_members, n_images=12, shape=(5, 6))
    blocks = np.ones((1, 4, 5), dtype=np.uint8)  # 4 x 5 pixel blocks share their levels, as smooth maps do
    maps, truths = [np.kron(m, blocks) for m in maps], np.kron(truths, blocks)
    evaluator = DiceEvaluator.from_arrays(maps, truths, angles)
    assert 0 < evaluator.n_stored < evaluator.n_uncertain
    rng = np.random.default_rng(0)
    for weights in [None, rng.random(n_members), np.eye(n_members)[-1]]:
        for threshold in [0.5, np.linspace(0.1, 0.9, 16)]:
            np.testing.assert_array_equal(evaluator.per_image(threshold, weights),
                                          brute_force_per_image(maps, truths, angles, threshold, weights))


def test_weighted_level_sums_do_not_wrap():
    """Two members at level 200 weighted 1:3 (integer weights 16384 and 49152) blend to 200: car at 0.5. The
    products are int32 whatever NumPy's promotion rules: under NumPy 1.26's value-based rules a uint8 map times
    an int32 scalar of 16384 was uint16, and 200 x 16384 wrapped to 0."""
    maps = [np.full((1, 2, 3), 200, np.uint8)] * 2
    truths = np.ones((1, 2, 3), np.uint8)
    assert DiceEvaluator.from_arrays(maps, truths, [1]).score(0.5, [1, 3]) == 1.0
    assert brute_force_mean_dice(maps, truths, [1], 0.5, [1, 3]) == 1.0


def test_invalid_inputs_raise():
    maps, truths, angles = make_data(n_images=5)
    evaluator = DiceEvaluator.from_arrays(maps, truths, angles)
    for threshold in [0.0, 1.5, -0.1, np.full(15, 0.5), float("nan")]:
        with pytest.raises(ValueError, match="threshold"):
            evaluator.score(threshold)
    for weights in [[1, -1, 1], [0, 0, 0], [1, 1], [1, float("inf"), 1]]:
        with pytest.raises(ValueError, match="weights"):
            evaluator.score(0.5, weights)
    with pytest.raises(ValueError, match="uint8"):
        evaluator.add_image(np.zeros((3, 9, 12), np.float32), truths[0], 1)
    with pytest.raises(ValueError, match="angle"):
        evaluator.add_image(np.zeros((3, 9, 12), np.uint8), truths[0], 17)
    with pytest.raises(ValueError, match="no images"):
        DiceEvaluator(3).score(0.5)


def test_stacking_never_imports_deep_learning_frameworks():
    code = ("import sys, stacking.evaluate, stacking.blenders; "
            "bad = [m for m in ('torch', 'tensorflow') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
