"""What the members contribute to the stack: per-fold Dice with collapsed folds flagged, pairwise error
correlation of their OOF maps, the selection weights and each member's leave-one-out effect on the blend.

A member's fold has collapsed when its errors there (1 - Dice) are more than `COLLAPSE_RATIO` times those of the
member's worst other fold (and its Dice at least `COLLAPSE_MIN_DROP` lower): each fold's OOF maps come from a
different model, and a stacker fitted on the other folds learns to trust a member that then fails (the failure
this report makes visible at a glance). The rule is a ratio of errors so that it holds at any accuracy: at 0.997
a fold model at 0.983 has failed (3x the errors, `bench.regime`'s failed-fold set) though it is only 0.011 below
its siblings, while at 0.80 a fold 0.03 lower is the noise of a weak member (1.2x). On the benches' runs (5 regime
sets, 5 robustness datasets: 195 member folds) a healthy member's folds reach 1.36x its worst other fold's errors,
and the failed ones (the regime set's failed fold, the demo-size linknet, simple_cnn and a keras fold 0) 1.62x
to 2.96x.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from oof.format import CAR_LEVEL
from stacking.evaluate import FoldsView
from stacking.maps import TrainMaps

COLLAPSE_RATIO = 1.5  # a fold's errors over those of the member's worst other fold
COLLAPSE_MIN_DROP = 0.001  # and its Dice this far below it at least: two near-zero errors' ratio is noise


def collapsed_folds(fold_dice: Mapping[str, Sequence[float]]) -> list[tuple[str, int]]:
    """[(member, fold)] whose fold's errors (1 - Dice) exceed `COLLAPSE_RATIO` times the member's worst other
    fold's, with a Dice at least `COLLAPSE_MIN_DROP` below it.

    fold_dice: {member: Dice of fold 0, 1, ...}."""
    found = []
    for member, scores in fold_dice.items():
        for k, score in enumerate(scores):
            others = [s for j, s in enumerate(scores) if j != k]
            if others and min(others) - score >= COLLAPSE_MIN_DROP and 1 - score > COLLAPSE_RATIO * (1 - min(others)):
                found.append((member, k))
    return found


def error_correlation(train: TrainMaps) -> np.ndarray:
    """(M, M) float64 Pearson correlation over all OOF pixels of the members' error indicators
    (map >= 128 differs from the truth), streamed; 0 where a member makes no error (or only errors)."""
    n_members = train.n_members
    sums, products, n = np.zeros(n_members), np.zeros((n_members, n_members)), 0
    for maps, truth, _ in train.images():  # one image at a time: M x H x W floats at most
        errors = ((maps >= CAR_LEVEL) != (truth > 0)).reshape(n_members, -1).astype(np.float32)
        sums += errors.sum(axis=1)
        products += errors @ errors.T
        n += errors.shape[1]
    mean = sums / max(n, 1)
    covariance = products / max(n, 1) - np.outer(mean, mean)
    scale = np.sqrt(np.clip(np.diag(covariance), 0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        correlation = np.where(np.outer(scale, scale) > 0, covariance / np.outer(scale, scale), 0.0)
    np.fill_diagonal(correlation, 1.0)
    return correlation


def leave_one_out(view: FoldsView, weights: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(M,) float64: the blend's mean Dice with `weights` minus its Dice with member m's weight removed (the
    others renormalised); 0 for members without weight. Positive: the member helps the blend."""
    full = view.score(threshold, weights)
    effect = np.zeros(len(weights))
    for m in np.flatnonzero(weights):
        rest = weights.copy()
        rest[m] = 0
        if rest.sum() > 0:
            effect[m] = full - view.score(threshold, rest / rest.sum())
    return effect
