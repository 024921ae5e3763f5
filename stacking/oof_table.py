"""The members' maps as a stacker sees them: per train image, the M members' OOF maps with the
truth, the image's fold and angle; per test image, the M members' test maps.

Maps are (H, W) uint8 probability x 255 at the store's resolution; truths are 0/1 at the same
resolution (area-averaged then thresholded at 0.5 when the store is smaller than the photos).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from carvana.dataset import CarvanaData, angle_of
from carvana.resize import resize_mask
from carvana.rle import rle_decode
from folds import Folds
from oof import Store


def truth_at(rle: str, native_hw: tuple[int, int], resolution: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 0/1 truth of an RLE at the store's `resolution` (H, W)."""
    return resize_mask(rle_decode(rle, native_hw), *resolution)


@dataclass
class OofTable:
    """The train images' member maps, truths, folds and angles, read from the store."""

    members: list[str]
    ids: list[str]
    fold: np.ndarray  # (N,) int
    angle: np.ndarray  # (N,) int 1..16
    maps: np.ndarray  # (N, M, H, W) uint8
    truth: np.ndarray  # (N, H, W) uint8 0/1

    @classmethod
    def load(cls, store: Store, members: list[str], data: CarvanaData, folds: Folds,
             native_hw: tuple[int, int]) -> OofTable:
        ids = sorted(folds.fold_of)
        resolution = store.resolution(members[0])
        maps = np.stack([store.read_many(m, "train", ids) for m in members], axis=1)
        truth = np.stack([truth_at(data.train_rles[img], native_hw, resolution) for img in ids])
        return cls(members, ids, np.array([folds.fold_of[i] for i in ids]), np.array([angle_of(i) for i in ids]),
                   maps, truth)

    def select(self, folds: list[int]) -> np.ndarray:
        """Positions of the images in `folds`."""
        return np.flatnonzero(np.isin(self.fold, folds))


def test_maps(store: Store, members: list[str], ids: list[str]) -> np.ndarray:
    """(n, M, H, W) uint8: the members' test maps of `ids` (call it chunk by chunk)."""
    return np.stack([store.read_many(m, "test", ids) for m in members], axis=1)
