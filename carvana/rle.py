"""Kaggle's run-length encoding for Carvana masks: row-major, 1-indexed, `start length` pairs.

Both directions are vectorised numpy: no Python loop over pixels or runs.
"""
from __future__ import annotations

import numpy as np


def rle_encode(mask: np.ndarray) -> str:
    """Encode a (H, W) bool/uint8 mask (non-zero = car) as `start length start length ...`.

    Pixels are numbered row-major from 1 at the top-left. An empty mask gives "".
    """
    flat = np.asarray(mask).reshape(-1).astype(bool, copy=False).view(np.uint8)
    padded = np.empty(flat.size + 2, dtype=np.uint8)
    padded[0] = padded[-1] = 0
    padded[1:-1] = flat
    # Run starts and ends are where the padded signal changes; +1 makes them 1-indexed.
    edges = np.flatnonzero(padded[1:] != padded[:-1]) + 1
    if edges.size == 0:
        return ""
    edges[1::2] -= edges[::2]
    return _join_ints(edges)


def _join_ints(values: np.ndarray) -> str:
    """Space-separated decimal integers; `np.savetxt`-free and much faster than a join of str()."""
    return " ".join(values.astype(str).tolist())


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Decode an RLE string to a (H, W) uint8 mask of 0/1; `shape` is (H, W)."""
    height, width = shape
    n_pixels = height * width
    if not rle or rle.isspace():
        return np.zeros((height, width), dtype=np.uint8)
    numbers = np.array(rle.split(), dtype=np.int64)
    starts, lengths = numbers[0::2] - 1, numbers[1::2]
    ends = starts + lengths
    # The mask is alternating gaps of 0 and runs of 1: repeat each value by its length.
    counts = np.empty(2 * starts.size + 1, dtype=np.int64)
    counts[0] = starts[0]
    counts[2:-1:2] = starts[1:] - ends[:-1]
    counts[1::2] = lengths
    counts[-1] = n_pixels - ends[-1]
    values = np.zeros(counts.size, dtype=np.uint8)
    values[1::2] = 1
    return np.repeat(values, counts).reshape(height, width)


def rle_problem(rle: str, n_pixels: int) -> str | None:
    """Why `rle` is not a well-formed mask of `n_pixels` pixels, or None when it is.

    Well formed: an even count of positive integers, starts ascending from 1, runs not
    overlapping or touching past the image's last pixel.
    """
    if not rle or rle.isspace():
        return None
    try:
        numbers = np.array(rle.split(), dtype=np.int64)
    except ValueError:
        return "contains something that is not an integer"
    if numbers.size % 2:
        return "has an odd count of numbers (needs start/length pairs)"
    starts, lengths = numbers[0::2], numbers[1::2]
    if (starts < 1).any():
        return "has a start below 1 (pixels are numbered from 1)"
    if (lengths < 1).any():
        return "has a run of length 0 or less"
    ends = starts + lengths  # one past the run's last pixel
    if (starts[1:] < ends[:-1]).any():
        return "has runs that are not ascending or that overlap"
    if ends[-1] - 1 > n_pixels:
        return f"runs past the image's last pixel ({n_pixels})"
    return None
