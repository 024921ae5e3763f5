"""Ensemble selection: never worse than its best member on the folds it was fitted on, checked against the
slow obvious Dice; the inner folds cap the path; a member that fails gets no weight."""
from __future__ import annotations

import numpy as np
import pytest

from stacking.blenders import SelectedBlend, make_blender
from stacking.evaluate import brute_force_per_image
from stacking.maps import MapBatch, TrainMaps
from stacking.selection import greedy_path


def noisy_members(seed: int, n_images: int = 12, n_members: int = 4, shape: tuple[int, int] = (24, 32),
                  broken_fold: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """maps (N, M, H, W) uint8 of members of different quality around random box truths (N, H, W), folds (N,)."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((n_images, *shape), np.uint8)
    for i in range(n_images):
        top, left = rng.integers(2, 8), rng.integers(2, 10)
        truth[i, top:top + rng.integers(6, 14), left:left + rng.integers(8, 20)] = 1
    noise = rng.uniform(0.15, 0.45, n_members)
    maps = np.clip(truth[:, None] * 0.7 + 0.15 + rng.normal(0, 1, (n_images, n_members, *shape)) * noise[None, :,
                   None, None], 0, 1)
    fold = np.arange(n_images) % 3
    if broken_fold is not None:  # member 0 predicts noise in one fold (a collapsed fold model)
        maps[fold == broken_fold, 0] = rng.uniform(0, 1, maps[fold == broken_fold, 0].shape)
    return np.rint(maps * 255).astype(np.uint8), truth, fold


def member_scores(maps: np.ndarray, truth: np.ndarray, weights: np.ndarray | None = None) -> float:
    return float(brute_force_per_image(list(maps.transpose(1, 0, 2, 3)), truth, np.ones(len(truth), int), 0.5,
                                       weights).mean())


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("inner", [True, False])
def test_selection_never_worse_than_its_best_member_on_the_fitting_folds(seed, inner):
    maps, truth, fold = noisy_members(seed, broken_fold=seed % 3 if seed % 2 else None)
    train = TrainMaps.from_arrays(maps, truth, fold=fold)
    for fit_folds in ([0, 1], [1, 2], [0, 1, 2]):
        part = np.isin(fold, fit_folds)
        model = SelectedBlend(inner=inner).fit(train.folds(fit_folds))
        best_member = max(member_scores(maps[part][:, [m]], truth[part]) for m in range(maps.shape[1]))
        blend = model.predict_proba(MapBatch.of(maps[part]))
        selected = float(np.mean([2 * np.sum((b >= 0.5) & (t > 0)) / max(np.sum(b >= 0.5) + t.sum(), 1)
                                  for b, t in zip(blend, truth[part])]))
        assert model.score_ >= best_member - 1e-12
        assert selected == pytest.approx(model.score_, abs=2e-3)  # float blend vs the evaluator's weights
        assert model.weights_.sum() == pytest.approx(1) and np.all(model.weights_ >= 0)


def test_greedy_path_starts_at_the_best_member_and_scores_every_step_exactly():
    maps, truth, fold = noisy_members(3)
    train = TrainMaps.from_arrays(maps, truth, fold=fold)
    view = train.evaluator()
    path = greedy_path(view.folded, view.folds, max_steps=12)
    assert len(path.counts) == 13 and np.array_equal(path.counts.sum(axis=1), np.arange(1, 14))
    singles = [member_scores(maps[:, [m]], truth) for m in range(maps.shape[1])]
    assert path.scores[0] == pytest.approx(max(singles), abs=1e-12)
    assert np.array_equal(path.counts[0], np.eye(maps.shape[1], dtype=int)[int(np.argmax(singles))])
    for counts, score in zip(path.counts, path.scores):
        assert score == pytest.approx(member_scores(maps, truth, counts), abs=1e-12)
    assert all(path.scores[path.best_within(s)] == path.scores[:s + 1].max() for s in range(13))


def test_a_useless_member_gets_no_weight():
    maps, truth, fold = noisy_members(5)
    maps[:, 2] = 255 - maps[:, 2]  # an inverted member: wrong everywhere
    model = make_blender("selected").fit(TrainMaps.from_arrays(maps, truth, fold=fold))
    assert model.weights_[2] == 0
