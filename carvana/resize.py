"""Resizing photos, masks and probability maps between the photos' size and a model's or store's.

Only members whose size differs from the photos' come here: a member at the photos' own size pads
instead (`zoo.geometry`), so 1918 x 1280 is never stretched. Shrinking always uses area interpolation
(bilinear aliases at a 2.7x shrink); enlarging is bilinear.
"""

from __future__ import annotations

import cv2
import numpy as np


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (height, width, 3) uint8; area interpolation when shrinking."""
    if image.shape[:2] == (height, width):
        return image
    shrink = height < image.shape[0] or width < image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) uint8 0/1 -> (height, width) uint8 0/1: area-average, then majority."""
    if mask.shape == (height, width):
        return mask
    soft = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
    return (soft >= 0.5).astype(np.uint8)


def resize_proba(proba: np.ndarray, height: int, width: int) -> np.ndarray:
    """(h, w) float32 probabilities -> (height, width): area-averaged when shrinking, bilinear when
    enlarging (as the winners upsampled)."""
    if proba.shape == (height, width):
        return proba
    shrink = height < proba.shape[0] or width < proba.shape[1]
    return cv2.resize(proba, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
