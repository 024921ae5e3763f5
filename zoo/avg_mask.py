"""R2's average-mask baseline: one mean training mask per angle (16), and no image is looked at.

Its fold "training" saves the means (`avg_mask.npy`, (16, h, w) float32); several folds' means are averaged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from carvana.atomic import atomic_path
from carvana.dataset import N_ANGLES
from carvana.resize import resize_proba
from zoo.fold_data import FoldData
from zoo.spec import MemberSpec


class AvgMaskMember:
    """The mean masks of one or more folds, resized to the photos asked about."""

    def __init__(self, spec: MemberSpec, checkpoint_paths: list[Path]) -> None:
        self.spec = spec
        self.means = np.mean([np.load(p) for p in checkpoint_paths], axis=0)  # (16, h, w) float32

    def predict_proba(self, images: np.ndarray, angles: np.ndarray | None = None) -> np.ndarray:
        height, width = images.shape[1:3]
        if angles is None:  # angle unknown: the mean over all angles
            maps = [self.means.mean(axis=0)] * len(images)
        else:
            maps = [self.means[angle - 1] for angle in angles]
        return np.stack([resize_proba(m, height, width) for m in maps])


def fit_avg_mask(masks: np.ndarray, angles: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """(16, h, w) float32 mean mask per angle over `indices` (the overall mean for an absent angle)."""
    overall = masks[indices].mean(axis=0, dtype=np.float64)
    means = []
    for angle in range(1, N_ANGLES + 1):
        chosen = indices[angles[indices] == angle]
        means.append(masks[chosen].mean(axis=0, dtype=np.float64) if chosen.size else overall)
    return np.stack(means).astype(np.float32)


def train_avg_mask(
    spec: MemberSpec, data: FoldData, work_dir: Path, progress: bool = True, board_dir: Path | None = None
) -> Path:
    """`work_dir/avg_mask.npy`: the means over the fold's training and validation photos (nothing to
    validate, no progress to show, no curves to draw)."""
    path = work_dir / "avg_mask.npy"
    with atomic_path(path) as tmp:
        np.save(tmp, fit_avg_mask(data.masks, data.angles, np.concatenate([data.train_idx, data.val_idx])))
    return path
