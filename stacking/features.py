"""Per-pixel features for the learned stackers, the uncertain band, and the bounded training sample.

Everything works on one image at a time: maps (M, H, W) uint8 levels (probability x 255), its angle
1..16, and the flat row-major indices (K,) of the pixels wanted. `pixel_features` returns (K, F)
float32 (F-ordered), F = 2M + 9 columns in this order:

| columns | name | value |
|---|---|---|
| 0 .. M-1 | `p_<m>` | member m's probability, level / 255 |
| M .. 2M-1 | `logit_<m>` | log(p / (1 - p)), p clipped to [1/510, 1 - 1/510] (half a level), so abs <= 6.23 |
| 2M | `mean` | the members' mean probability |
| 2M+1 | `std` | the members' standard deviation (ddof 0): their disagreement |
| 2M+2, 2M+3 | `min`, `max` | the members' extreme probabilities |
| 2M+4, 2M+5 | `context_small`, `context_large` | box means of the member-mean map over k x k, k = `window_sides(H)` |
| 2M+6, 2M+7 | `y`, `x` | (row + 0.5) / H and (col + 0.5) / W |
| 2M+8 | `angle` | the image's angle 1..16 as a number (LightGBM: categorical; logistic: one-hot) |

`member_features` marks the first 2M columns, each member's own belief: the ones LightGBM is held monotone in
(`PixelStacker(monotone=True)`).

Context uses `cv2.blur` with its default reflect-101 border; windows are 5 and 17 px at 640 px tall, scaled.

The uncertain band (`band_mask`): a pixel is decided by consensus when every member's probability is
<= lo or every member's is >= hi, compared exactly on levels (level <= lo x 255, level >= hi x 255 in
rationals); every other pixel is in the band, the only pixels a stacker learns from and predicts.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sized
from dataclasses import dataclass
from fractions import Fraction

import cv2
import numpy as np

from carvana.dataset import N_ANGLES
from oof.format import to_uint8

REFERENCE_HEIGHT = 640  # the context windows are 5 and 17 px at this height and scale with the image
CONTEXT_SIDES = (5, 17)
_LEVELS = np.arange(256, dtype=np.float64) / 255
PROBABILITY_OF_LEVEL = _LEVELS.astype(np.float32)
_CLIPPED = np.clip(_LEVELS, 1 / 510, 1 - 1 / 510)
LOGIT_OF_LEVEL = np.log(_CLIPPED / (1 - _CLIPPED)).astype(np.float32)


def feature_names(n_members: int) -> list[str]:
    """The F = 2M + 9 column names, in `pixel_features` order."""
    return (
        [f"p_{m}" for m in range(n_members)]
        + [f"logit_{m}" for m in range(n_members)]
        + ["mean", "std", "min", "max", "context_small", "context_large", "y", "x", "angle"]
    )


def member_features(n_members: int) -> list[int]:
    """(F,) 1 for each member's own probability and logit, 0 for the other features, in `feature_names` order (the
    monotone directions of `PixelStacker(monotone=True)`)."""
    return [int(name.startswith(("p_", "logit_"))) for name in feature_names(n_members)]


def window_sides(height: int) -> tuple[int, int]:
    """Odd sides (small, large) of the context windows for an image `height` px tall.

    5 and 17 px at 640 px, scaled; small >= 3 and large >= 3 x small, so tiny test images still see
    two distinct scales.
    """

    def odd(x: float) -> int:
        return 2 * int(x // 2) + 1

    small = max(3, odd(CONTEXT_SIDES[0] * height / REFERENCE_HEIGHT))
    return small, max(3 * small, odd(CONTEXT_SIDES[1] * height / REFERENCE_HEIGHT))


def band_levels(lo: float, hi: float) -> tuple[int, int]:
    """(lo_level, hi_level): consensus is max level <= lo_level or min level >= hi_level."""
    if not 0 <= lo < 0.5 < hi <= 1:
        raise ValueError(f"need 0 <= lo < 0.5 < hi <= 1, got lo={lo}, hi={hi}")
    return math.floor(Fraction(lo) * 255), math.ceil(Fraction(hi) * 255)


def band_mask(maps: np.ndarray, lo_level: int, hi_level: int) -> np.ndarray:
    """(H, W) bool: True where the members do not agree with confidence (see the module docstring)."""
    return band_of_range(maps.min(axis=0), maps.max(axis=0), lo_level, hi_level)


def band_of_range(lowest: np.ndarray, highest: np.ndarray, lo_level: int, hi_level: int) -> np.ndarray:
    """`band_mask` from the members' lowest and highest level at each pixel (a batch's `level_range`)."""
    return (highest > lo_level) & (lowest < hi_level)


def level_sum(maps: np.ndarray) -> np.ndarray:
    """(H, W) exact integer sum of maps (M, H, W) uint8 over the members (uint16 up to 257 members)."""
    return maps.sum(axis=0, dtype=np.uint16 if maps.shape[0] <= 257 else np.uint32)


def member_mean(maps: np.ndarray, total: np.ndarray | None = None) -> np.ndarray:
    """(H, W) float32 mean probability of maps (M, H, W) uint8, from the exact integer level sum (`total`:
    its `level_sum` if already computed)."""
    total = level_sum(maps) if total is None else total
    return total.astype(np.float32) * np.float32(1 / (255 * maps.shape[0]))


@functools.lru_cache(maxsize=16)
def mean_levels(n_members: int) -> np.ndarray:
    """(255 M + 1,) uint8: the store's level of `member_mean` for each level sum of M members, so that
    mean_levels(M)[level_sum(maps)] == to_uint8(member_mean(maps)) without a float map."""
    sums = np.arange(255 * n_members + 1)[None]
    return to_uint8(sums.astype(np.float32) * np.float32(1 / (255 * n_members)), "members' mean")[0]


def check_image(maps: np.ndarray, angle: int, n_members: int | None = None) -> None:
    """ValueError unless maps is (M, H, W) uint8 with the expected M and angle is in 1..16."""
    if maps.dtype != np.uint8 or maps.ndim != 3:
        raise ValueError(f"maps must be (M, H, W) uint8 levels, got {maps.shape} {maps.dtype}")
    if n_members is not None and maps.shape[0] != n_members:
        raise ValueError(f"maps have {maps.shape[0]} members, expected {n_members}")
    if not 1 <= int(angle) <= N_ANGLES:
        raise ValueError(f"angle must be in 1..{N_ANGLES}, got {angle}")


def pixel_features(maps: np.ndarray, angle: int, index: np.ndarray, mean: np.ndarray | None = None) -> np.ndarray:
    """(K, F) float32 features of the pixels at flat indices `index` (K,) of one image.

    maps: (M, H, W) uint8; mean: the image's `member_mean` if already computed (it is blurred whole).
    """
    n_members, height, width = maps.shape
    mean = member_mean(maps) if mean is None else mean
    values = maps.reshape(n_members, -1)[:, index]  # (M, K) uint8
    out = np.empty((2 * n_members + 9, index.size), dtype=np.float32)  # filled row by row, returned .T
    probabilities = out[:n_members]
    np.take(PROBABILITY_OF_LEVEL, values, out=probabilities)
    np.take(LOGIT_OF_LEVEL, values, out=out[n_members : 2 * n_members])
    c = 2 * n_members
    out[c] = mean.reshape(-1)[index]
    out[c + 1] = probabilities.std(axis=0)
    out[c + 2] = probabilities.min(axis=0)
    out[c + 3] = probabilities.max(axis=0)
    for j, side in enumerate(window_sides(height)):
        out[c + 4 + j] = cv2.blur(mean, (side, side)).reshape(-1)[index]
    rows, cols = np.divmod(index, width)
    out[c + 6] = (rows + 0.5) / height
    out[c + 7] = (cols + 0.5) / width
    out[c + 8] = angle
    return out.T


@dataclass
class BandSample:
    """The training sample: features (n, F) float32 and labels (n,) uint8 0/1 of sampled band pixels, and
    weights (n,) float32 (mean 1) that make a weighted pixel loss follow mean per-image Dice: a row of image
    i stands for band_i / taken_i band pixels, and one pixel of image i moves its Dice by about
    2 / (|truth_i| + |predicted_i|) (predicted: the members' mean >= 0.5), so its weight is
    band_i / (taken_i x (|truth_i| + |predicted_i|)), normalised. A pooled pixel loss instead lets the
    images with the largest cars decide.

    n_pixels and n_band count every pixel and every band pixel of the images seen (not just sampled);
    max_held is the most sampled rows held at once while streaming (<= 2.5 x max_pixels); the rest
    are the settings the sample was drawn with.
    """

    features: np.ndarray
    labels: np.ndarray
    weights: np.ndarray
    n_images: int
    n_members: int
    n_pixels: int
    n_band: int
    max_held: int
    lo_level: int
    hi_level: int
    max_pixels: int
    random_state: int


def sample_band_features(
    images: Iterable[tuple[np.ndarray, np.ndarray, int]],
    lo_level: int,
    hi_level: int,
    max_pixels: int,
    random_state: int = 0,
    n_images: int | None = None,
) -> BandSample:
    """Features of at most `max_pixels` band pixels, spread evenly over the streamed images.

    images: (maps (M, H, W) uint8, truth (H, W) non-zero = car, angle 1..16), one at a time.
    Image i contributes a uniform sample of min(its band, max_pixels // N) pixels: the first ones of a
    permutation of its band drawn from seed (random_state, i). A prefix of one permutation is a uniform
    sample of any size, so the result does not depend on whether N is known in advance: with
    `n_images` (or a sized iterable) the quota is fixed from the start; otherwise it is max_pixels // i
    after i images, and samples already held are cut to the current quota whenever they exceed
    2 x max_pixels rows (so at most 2.5 x max_pixels rows are held; each image is cut O(log N) times).
    """
    if n_images is None and isinstance(images, Sized):
        n_images = len(images)
    chunks: list[tuple[np.ndarray, np.ndarray]] = []
    per_image: list[tuple[int, int]] = []  # (band pixels, |truth| + |predicted|) of each image
    n_members = n_pixels = n_band = held = max_held = 0
    quota = max_pixels
    for i, (maps, truth, angle) in enumerate(images):
        maps, truth = np.asarray(maps), np.asarray(truth)
        check_image(maps, angle, n_members or None)
        if truth.shape != maps.shape[1:]:
            raise ValueError(f"image {i}: truth shape {truth.shape} differs from maps {maps.shape[1:]}")
        n_members = maps.shape[0]
        quota = max_pixels // max(i + 1, n_images or 0)
        if quota == 0:
            raise ValueError(f"max_pixels={max_pixels} is smaller than the number of images; raise max_pixels")
        band = np.flatnonzero(band_mask(maps, lo_level, hi_level))
        take = band[np.random.default_rng([random_state, i]).permutation(band.size)[:quota]]
        mean = member_mean(maps)
        chunks.append((pixel_features(maps, angle, take, mean), (truth.reshape(-1)[take] != 0).astype(np.uint8)))
        per_image.append((band.size, int(np.count_nonzero(truth)) + int(np.count_nonzero(mean >= 0.5))))
        n_pixels, n_band, held = n_pixels + truth.size, n_band + band.size, held + take.size
        max_held = max(max_held, held)
        if held > 2 * max_pixels:
            held = _cut(chunks, quota)
    if not chunks:
        raise ValueError("no images to fit on")
    _cut(chunks, quota)
    rows = [(labels.size, band, area) for (_, labels), (band, area) in zip(chunks, per_image)]
    weights = np.concatenate([np.full(n, band / max(n, 1) / max(area, 1)) for n, band, area in rows])
    features, labels = _pack(chunks)
    return BandSample(
        features,
        labels,
        (weights / weights.mean()).astype(np.float32) if weights.size else weights.astype(np.float32),
        len(chunks),
        n_members,
        n_pixels,
        n_band,
        max_held,
        lo_level,
        hi_level,
        max_pixels,
        random_state,
    )


def _cut(chunks: list[tuple[np.ndarray, np.ndarray]], quota: int) -> int:
    """Cut every image's sample to its first `quota` rows (copies, so the long ones are freed); total rows."""
    for i, (features, labels) in enumerate(chunks):
        if labels.size > quota:
            chunks[i] = (np.asfortranarray(features[:quota]), labels[:quota].copy())
    return sum(labels.size for _, labels in chunks)


def _pack(chunks: list) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the chunks into (n, F) F-ordered float32 and (n,) uint8, freeing chunks as copied."""
    n = sum(labels.size for _, labels in chunks)
    n_features = chunks[0][0].shape[1]
    columns, labels = np.empty((n_features, n), np.float32), np.empty(n, np.uint8)
    start = 0
    for i in range(len(chunks)):
        features, chunk_labels = chunks[i]
        columns[:, start : start + chunk_labels.size] = features.T
        labels[start : start + chunk_labels.size] = chunk_labels
        start += chunk_labels.size
        chunks[i] = None  # keeps the peak near one copy of the sample
    return columns.T, labels
