"""What one member x fold trains and predicts on: cached arrays and three disjoint sets of cars.

- `train_idx`: images of the training folds, minus the validation cars;
- `val_idx`: a seeded ~15% of the training folds' cars, for early stopping, LR plateau and the
  best checkpoint (the OOF fold is never used to select anything, so OOF scores stay honest);
- `oof_idx`: the held-out fold, predicted once at the end;
- `pseudo` (optional): fold k's pseudo-labelled test photos (`zoo.pseudo`), mixed into the training batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from carvana.dataset import angle_of, car_of
from folds import Folds
from oof.format import CAR_LEVEL

VAL_CAR_SHARE = 0.15


@dataclass(frozen=True)
class PseudoData:
    """Pseudo-labelled test photos for one fold's training, at the member's size."""

    images: np.ndarray  # (P, h, w, 3) uint8, usually a memmap
    levels: np.ndarray  # (P, h, w) uint8 label levels: probability x 255 of the fold's source models
    labels: str  # hard: car where level >= 128 | soft: level / 255
    ignore: tuple[float, float] | None  # labels strictly inside this band are left out of the loss; None = none
    share: float  # each batch holds at most this share of pseudo-labelled photos

    def target_and_weight(self, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(target, weight) float32 maps of (augmented) label levels: weight 0 where the label is uncertain."""
        proba = levels.astype(np.float32) / 255
        target = (levels >= CAR_LEVEL).astype(np.float32) if self.labels == "hard" else proba
        if self.ignore is None:
            return target, np.ones_like(proba)
        low, high = self.ignore
        return target, (~((proba > low) & (proba < high))).astype(np.float32)


def mixed_batches(n_real: int, n_pseudo: int, batch_size: int, share: float, seed: int) -> list[list[int]]:
    """One epoch's batches of sample indices: real samples 0..n_real-1 each once, shuffled; pseudo samples
    n_real.. drawn in shuffled rounds, floor(share x batch_size) of them (at most batch_size - 1) per batch."""
    rng = np.random.default_rng(seed)
    per_batch = min(int(share * batch_size), batch_size - 1) if n_pseudo else 0
    real = rng.permutation(n_real)
    n_batches = math.ceil(n_real / (batch_size - per_batch))
    rounds = math.ceil(n_batches * per_batch / n_pseudo) if per_batch else 0
    pseudo = np.concatenate([n_real + rng.permutation(n_pseudo) for _ in range(rounds)] or [np.zeros(0, int)])
    step = batch_size - per_batch
    return [
        [*real[b * step : (b + 1) * step].tolist(), *pseudo[b * per_batch : (b + 1) * per_batch].tolist()]
        for b in range(n_batches)
    ]


@dataclass(frozen=True)
class FoldData:
    fold: int
    ids: list[str]  # every training image id, in the order of the cached arrays
    images: np.ndarray  # (N, h, w, 3) uint8, usually a memmap
    masks: np.ndarray  # (N, h, w) uint8 0/1
    train_idx: np.ndarray
    val_idx: np.ndarray
    oof_idx: np.ndarray
    pseudo: PseudoData | None = None

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
