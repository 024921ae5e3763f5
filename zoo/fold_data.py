"""What one member x fold trains and predicts on: cached arrays and three disjoint sets of cars.

- `train_idx`: images of the training folds, minus the validation cars;
- `val_idx`: a seeded ~15% of the training folds' cars, for early stopping, LR plateau and the
  best checkpoint (the OOF fold is never used to select anything, so OOF scores stay honest);
- `oof_idx`: the held-out fold, predicted once at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from carvana.dataset import angle_of, car_of
from folds import Folds

VAL_CAR_SHARE = 0.15


@dataclass(frozen=True)
class FoldData:
    fold: int
    ids: list[str]  # every training image id, in the order of the cached arrays
    images: np.ndarray  # (N, h, w, 3) uint8, usually a memmap
    masks: np.ndarray  # (N, h, w) uint8 0/1
    train_idx: np.ndarray
    val_idx: np.ndarray
    oof_idx: np.ndarray

    @property
    def angles(self) -> np.ndarray:
        """(N,) int angle 1..16 of every image."""
        return np.array([angle_of(img) for img in self.ids])


def split_fold(ids: list[str], folds: Folds, fold: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train_idx, val_idx, oof_idx) positions into `ids` for `fold`; validation cars are seeded."""
    cars = np.array([car_of(img) for img in ids])
    in_fold = np.array([folds.fold_of[img] == fold for img in ids])
    train_cars = sorted(set(cars[~in_fold]))
    rng = np.random.default_rng(seed + 7919 * fold)
    n_val = max(1, math.ceil(VAL_CAR_SHARE * len(train_cars)))
    val_cars = set(rng.choice(train_cars, size=n_val, replace=False).tolist())
    is_val = np.isin(cars, list(val_cars))
    return np.flatnonzero(~in_fold & ~is_val), np.flatnonzero(is_val), np.flatnonzero(in_fold)
