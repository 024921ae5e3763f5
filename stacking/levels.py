"""An entry's maps as the store's uint8 levels, without rounding a float map of every pixel.

The store keeps a map as levels, `oof.format.to_uint8(probabilities)` (x 255, rounded half to even). An entry
answers floats (`predict_proba`); rounding a 1918x1280 float map costs as much as a blend itself, and near
Dice 0.997 the members agree on almost every pixel (97% of a photo's pixels are unanimous for 7 members at
Carvana's accuracy). So an entry may also define `predict_levels(X: MapBatch) -> (n, H, W) uint8`, equal element
for element to `to_uint8` of its `predict_proba` (the entry contract test checks it); `predict_levels` below asks
for it where the entry has it and rounds `predict_proba` otherwise.

A pointwise entry (each pixel's probability a function of the members' levels at that pixel and the photo's
angle only: every blend and the tuned blend) gets its levels from `pointwise_levels`: its `predict_proba` is
asked for the 256 unanimous level tuples and for the pixels where the members disagree, nothing else. The
levels are those of `predict_proba` on the whole photo, byte for byte: the same float operations run on each
pixel's values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import cv2
import numpy as np

from oof.format import to_uint8
from stacking.maps import MapBatch

_ALL_LEVELS = np.arange(256, dtype=np.uint8)


def predict_levels(model: Any, X: MapBatch) -> np.ndarray:
    """(n, H, W) uint8: the fitted entry's `predict_levels(X)` where it has one, else its `predict_proba(X)`
    rounded as the store rounds it."""
    if hasattr(model, "predict_levels"):
        return model.predict_levels(X)
    return np.stack([to_uint8(proba, f"map of {img}") for img, proba in zip(X.ids, model.predict_proba(X))])


def pointwise_levels(predict_proba: Callable[[MapBatch], np.ndarray], X: MapBatch) -> np.ndarray:
    """(n, H, W) uint8 levels of a pointwise entry's `predict_proba` on X, image by image: a 256-entry table of
    the image's unanimous pixels (every member at one level, looked up by that level) and `predict_proba` on the
    pixels where the members disagree (X's `level_range`), each passed as a (1, M, 1, K) batch with the image's
    angle."""
    n, n_members, height, width = X.maps.shape
    out = np.empty((n, height, width), dtype=np.uint8)
    unanimous = np.broadcast_to(_ALL_LEVELS, (1, n_members, 1, 256))
    for i, (lowest, highest) in enumerate(zip(*X.level_range)):
        image = replace(X, maps=unanimous, ids=X.ids[i : i + 1], angles=X.angles[i : i + 1], truth=None)
        cv2.LUT(X.maps[i, 0], _levels(predict_proba, image), dst=out[i])  # every member at level v -> table[v]
        disagree = np.flatnonzero(lowest != highest)
        if disagree.size:
            pixels = np.take(X.maps[i].reshape(n_members, -1), disagree, axis=1)
            out[i].reshape(-1)[disagree] = _levels(predict_proba, replace(image, maps=pixels[None, :, None, :]))
    return out


def _levels(predict_proba: Callable[[MapBatch], np.ndarray], pixels: MapBatch) -> np.ndarray:
    """(K,) uint8 levels of one image's pixels given as a (1, M, 1, K) batch."""
    return to_uint8(predict_proba(pixels)[0], f"map of {pixels.ids[0]}")[0]
