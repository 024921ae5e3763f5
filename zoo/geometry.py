"""Photo geometry without resizing, shared by both training loops and every member's prediction:
padding to the network's multiple and cropping back, random training crops, and the tile grid with
its smooth blending window (after albu's `pad_image`, 4th place's pad/unpad and 31st's tiles).

Framework-free (NumPy only), so the Keras and PyTorch members use the same rules.
"""

from __future__ import annotations

import numpy as np


def padded_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """(H, W) rounded up to the next multiple of `multiple` (1920 for 1918 at 32)."""
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


def pad_box(height: int, width: int, multiple: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) padding that centres an (H, W) photo in its padded size."""
    padded_h, padded_w = padded_size(height, width, multiple)
    top, left = (padded_h - height) // 2, (padded_w - width) // 2
    return top, padded_h - height - top, left, padded_w - width - left


def pad(arrays: np.ndarray, multiple: int, image_axes: tuple[int, int] = (1, 2)) -> np.ndarray:
    """Pad the two `image_axes` of `arrays` ((N, H, W[, 3]) by default) to `multiple`, mirrored.

    Returns the input itself when nothing needs padding."""
    height, width = arrays.shape[image_axes[0]], arrays.shape[image_axes[1]]
    top, bottom, left, right = pad_box(height, width, multiple)
    if not (top or bottom or left or right):
        return arrays
    widths = [(0, 0)] * arrays.ndim
    widths[image_axes[0]], widths[image_axes[1]] = (top, bottom), (left, right)
    # "reflect" mirrors without repeating the edge pixel (OpenCV's BORDER_REFLECT_101), as albu padded
    return np.pad(arrays, widths, mode="reflect")


def crop_back(maps: np.ndarray, height: int, width: int, multiple: int) -> np.ndarray:
    """(N, H', W') maps of padded photos -> (N, height, width): the inverse of `pad`."""
    top, _, left, _ = pad_box(height, width, multiple)
    return maps[:, top : top + height, left : left + width]


def random_crop(
    image: np.ndarray, mask: np.ndarray, crop: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The same random (h, w) window of an (H, W, 3) image and its (H, W) mask."""
    crop_h, crop_w = crop
    top = int(rng.integers(0, image.shape[0] - crop_h + 1))
    left = int(rng.integers(0, image.shape[1] - crop_w + 1))
    return image[top : top + crop_h, left : left + crop_w], mask[top : top + crop_h, left : left + crop_w]


def training_pair(
    image: np.ndarray, mask: np.ndarray, multiple: int, crop: tuple[int, int] | None, augment, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One training sample: augmented at the photo's size, padded (image and mask mirrored alike),
    then a random crop when `crop` is set. (H, W, 3) uint8, (H, W) uint8 -> padded or cropped."""
    if augment is not None:
        out = augment(image=image, mask=mask)
        image, mask = out["image"], out["mask"]
    image, mask = pad(image[None], multiple)[0], pad(mask[None], multiple)[0]
    if crop is not None:
        image, mask = random_crop(image, mask, crop, rng)
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` px covering `length` px, overlapping by at least `overlap`;
    the last tile ends at the edge."""
    if tile >= length:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def blend_window(tile_h: int, tile_w: int, overlap: int) -> np.ndarray:
    """(tile_h, tile_w) float32 weights: 1 inside, a raised-cosine ramp over `overlap` px at each
    edge (never 0), so a tile's border pixels, where the network sees least context, count least."""

    def ramp(length: int) -> np.ndarray:
        weights = np.ones(length, np.float32)
        n = min(overlap, length // 2)
        if n > 0:
            edge = (0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)).astype(np.float32)
            weights[:n], weights[length - n :] = edge, edge[::-1]
        return weights

    return np.outer(ramp(tile_h), ramp(tile_w))


def predict_tiled(net, images: np.ndarray, tile: tuple[int, int], overlap: int, batch_size: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, H, W) float32: `net` ((B, h, w, 3) uint8 -> (B, h, w) float32) on
    overlapping tiles, blended with `blend_window`. Tiles larger than the photo shrink to it."""
    n, height, width = images.shape[:3]
    tile_h, tile_w = min(tile[0], height), min(tile[1], width)
    window = blend_window(tile_h, tile_w, overlap)
    corners = [(y, x) for y in tile_starts(height, tile_h, overlap) for x in tile_starts(width, tile_w, overlap)]
    total = np.zeros((n, height, width), np.float32)
    weight = np.zeros((height, width), np.float32)
    for y, x in corners:
        weight[y : y + tile_h, x : x + tile_w] += window
    jobs = [(i, y, x) for i in range(n) for y, x in corners]
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        probas = net(np.stack([images[i, y : y + tile_h, x : x + tile_w] for i, y, x in chunk]))
        for (i, y, x), proba in zip(chunk, probas):
            total[i, y : y + tile_h, x : x + tile_w] += proba * window
    return total / weight
