"""How every network member turns photos into maps, whatever its framework:
resize only when the member's size differs from the photos', pad to the network's multiple, predict
whole or by tiles under each TTA view, undo the view, average, crop back.

A member whose `height` x `width` is the photos' size never resizes: 1918 is padded to 1920, not
stretched. `net` is the framework's part: (B, h, w, 3) uint8 -> (B, h, w) float32 probabilities.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from carvana.resize import resize_image, resize_proba
from zoo.geometry import crop_back, pad, predict_tiled
from zoo.spec import MemberSpec

SHIFT_PX = 8  # shift TTA: the photo moved this many px up and down (5th place's 6x TTA: hflip x 3 shifts)
Net = Callable[[np.ndarray], np.ndarray]


def tta_views(tta: tuple[str, ...]) -> list[tuple[bool, int]]:
    """(hflip, vertical shift in px) of every view: hflip doubles them, shift triples them."""
    flips = [False, True] if "hflip" in tta else [False]
    shifts = [0, SHIFT_PX, -SHIFT_PX] if "shift" in tta else [0]
    return [(flip, shift) for flip in flips for shift in shifts]


def predict_photos(net: Net, images: np.ndarray, spec: MemberSpec, batch_size: int) -> np.ndarray:
    """(N, H, W, 3) uint8 photos -> (N, H, W) float32 in [0, 1] for a member."""
    height, width = images.shape[1:3]
    resized = (height, width) != (spec.height, spec.width)
    if resized:
        images = np.stack([resize_image(np.asarray(im), spec.height, spec.width) for im in images])
    padded = pad(np.asarray(images), spec.multiple)
    views = tta_views(spec.predict.tta)
    total = np.zeros(padded.shape[:3], np.float32)
    for flip, shift in views:
        view = padded[:, :, ::-1] if flip else padded
        view = np.roll(view, shift, axis=1) if shift else view
        proba = _predict_view(net, np.ascontiguousarray(view), spec, batch_size)
        proba = np.roll(proba, -shift, axis=1) if shift else proba
        total += proba[:, :, ::-1] if flip else proba
    maps = crop_back(total / len(views), spec.height, spec.width, spec.multiple)
    if resized:
        maps = np.stack([resize_proba(m, height, width) for m in maps])
    return np.clip(maps, 0.0, 1.0)


def _predict_view(net: Net, images: np.ndarray, spec: MemberSpec, batch_size: int) -> np.ndarray:
    if spec.predict.tile is not None:
        return predict_tiled(net, images, spec.predict.tile, spec.predict.overlap, batch_size)
    return np.concatenate([net(images[start : start + batch_size]) for start in range(0, len(images), batch_size)])
