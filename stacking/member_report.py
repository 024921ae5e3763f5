"""What the members contribute to the stack: per-fold Dice with collapsed folds flagged, pairwise error
correlation of their OOF maps, the selection weights and each member's leave-one-out effect on the blend.

A member's fold has collapsed when its Dice there is more than `COLLAPSE_DROP` below the member's worst
other fold: each fold's OOF maps come from a different model, and a stacker fitted on the other folds
learns to trust a member that then fails (the failure this report makes visible at a glance).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from oof.format import CAR_LEVEL
from stacking.evaluate import FoldsView
from stacking.maps import TrainMaps

COLLAPSE_DROP = 0.03


def collapsed_folds(fold_dice: Mapping[str, Sequence[float]], drop: float = COLLAPSE_DROP) -> list[tuple[str, int]]:
    """[(member, fold)] whose fold Dice is more than `drop` below the member's worst other fold.

    fold_dice: {member: Dice of fold 0, 1, ...}."""
    found = []
    for member, scores in fold_dice.items():
        for k, score in enumerate(scores):
            others = [s for j, s in enumerate(scores) if j != k]
            if others and score < min(others) - drop:
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
