"""The paired car-level bootstrap of an entry's gain over the best member, against an obvious slow version."""

from __future__ import annotations

import numpy as np
import pytest

from folds import Folds
from stacking.leaderboard import GAIN_COLUMNS, EntryScore, add_gains, read_leaderboard, write_leaderboard
from stacking.uncertainty import car_counts, paired_gains, resample_cars

CARS = [f"{i:012x}" for i in (0xA1, 0xB2, 0xC3, 0xD4, 0xE5)]


def small_scores(seed: int = 1) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """5 cars with 2 or 3 images each, 3 entries' per-image Dice, and 2 folds (car-grouped)."""
    rng = np.random.default_rng(seed)
    images = [f"{car}_{angle:02d}" for n, car in zip((2, 3, 2, 3, 2), CARS) for angle in range(1, n + 1)]
    per_image = {name: {img: float(rng.uniform(0.9, 1.0)) for img in images} for name in ("a", "b", "c")}
    fold_of = {img: int(img[:12] in CARS[:2]) for img in images}
    return per_image, fold_of


def slow_gains(per_image, baseline: str, draws: np.ndarray) -> dict[str, list[float]]:
    """Each resample's gain by explicit loops: the images of every drawn car, once per draw."""
    cars = sorted({img[:12] for img in per_image[baseline]})
    gains: dict[str, list[float]] = {name: [] for name in per_image}
    for row in draws:
        images = [img for c in row for img in sorted(per_image[baseline]) if img[:12] == cars[c]]
        for name, scores in per_image.items():
            mean = sum(scores[img] for img in images) / len(images)
            base = sum(per_image[baseline][img] for img in images) / len(images)
            gains[name].append(mean - base)
    return gains


def test_bootstrap_matches_explicit_loops():
    per_image, fold_of = small_scores()
    gains = paired_gains(per_image, "b", fold_of, n_resamples=200, seed=3)
    slow = slow_gains(per_image, "b", resample_cars(len(CARS), 200, seed=3))
    for name, gain in gains.items():
        lo, hi = np.percentile(slow[name], [2.5, 97.5])
        assert gain.lo == pytest.approx(lo, abs=1e-12) and gain.hi == pytest.approx(hi, abs=1e-12)
        assert gain.positive_share == np.mean(np.array(slow[name]) > 0)
        images = list(per_image[name])
        assert gain.gain == pytest.approx(np.mean([per_image[name][i] - per_image["b"][i] for i in images]))
        for k, by_fold in enumerate(gain.by_fold):
            fold = [i for i in images if fold_of[i] == k]
            expected = np.mean([per_image[name][i] for i in fold]) - np.mean([per_image["b"][i] for i in fold])
            assert by_fold == pytest.approx(expected, abs=1e-12)


def test_resamples_are_paired_and_seeded():
    """An entry that is the baseline plus 0.01 on every image gains exactly 0.01 in every resample (the same
    cars for both); the baseline gains exactly 0; the same seed gives the same intervals."""
    per_image, fold_of = small_scores()
    per_image["shifted"] = {img: d + 0.01 for img, d in per_image["a"].items()}
    gains = paired_gains(per_image, "a", fold_of)
    assert gains["shifted"].lo == pytest.approx(0.01) and gains["shifted"].hi == pytest.approx(0.01)
    assert gains["shifted"].positive_share == 1.0
    assert gains["a"] == type(gains["a"])(0.0, 0.0, 0.0, 0.0, (0.0, 0.0))
    assert paired_gains(per_image, "a", fold_of) == gains
    assert paired_gains(per_image, "a", fold_of, seed=1)["b"] != gains["b"]


def test_car_counts():
    draws = np.array([[0, 0, 2], [1, 2, 0]])
    np.testing.assert_array_equal(car_counts(draws, 4), [[2, 1], [0, 1], [1, 1], [0, 0]])


def test_leaderboard_gain_columns(tmp_path):
    """Every row gets its gain over the best member (0 with interval [0, 0] for that member itself), after the
    fold columns; kept rows lose gains measured against an old best. (The chosen line: tests/test_choice.py.)"""
    per_image, fold_of = small_scores()
    folds = Folds(fold_of, 2, "hash")
    kinds = {"a": "member", "b": "member", "c": "blend"}
    scores = [EntryScore(name, kinds[name], 0.5, per_image[name], folds) for name in kinds]
    best = max(scores[:2], key=lambda s: s.oof_mean_dice)
    add_gains(scores)
    rows = write_leaderboard(tmp_path / "leaderboard.csv", scores)
    header = list(read_leaderboard(tmp_path / "leaderboard.csv")[0])
    assert header[:6] == ["entry", "kind", "oof_mean_dice", "threshold", "fold0", "fold1"]
    assert header[6:12] == GAIN_COLUMNS and header[12] == "angle01"
    gains = paired_gains(per_image, best.entry, fold_of)
    for row in rows:
        gain = gains[row["entry"]]
        assert row["gain_over"] == best.entry and float(row["gain"]) == pytest.approx(gain.gain, abs=1e-6)
        assert (float(row["gain_lo"]), float(row["gain_hi"])) == pytest.approx((gain.lo, gain.hi), abs=1e-6)
        assert [float(g) for g in row["gain_by_fold"].split("/")] == pytest.approx(gain.by_fold, abs=1e-6)
    member = next(r for r in rows if r["entry"] == best.entry)
    assert [member[c] for c in GAIN_COLUMNS[1:5]] == ["0.000000", "0.000000", "0.000000", "0.000"]
    rescored = EntryScore("a", "member", 0.5, per_image["a"], folds)  # as `fold-train` writes a member
    kept = write_leaderboard(tmp_path / "leaderboard.csv", [rescored], keep=lambda row: True)
    assert all(not r.get("gain_over") for r in kept)


def test_no_member_no_gains():
    per_image, fold_of = small_scores()
    scores = [EntryScore(name, "blend", 0.5, per_image[name], Folds(fold_of, 2, "hash")) for name in per_image]
    add_gains(scores)
    assert all(not s.extra for s in scores)
