"""Fast, exact mean per-image Dice for Optuna trials over members' uint8 probability maps.

(About 380 lines: the evaluator, its per-fold views and the brute-force reference it is tested against share
one decision rule, stated once below; splitting them would split the rule's one home.)

The decision rule (the fast path and `brute_force_mean_dice` share it, so they agree exactly):

* Member maps are uint8 levels v_m = probability x 255, shape (H, W) per image.
* Trial weights w (non-negative, not all zero; None = equal) are normalised and rounded to integers
  W_m = round(WEIGHT_SCALE * w_m / sum(w)); None gives W_m = 1. Equal weights therefore reduce to the
  plain mean, and any weight is honoured to 1 / 65,536 of the total.
* The blend of a pixel is S / (255 * sum(W)) with S = sum_m W_m * v_m, an exact integer.
* A pixel is car where blend >= t, compared exactly against t's binary value, i.e. where
  S >= ceil(t * 255 * sum(W)) computed in rationals. For one member this is level >= ceil(255 t).
* t lies in (0, 1]; one global t, or 16 per-angle values where t[a - 1] applies to angle a.

Exact integers make ties well defined: a threshold on a level and the same blend under scaled weights
always decide alike, and no float rounding can flip a pixel between the two paths.

Why it is fast: with equal weights every image is reduced to two histograms of S (truth-positive and
truth-negative pixels), so a trial is a lookup per image, independent of image size. For weighted
trials, pixels where every member is 0 (never car for t > 0) or every member is 255 (always car for
t <= 1) are counted once; only the remaining "uncertain" pixels are stored, grouped by truth, angle and
image, each distinct tuple of member levels once with its pixel count (`unique_columns`), and each trial
blends only those tuples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from carvana.dataset import N_ANGLES
from carvana.metric import dice

WEIGHT_SCALE = 2**16  # 255 * (2**16 + n_members) stays far inside int32
CHUNK = 2**17  # pixels blended at a time in weighted trials


def quantize_weights(weights: np.ndarray | Sequence[float] | None, n_members: int) -> np.ndarray:
    """The integer weights W (n_members,) int64 that define a blend; None means all ones."""
    if weights is None:
        return np.ones(n_members, dtype=np.int64)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n_members,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be {n_members} finite non-negative numbers, not all zero; got {weights!r}")
    return np.rint(w / w.sum() * WEIGHT_SCALE).astype(np.int64)


def level_thresholds(threshold: float | Sequence[float] | np.ndarray, total_weight: int) -> np.ndarray:
    """Smallest car S per angle: (16,) int64 ceil(t * 255 * total_weight), exact in rationals."""
    t = np.asarray(threshold, dtype=np.float64)
    if t.ndim == 0:
        t = np.full(N_ANGLES, float(t))
    if t.shape != (N_ANGLES,) or not np.all((t > 0) & (t <= 1)):
        raise ValueError(f"threshold must be one number or {N_ANGLES} numbers in (0, 1]; got {threshold!r}")
    scale = 255 * int(total_weight)
    return np.array([math.ceil(Fraction(float(x)) * scale) for x in t], dtype=np.int64)


def _dice_from_counts(tp: np.ndarray, n_pred: np.ndarray, n_truth: np.ndarray) -> np.ndarray:
    """Per-image Dice (N,) float64 from integer counts; 1.0 where prediction and truth are both empty."""
    total = n_pred + n_truth
    return np.where(total == 0, 1.0, 2.0 * tp / np.maximum(total, 1))


def _segment_sums(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sum of values[offsets[i]:offsets[i+1]] for each segment: (n_segments,) int64 (0 for empty ones)."""
    cumulative = np.concatenate([[0], np.cumsum(values, dtype=np.int64)])
    return cumulative[offsets[1:]] - cumulative[offsets[:-1]]


