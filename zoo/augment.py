"""Augmentation of image and mask together, after R1 and R2: horizontal flip, small shift / scale /
rotate / shear, HSV and brightness jitter. No vertical flips or 90-degree turns: studio photos
always have the floor at the bottom."""

from __future__ import annotations

import albumentations as A
import cv2


def build_augment(seed: int) -> A.Compose:
    """A seeded albumentations pipeline taking `image` (H, W, 3) uint8 and `mask` (H, W) uint8."""
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.Affine(
                scale=(0.9, 1.1),
                translate_percent=(-0.0625, 0.0625),
                rotate=(-5, 5),
                shear=(-3, 3),
                border_mode=cv2.BORDER_REPLICATE,
                p=0.7,
            ),
            A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=15, p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        ],
        seed=seed,
    )
