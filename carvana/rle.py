"""Kaggle's run-length encoding for Carvana masks: row-major, 1-indexed, `start length` pairs.

Two forms: masks (`rle_encode`, `rle_decode`) and runs, `(starts, ends)` int64 arrays, 0-indexed with
exclusive ends (pixel index = row * W + column): `parse_runs`, `runs_to_rle`, `runs_intersection`.
Submission files are scored and blended in run form, without building pixel arrays.
Everything is vectorised numpy: no Python loop over pixels or runs.
"""

from __future__ import annotations

import warnings

import numpy as np

__all__ = [
    "Runs",
    "parse_ints",
    "parse_runs",
    "rle_decode",
    "rle_encode",
    "rle_problem",
    "runs_intersection",
    "runs_to_rle",
]

Runs = tuple[np.ndarray, np.ndarray]  # (starts, ends): 0-indexed int64, ends exclusive, ascending, not overlapping


def rle_encode(mask: np.ndarray) -> str:
    """Encode a (H, W) bool/uint8 mask (non-zero = car) as `start length start length ...`.

    Pixels are numbered row-major from 1 at the top-left. An empty mask gives "".
    """
    flat = np.asarray(mask).reshape(-1).astype(bool, copy=False).view(np.uint8)
    if flat.size == 0:
        return ""
    # 1-indexed position of the first pixel after each change; the image's ends close open runs.
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 2
    if flat[0]:
        edges = np.concatenate(([1], edges))
    if flat[-1]:
        edges = np.concatenate((edges, [flat.size + 1]))
    if edges.size == 0:
        return ""
    edges[1::2] -= edges[::2]
    return _join_ints(edges)


def _join_ints(values: np.ndarray) -> str:
    """Space-separated decimal integers; %-formatting a tuple is ~2x faster than a join of str()."""
    return ("%d " * values.size % tuple(values.tolist()))[:-1]


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Decode an RLE string to a (H, W) uint8 mask of 0/1; `shape` is (H, W)."""
    height, width = shape
    n_pixels = height * width
    if not rle or rle.isspace():
        return np.zeros((height, width), dtype=np.uint8)
    numbers = parse_ints(rle)
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


def parse_ints(text: str) -> np.ndarray:
    """int64 array of the whitespace-separated integers in `text`; ValueError on anything else."""
    with warnings.catch_warnings():
        # NumPy only warns when the text has something that is not a number: make that an error.
        warnings.simplefilter("error", DeprecationWarning)
        try:
            return np.fromstring(text, dtype=np.int64, sep=" ")
        except DeprecationWarning as warning:
            raise ValueError(f"not a list of integers: {text[:40]!r}") from warning


def rle_problem(rle: str, n_pixels: int) -> str | None:
    """Why `rle` is not a well-formed mask of `n_pixels` pixels, or None when it is.

    Well formed: an even count of positive integers, starts ascending from 1, runs not
    overlapping or touching past the image's last pixel.
    """
    if not rle or rle.isspace():
        return None
    try:
        numbers = parse_ints(rle)
    except (ValueError, OverflowError):
        return "contains something that is not an integer"
    if (numbers > n_pixels).any():  # also keeps the sums below from overflowing int64
        return f"runs past the image's last pixel ({n_pixels})"
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


def parse_runs(rle: str, n_pixels: int) -> Runs:
    """Runs of an RLE string; ValueError with `rle_problem`'s reason when it is malformed.

    Only plain ASCII decimal integers are accepted (rle_problem also lets through e.g. Arabic-Indic
    digits, and numbers so large that start + length overflows int64; this refuses both).
    """
    if not rle or rle.isspace():  # an empty mask (np.fromstring refuses blank text)
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    try:  # np.fromstring is ~5x faster than int() on split tokens; it raises on any non-integer
        numbers: np.ndarray | None = parse_ints(rle)
    except ValueError:
        numbers = None
    if numbers is not None and _well_formed(numbers, n_pixels):
        return numbers[0::2] - 1, numbers[0::2] - 1 + numbers[1::2]
    try:  # the slow reference names what is wrong (it overflows on numbers beyond int64)
        with np.errstate(over="ignore"):
            problem = rle_problem(rle, n_pixels)
    except OverflowError:
        problem = None
    raise ValueError(problem or f"has a number that is not a plain integer from 1 to {n_pixels}")


def _well_formed(numbers: np.ndarray, n_pixels: int) -> bool:
    """rle_problem's checks, vectorised on the parsed numbers (starts/lengths 1-indexed)."""
    if numbers.size % 2 or numbers.size == 0 or numbers.min() < 1 or numbers.max() > n_pixels:
        return False
    starts, lengths = numbers[0::2], numbers[1::2]
    ends = starts + lengths  # one past each run; no overflow since both are <= n_pixels
    return bool((starts[1:] >= ends[:-1]).all() and ends[-1] - 1 <= n_pixels)


def runs_to_rle(starts: np.ndarray, ends: np.ndarray) -> str:
    """Kaggle RLE of runs (0-indexed starts, exclusive ends), non-touching, ascending."""
    if starts.size == 0:
        return ""
    pairs = np.empty(2 * starts.size, dtype=np.int64)
    pairs[0::2] = starts + 1
    pairs[1::2] = ends - starts
    return _join_ints(pairs)


def runs_intersection(a: Runs, b: Runs) -> int:
    """Pixels in both run lists: the sum over a's runs of covered_b(end) - covered_b(start), where
    covered_b(x) counts b's pixels before x, found by a binary search in b's run starts."""
    # A leading empty run at -1 makes every search land on a run (no special case for x < b's first run).
    starts = np.concatenate([[-1], b[0]])
    lengths = np.concatenate([[0], b[1] - b[0]])
    before = np.cumsum(lengths) - lengths  # b's pixels before each run
    x = np.concatenate([a[1], a[0]])
    k = np.searchsorted(starts, x, side="right") - 1
    covered = before[k] + np.clip(x - starts[k], 0, lengths[k])
    return int(covered[: a[1].size].sum() - covered[a[1].size :].sum())
