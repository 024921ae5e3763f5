"""Turn a view's true coverage layers into the mask one car's annotator would have drawn."""

from __future__ import annotations

import cv2
import numpy as np

from carvana.dataset import KAGGLE_SIZE
from carvana.synth.catalog import AnnotationPolicy
from carvana.synth.render import Layers

FULL_WIDTH = KAGGLE_SIZE[0]  # Kaggle's image width: jitter amplitudes are stated at this width
MIN_JITTER_PX = 0.35  # below this (small images) a wobble would not move any pixel


def annotate(layers: Layers, policy: AnnotationPolicy, rng: np.random.Generator) -> np.ndarray:
    """(H, W) uint8 0/1 mask: solid parts, plus thin parts and whole wheel discs if the policy says so,
    with the outline wobbled when the policy has jitter."""
    mask = layers.solid.copy()
    if policy.include_thin_parts:
        mask |= layers.thin
    if policy.fill_spoke_gaps:
        mask |= layers.wheel_discs
    if policy.jitter_px > 0:
        mask = jitter_outline(mask, policy.jitter_px * mask.shape[1] / FULL_WIDTH, rng)
    return mask.astype(np.uint8)


def jitter_outline(mask: np.ndarray, scale_px: float, rng: np.random.Generator) -> np.ndarray:
    """(H, W) bool mask with its outline moved in and out smoothly by about `scale_px` pixels.

    The mask is blurred with sigma = scale_px and cut at a threshold that wanders slowly along the
    image (smooth noise), like a hand that is steady but not exact. Only the mask's bounding box
    (plus a margin) is touched.
    """
    if scale_px < MIN_JITTER_PX or not mask.any():
        return mask
    rows, cols = np.nonzero(mask)
    margin = int(np.ceil(4 * scale_px)) + 2
    height, width = mask.shape
    r0, r1 = max(rows.min() - margin, 0), min(rows.max() + 1 + margin, height)
    c0, c1 = max(cols.min() - margin, 0), min(cols.max() + 1 + margin, width)
    patch = mask[r0:r1, c0:c1].astype(np.float32)
    blurred = cv2.GaussianBlur(patch, (0, 0), scale_px)
    cell = max(4.0, 12 * scale_px)  # the wobble's wavelength
    coarse = rng.standard_normal((int((r1 - r0) / cell) + 2, int((c1 - c0) / cell) + 2)).astype(np.float32)
    wander = cv2.resize(coarse, (c1 - c0, r1 - r0), interpolation=cv2.INTER_CUBIC)
    threshold = np.clip(0.5 + 0.22 * wander, 0.15, 0.85)
    out = mask.copy()
    out[r0:r1, c0:c1] = blurred > threshold
    return out