def unique_columns(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct columns of values (M, K) uint8 and how often each occurs: (M, U) uint8, (U,) int32.

    Pixels with the same member levels (and truth) are decided alike by every trial, so each is stored
    once with its count: soft members repeat the same few level tuples over large areas, and pixels where
    sharp members disagree take at most 2^M tuples of 0 and 255."""
    n_members, n = values.shape
    if n == 0:
        return values, np.zeros(0, dtype=np.int32)
    rows = np.ascontiguousarray(values.T)  # (K, M): one key per pixel
    keys: np.ndarray
    if n_members <= 8:
        padded = np.zeros((n, 8), dtype=np.uint8)
        padded[:, :n_members] = rows
        keys = padded.view(np.uint64).ravel()
    else:
        keys = rows.view(np.dtype((np.void, n_members))).ravel()
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    return values[:, first], counts.astype(np.int32)


@dataclass
class _Uncertain:
    """Uncertain pixels of one truth class, images in angle-sorted order, packed for trials.

    values: (n_members, n_tuples) uint8 distinct level tuples of each image; counts: (n_tuples,) int32 pixels
    of the image holding each tuple; offsets: (n_images + 1,) int64 image boundaries; angle_bounds: (17,)
    int64 tuple boundaries of angles 1..16.
    """

    values: np.ndarray
    counts: np.ndarray
    offsets: np.ndarray
    angle_bounds: np.ndarray

    def predicted_counts(self, weights: np.ndarray, k_by_angle: np.ndarray) -> np.ndarray:
        """Per image (angle-sorted order) number of pixels with S >= k of its angle: (n_images,) int64."""
        active = [(values, np.int32(w)) for values, w in zip(self.values, weights) if w]
        car = np.empty(self.values.shape[1], dtype=bool)
        # Blend in cache-sized chunks with reused buffers: 2-4x faster than whole-array temporaries.
        blend, term = np.empty(CHUNK, np.int32), np.empty(CHUNK, np.int32)
        bounds = self.angle_bounds.tolist()
        for a in range(N_ANGLES):
            for start in range(bounds[a], bounds[a + 1], CHUNK):
                stop = min(start + CHUNK, bounds[a + 1])
                acc, tmp = blend[: stop - start], term[: stop - start]
                # dtype=int32: the product must not depend on NumPy's promotion rules (NumPy 1.26 multiplied
                # uint8 by an int32 scalar of 16384 in uint16, where 200 x 16384 wraps to 0).
                np.multiply(active[0][0][start:stop], active[0][1], out=acc, dtype=np.int32)
                for values, w in active[1:]:
                    acc += np.multiply(values[start:stop], w, out=tmp, dtype=np.int32)
                np.greater_equal(acc, k_by_angle[a], out=car[start:stop])
        return _segment_sums(np.where(car, self.counts, 0), self.offsets)


class DiceEvaluator:
    """Mean per-image Dice of (blend >= threshold) vs truth, for many trials over the same maps.

    Feed images with `add_image` (streaming) or build with `from_arrays` / `from_images`; then
    `score(threshold, weights)` and `per_image(threshold, weights)` follow the module's decision rule.
    Memory: four rows (histograms and their suffix sums) of ~255 * n_members int32 per image, plus
    n_members + 4 bytes per distinct uncertain level tuple of an image (at most one per uncertain pixel);
    never a float copy of the maps. Adding images after a score re-packs, briefly holding them twice.
    """

    def __init__(self, n_members: int, threshold_range: tuple[float, float] | None = None) -> None:
        if not 1 <= n_members <= 257:  # the uint16 level sum holds up to 257 members
            raise ValueError(f"n_members must be in 1..257, got {n_members}")
        self.n_members = n_members
        self.threshold_range = threshold_range
        # Weighted trials only ever threshold inside threshold_range: a pixel whose highest member level is
        # below 255 lo is background for every weight and threshold, one whose lowest level is >= 255 hi is
        # car; neither is stored. Without a range only all-0 and all-255 pixels are decided.
        lo, hi = threshold_range or (1 / 255, 1.0)
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"threshold_range must satisfy 0 < lo <= hi <= 1, got {threshold_range}")
        self._min_car, self._max_background = math.ceil(Fraction(lo) * 255) - 1, math.ceil(Fraction(hi) * 255)
        self._sure_car: list[tuple[int, int]] = []  # per image (truth-negative, truth-positive) always-car pixels
        self._max_sum = 255 * n_members
        self._hists: list[np.ndarray] = []  # per image (2, max_sum + 1): truth-negative, truth-positive
        self._angles: list[int] = []
        self._chunks: list[list[tuple[np.ndarray, np.ndarray] | None]] = []  # per image [pos, neg] (tuples, counts)
        self.n_pixels = 0
        self._packed: tuple | None = None

    @classmethod
    def from_arrays(
        cls, maps: Sequence[np.ndarray] | np.ndarray, truths: np.ndarray, angles: Sequence[int] | np.ndarray
    ) -> DiceEvaluator:
        """Build from per-member maps (M of (N, H, W) uint8), truths (N, H, W) 0/1 and angles (N,) 1..16."""
        evaluator = cls(len(maps))
        for i, (truth, angle) in enumerate(zip(truths, angles, strict=True)):
            evaluator.add_image(np.stack([m[i] for m in maps]), truth, int(angle))
        return evaluator

    @classmethod
    def from_images(cls, images: Iterable[tuple[np.ndarray, np.ndarray, int]]) -> DiceEvaluator:
        """Build from an iterable of (maps (M, H, W) uint8, truth (H, W), angle) without holding them all."""
        evaluator = None
        for maps, truth, angle in images:
            evaluator = evaluator or cls(len(maps))
            evaluator.add_image(maps, truth, angle)
        if evaluator is None:
            raise ValueError("DiceEvaluator.from_images: no images")
        return evaluator

    def add_image(self, maps: np.ndarray, truth: np.ndarray, angle: int) -> None:
        """Add one image: maps (M, H, W) uint8 levels, truth (H, W) (non-zero = car), angle in 1..16."""
        maps = np.asarray(maps)
        truth = np.asarray(truth)
        if maps.dtype != np.uint8 or maps.ndim != 3 or maps.shape[0] != self.n_members:
            raise ValueError(f"maps must be ({self.n_members}, H, W) uint8, got {maps.shape} {maps.dtype}")
        if truth.shape != maps.shape[1:]:
            raise ValueError(f"truth shape {truth.shape} differs from maps {maps.shape[1:]}")
        if not 1 <= int(angle) <= N_ANGLES:
            raise ValueError(f"angle must be in 1..{N_ANGLES}, got {angle}")
        self._unpack()
        flat = maps.reshape(self.n_members, -1)
        car = truth.reshape(-1) != 0
        level_sum = flat.sum(axis=0, dtype=np.uint16)
        bins = level_sum.astype(np.int32)
        bins[car] += self._max_sum + 1
        self._hists.append(np.bincount(bins, minlength=2 * (self._max_sum + 1)).astype(np.int32).reshape(2, -1))
        sure_car = flat.min(axis=0) >= self._max_background
        uncertain = (flat.max(axis=0) > self._min_car) & ~sure_car
        n_sure_car = int(np.count_nonzero(sure_car & car))
        self._sure_car.append((int(np.count_nonzero(sure_car)) - n_sure_car, n_sure_car))
        self._chunks.append([unique_columns(flat[:, uncertain & car]), unique_columns(flat[:, uncertain & ~car])])
        self._angles.append(int(angle))
        self.n_pixels += car.size

    @property
    def n_images(self) -> int:
        return len(self._angles)

    @property
    def n_uncertain(self) -> int:
        """Number of uncertain pixels over all images (each trial decides them)."""
        return sum(int(part.counts.sum(dtype=np.int64)) for part in self._pack()[1])

    @property
    def n_stored(self) -> int:
        """Number of distinct (image, truth, member levels) tuples stored for the uncertain pixels."""
        return sum(part.values.shape[1] for part in self._pack()[1])

    @property
    def uncertain_share(self) -> float:
        """Share of all pixels that weighted trials must blend."""
        return self.n_uncertain / max(self.n_pixels, 1)

    @property
    def nbytes(self) -> int:
        """Bytes held by the packed arrays (histogram suffix sums and uncertain pixels)."""
        suffix, parts, *_ = self._pack()
        return suffix.nbytes + sum(p.values.nbytes + p.counts.nbytes + p.offsets.nbytes for p in parts)

    def per_image(
        self, threshold: float | Sequence[float] | np.ndarray, weights: np.ndarray | Sequence[float] | None = None
    ) -> np.ndarray:
        """Dice of each image, (N,) float64 in the order the images were added."""
        suffix, parts, order, angles = self._pack()
        w = quantize_weights(weights, self.n_members)
        if np.all(w == w[0]):  # equal weights: S itself decides, read it off the histograms
            k_img = level_thresholds(threshold, self.n_members)[angles - 1]
            rows = np.arange(angles.size)
            tp, fp = suffix[1, rows, k_img], suffix[0, rows, k_img]
        else:
            self._check_in_range(threshold)
            k = level_thresholds(threshold, int(w.sum()))
            tp, fp = np.empty(angles.size, np.int64), np.empty(angles.size, np.int64)
            tp[order] = parts[0].predicted_counts(w, k)
            fp[order] = parts[1].predicted_counts(w, k)
            sure = np.array(self._sure_car, dtype=np.int64).reshape(-1, 2)  # decided car for any trial
            tp += sure[:, 1]
            fp += sure[:, 0]
        return _dice_from_counts(tp, tp + fp, suffix[1, :, 0])

    def _check_in_range(self, threshold: float | Sequence[float] | np.ndarray) -> None:
        if self.threshold_range is None:
            return
        t = np.asarray(threshold, dtype=np.float64)
        lo, hi = self.threshold_range
        if np.any(t < lo) or np.any(t > hi):
            raise ValueError(
                f"this evaluator answers weighted trials for thresholds in {self.threshold_range}, got {threshold!r}"
            )

    def score(
        self, threshold: float | Sequence[float] | np.ndarray, weights: np.ndarray | Sequence[float] | None = None
    ) -> float:
        """Mean per-image Dice of the trial (see the module docstring for the rule)."""
        return float(self.per_image(threshold, weights).mean())

    def _pack(self) -> tuple:
        """(suffix, parts, order, angles): the per-image chunks concatenated into angle-sorted arrays
        (once; chunks are freed as they are copied)."""
        if self._packed is not None:
            return self._packed
        if not self._angles:
            raise ValueError("DiceEvaluator has no images")
        angles = np.array(self._angles, dtype=np.int64)
        order = np.argsort(angles, kind="stable")
        hists = np.stack(self._hists)  # (N, 2, max_sum + 1)
        suffix = np.zeros((2, angles.size, self._max_sum + 2), dtype=np.int32)
        suffix[:, :, :-1] = np.cumsum(hists[:, :, ::-1], axis=2, dtype=np.int64)[:, :, ::-1].transpose(1, 0, 2)
        parts = tuple(self._pack_class(c, order, angles) for c in (0, 1))
        self._chunks = []
        self._packed = (suffix, parts, order, angles)
        return self._packed

    def _pack_class(self, cls_index: int, order: np.ndarray, angles: np.ndarray) -> _Uncertain:
        sizes = np.array([self._chunks[i][cls_index][1].size for i in order], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        values = np.empty((self.n_members, int(offsets[-1])), dtype=np.uint8)
        counts = np.empty(int(offsets[-1]), dtype=np.int32)
        for rank, i in enumerate(order):
            values[:, offsets[rank] : offsets[rank + 1]], counts[offsets[rank] : offsets[rank + 1]] = self._chunks[i][
                cls_index
            ]
            self._chunks[i][cls_index] = None  # keeps the peak near one copy of the uncertain pixels
        first_image_of_angle = np.searchsorted(angles[order], np.arange(1, N_ANGLES + 2))
        return _Uncertain(values, counts, offsets, offsets[first_image_of_angle])

    def _unpack(self) -> None:
        """Turn packed arrays back into per-image chunks (views) so more images can be added."""
        if self._packed is None:
            return
        _, parts, order, _ = self._packed
        chunks: list[list[tuple[np.ndarray, np.ndarray] | None]] = [[None, None] for _ in order]
        for cls_index, part in enumerate(parts):
            for rank, i in enumerate(order):
                a, b = part.offsets[rank], part.offsets[rank + 1]
                chunks[i][cls_index] = (part.values[:, a:b], part.counts[a:b])
        self._chunks = chunks
        self._packed = None


class FoldedEvaluator:
    """One DiceEvaluator per fold; scores a trial on the union of some folds' images."""

    def __init__(self, evaluators: Mapping[int, DiceEvaluator], ids: Mapping[int, Sequence[str]] | None = None):
        self.evaluators = dict(evaluators)
        self.ids = {k: list(v) for k, v in (ids or {}).items()}  # image ids per fold, in the order added

    @property
    def folds(self) -> list[int]:
        return sorted(self.evaluators)

    def per_image(self, threshold: float | np.ndarray, weights: np.ndarray | None, folds: Sequence[int]) -> np.ndarray:
        """Per-image Dice (N,) float64 of the folds' images, fold by fold in the order of `folds`."""
        return np.concatenate([self.evaluators[k].per_image(threshold, weights) for k in folds])

    def score(self, threshold: float | np.ndarray, weights: np.ndarray | None, folds: Sequence[int]) -> float:
        """Mean per-image Dice over the union of `folds`' images."""
        return float(self.per_image(threshold, weights, folds).mean())

    def restricted(self, folds: Sequence[int]) -> FoldsView:
        """The folds' images answering as one evaluator (what a blend fitted on those folds sees)."""
        return FoldsView(self, tuple(folds))


@dataclass(frozen=True)
class FoldsView:
    """Some folds of a FoldedEvaluator with DiceEvaluator's `score(threshold, weights)` interface."""

    folded: FoldedEvaluator
    folds: tuple[int, ...]

    @property
    def n_members(self) -> int:
        return self.folded.evaluators[self.folds[0]].n_members

    def per_image(self, threshold: float | np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        return self.folded.per_image(threshold, weights, self.folds)

    def score(self, threshold: float | np.ndarray, weights: np.ndarray | None = None) -> float:
        return self.folded.score(threshold, weights, self.folds)


def brute_force_per_image(
    maps: Sequence[np.ndarray] | np.ndarray,
    truths: np.ndarray,
    angles: Sequence[int] | np.ndarray,
    threshold: float | Sequence[float] | np.ndarray,
    weights: np.ndarray | Sequence[float] | None = None,
) -> np.ndarray:
    """Slow obvious reference: blend every pixel of each image, threshold, `carvana.metric.dice`.

    maps: M of (N, H, W) uint8; truths (N, H, W); angles (N,) 1..16. Returns (N,) float64.
    """
    w = quantize_weights(weights, len(maps))
    k = level_thresholds(threshold, int(w.sum()))
    scores = []
    for i, (truth, angle) in enumerate(zip(truths, angles, strict=True)):
        blend = sum(int(w[m]) * maps[m][i].astype(np.int64) for m in range(len(maps)))
        scores.append(dice(blend >= k[int(angle) - 1], truth))
    return np.array(scores)


def brute_force_mean_dice(
    maps: Sequence[np.ndarray] | np.ndarray,
    truths: np.ndarray,
    angles: Sequence[int] | np.ndarray,
    threshold: float | Sequence[float] | np.ndarray,
    weights: np.ndarray | Sequence[float] | None = None,
) -> float:
    """Mean of `brute_force_per_image`: the reference `DiceEvaluator.score` must equal."""
    return float(np.mean(brute_force_per_image(maps, truths, angles, threshold, weights)))
