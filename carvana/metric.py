"""The competition metric: mean over images of per-image Dice."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice = 2|X and Y| / (|X| + |Y|) of two (H, W) masks (non-zero = car); 1.0 when both are empty."""
    pred = np.asarray(pred).astype(bool, copy=False)
    truth = np.asarray(truth).astype(bool, copy=False)
    if pred.shape != truth.shape:
        raise ValueError(f"dice: shapes differ, {pred.shape} vs {truth.shape}")
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(truth))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & truth)) / total


def mean_dice(preds: Iterable[np.ndarray], truths: Iterable[np.ndarray]) -> float:
    """Mean of per-image Dice over paired sequences of masks (not the Dice of pooled pixels)."""
    scores = [dice(p, t) for p, t in zip(preds, truths, strict=True)]
    if not scores:
        raise ValueError("mean_dice: no images")
    return float(np.mean(scores))
