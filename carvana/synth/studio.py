"""The bright studio around the car: wall and floor gradients, horizon line, soft shadow, lens and sensor.

Backgrounds, vignetting and noise tiles depend only on the image size, so they are cached per size.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

from carvana.synth.camera import Camera, to_fixed

WALL_TOP, WALL_LOW = 238.0, 229.0  # grey level of the wall at the top and at the horizon
FLOOR_FAR, FLOOR_NEAR = 214.0, 232.0  # floor at the horizon and at the bottom edge
HORIZON_DIP = 10.0  # how much darker the wall/floor seam is
VIGNETTE = 0.10  # brightness lost in the corners
NOISE_SIGMA = 1.8  # sensor noise, grey levels
EXPOSURE = (0.97, 1.02)  # per-photo exposure gain
SHADOW_BROAD, SHADOW_CONTACT = 0.30, 0.45  # darkening under the car body and under the tyres


@lru_cache(maxsize=4)
def studio_background(size: tuple[int, int], zoom: float = 1.0) -> np.ndarray:
    """(H, W, 3) uint8 empty studio for `size` (W, H) seen through a camera of `zoom`; read-only (cached)."""
    width, height = size
    horizon = Camera(size, zoom).horizon_v()
    rows = np.arange(height, dtype=np.float32)[:, None]
    cols = (np.arange(width, dtype=np.float32)[None, :] - width / 2) / width
    t_wall = np.clip(rows / max(horizon, 1.0), 0, 1)
    wall = WALL_TOP + (WALL_LOW - WALL_TOP) * t_wall
    t_floor = np.clip((rows - horizon) / max(height - horizon, 1.0), 0, 1)
    floor = FLOOR_FAR + (FLOOR_NEAR - FLOOR_FAR) * np.sqrt(t_floor)
    grey = np.where(rows < horizon, wall, floor) - 6.0 * cols**2
    seam = HORIZON_DIP * np.exp(-0.5 * ((rows - horizon) / max(1.5, height * 0.004)) ** 2)
    grey = grey - seam
    tint = np.array([0.995, 1.0, 1.012], dtype=np.float32)  # a slightly cool studio
    image = np.clip(grey[:, :, None] * tint, 0, 255).astype(np.uint8)
    image.flags.writeable = False
    return image


@lru_cache(maxsize=4)
def _vignette(size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 brightness multiplier x 255 (255 in the centre)."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r2 = ((x - width / 2) / (width / 2)) ** 2 + ((y - height / 2) / (height / 2)) ** 2
    gain = (1.0 - VIGNETTE * r2 / 2) * 255
    out = np.repeat(np.clip(gain, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    out.flags.writeable = False
    return out


@lru_cache(maxsize=4)
def _noise_tile(size: tuple[int, int]) -> np.ndarray:
    """(H + 64, W + 64, 3) int16 Gaussian noise; each image reads it at a random offset."""
    width, height = size
    rng = np.random.default_rng(1918)
    tile = np.round(rng.normal(0.0, NOISE_SIGMA, size=(height + 64, width + 64, 3))).astype(np.int16)
    tile.flags.writeable = False
    return tile


def shadow_gain(camera: Camera, footprint: np.ndarray, contacts: list[np.ndarray]) -> np.ndarray:
    """(H, W) float32 multiplier <= 1 darkening the floor under the car.

    footprint: (K, 3) world polygon on the floor under the body; contacts: (K, 3) polygons under
    the tyres. Drawn and blurred at a quarter of the size (a soft shadow has no detail), then scaled up.
    """
    width, height = camera.size
    small = (max(8, width // 4), max(8, height // 4))
    scale = np.array([small[0] / width, small[1] / height])
    broad = np.zeros(small[::-1], np.float32)
    contact = np.zeros(small[::-1], np.float32)
    cv2.fillPoly(broad, [to_fixed(camera.project(footprint)[0] * scale)], 1.0, cv2.LINE_AA, 4)
    cv2.fillPoly(contact, [to_fixed(camera.project(p)[0] * scale) for p in contacts], 1.0, cv2.LINE_AA, 4)
    broad = cv2.GaussianBlur(broad, (0, 0), max(1.0, small[0] * 0.02))
    contact = cv2.GaussianBlur(contact, (0, 0), max(0.6, small[0] * 0.005))
    gain = 1.0 - SHADOW_BROAD * broad - SHADOW_CONTACT * contact
    return cv2.resize(np.clip(gain, 0.0, 1.0), (width, height), interpolation=cv2.INTER_LINEAR)


def apply_gain(image: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 image times an (H, W) float32 gain, computed only where the gain is below 1."""
    rows, cols = np.nonzero(gain < 0.998)
    out = image.copy()
    if rows.size == 0:
        return out
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    patch = out[r0:r1, c0:c1].astype(np.float32) * gain[r0:r1, c0:c1, None]
    out[r0:r1, c0:c1] = np.clip(patch, 0, 255).astype(np.uint8)
    return out


def finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Lens and sensor: slight softness, exposure, vignetting and noise. (H, W, 3) uint8 -> same."""
    height, width = image.shape[:2]
    soft = cv2.GaussianBlur(image, (0, 0), 0.55)
    exposure = float(rng.uniform(*EXPOSURE))
    vignetted = cv2.multiply(soft, _vignette((width, height)), scale=exposure / 255)
    tile = _noise_tile((width, height))
    dy, dx = (int(v) for v in rng.integers(0, 64, size=2))
    noisy = vignetted.astype(np.int16) + tile[dy : dy + height, dx : dx + width]
    return np.clip(noisy, 0, 255).astype(np.uint8)
