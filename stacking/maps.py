"""The one input type of every stacking entry: batches of member maps with their ids and angles.

* `MapBatch`: n images' member maps (n, M, H, W) uint8 levels (probability x 255), their ids, angles
  1..16, for train images truths (n, H, W) uint8 0/1, and, where the source knows the data folder, the
  photos on demand (`photos()`: only an entry that looks at them pays for decoding them).
  `predict_proba` of every entry takes one.
* `TrainMaps`: the labelled train images of some folds, streamed as MapBatches of at most `chunk`
  images from a reader (the OOF store, or arrays already in memory). `fit` of every entry takes one.
  `folds(ks)` is the same source restricted to folds `ks`; `evaluator()` is the exact Dice evaluator
  of its images, built for all folds in ONE streamed pass and shared by every subset and entry.
* `TestMaps`: the test images' member maps, streamed in chunks.

Memory: a pass holds one chunk (chunk x M x H x W bytes, plus its truths) at a time; the evaluator
holds only the pixels whose decision can change (see `stacking.evaluate`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from carvana.dataset import CarvanaData, angle_of
from carvana.resize import resize_mask
from carvana.rle import rle_decode
from stacking.evaluate import DiceEvaluator, FoldedEvaluator, FoldsView

CHUNK = 4  # images per batch: 4 x 7 members x 1918 x 1280 = 69 MB (+ float32 temporaries) at Kaggle size
ReadMaps = Callable[[Sequence[str]], np.ndarray]  # ids -> (n, M, H, W) uint8
ReadTruth = Callable[[str], np.ndarray]  # id -> (H, W) uint8 0/1 at the maps' resolution


ReadPhoto = Callable[[str], np.ndarray]  # id -> (H0, W0, 3) uint8 RGB photo at its own size


@dataclass(frozen=True)
class PhotoReader:
    """id -> the photo of `split` in the Kaggle layout at `data` (picklable: test-map workers carry it)."""

    data: Path
    split: str

    def __call__(self, img: str) -> np.ndarray:
        return CarvanaData(self.data).load_image(img, self.split)


def truth_at(rle: str, native_hw: tuple[int, int], resolution: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 0/1 truth of an RLE at the store's `resolution` (H, W): area-average, majority."""
    return resize_mask(rle_decode(rle, native_hw), *resolution)


@dataclass(frozen=True)
class MapBatch:
    """n images: maps (n, M, H, W) uint8, ids (n,), angles (n,) int 1..16, truth (n, H, W) 0/1 or None, and
    `photo` (id -> photo) where the source has the data folder."""

    maps: np.ndarray
    ids: tuple[str, ...]
    angles: np.ndarray
    truth: np.ndarray | None = None
    photo: ReadPhoto | None = None

    def __post_init__(self) -> None:
        if self.maps.ndim != 4 or self.maps.dtype != np.uint8:
            raise ValueError(f"maps must be (n, M, H, W) uint8 levels, got {self.maps.shape} {self.maps.dtype}")
        if len(self.ids) != self.maps.shape[0] or np.shape(self.angles) != (len(self.ids),):
            raise ValueError(
                f"{self.maps.shape[0]} maps need as many ids and angles, got {len(self.ids)} and "
                f"{np.shape(self.angles)}"
            )
        if self.truth is not None and self.truth.shape != self.maps.shape[:1] + self.maps.shape[2:]:
            raise ValueError(f"truth must be {self.maps.shape[:1] + self.maps.shape[2:]}, got {self.truth.shape}")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_members(self) -> int:
        return int(self.maps.shape[1])

    @functools.cached_property
    def level_range(self) -> tuple[np.ndarray, np.ndarray]:
        """(lowest, highest) (n, H, W) uint8 level of the members at every pixel, computed once per batch: the
        entries of a pass share it (the members are unanimous where the two are equal)."""
        return self.maps.min(axis=1), self.maps.max(axis=1)

    def photos(self) -> Iterator[np.ndarray]:
        """Each image's (H0, W0, 3) uint8 photo, in order, decoded on demand."""
        if self.photo is None:
            raise ValueError("this batch carries no photos: build its TrainMaps/TestMaps with a `photo` reader")
        return (self.photo(img) for img in self.ids)

    @classmethod
    def of(
        cls,
        maps: np.ndarray,
        ids: Sequence[str] | None = None,
        angles: Sequence[int] | None = None,
        truth: np.ndarray | None = None,
        photo: ReadPhoto | None = None,
    ) -> MapBatch:
        """A batch from arrays; floats in [0, 1] are rounded to levels, ids default to their positions and
        angles to 1 (for entries that ignore them)."""
        maps = np.asarray(maps)
        if maps.ndim != 4:
            raise ValueError(f"X must be (N, M, H, W) member maps, got shape {maps.shape}")
        if maps.dtype != np.uint8:
            if not np.issubdtype(maps.dtype, np.floating) or maps.size and (maps.min() < 0 or maps.max() > 1):
                raise ValueError(f"X must be uint8 levels or floats in [0, 1], got {maps.dtype}")
            maps = np.rint(maps * 255).astype(np.uint8)
        n = maps.shape[0]
        ids = tuple(ids) if ids is not None else tuple(str(i) for i in range(n))
        levels = np.ones(n, dtype=np.int64) if angles is None else np.asarray(angles, dtype=np.int64)
        return cls(maps, ids, levels, None if truth is None else np.asarray(truth, dtype=np.uint8), photo)


@dataclass
class _Shared:
    """State shared by a TrainMaps and its fold subsets: the one evaluator pass."""

    evaluator: FoldedEvaluator | None = None
    n_passes: int = 0  # streamed passes over the maps (tests and benchmarks read it)
    fits: dict = field(default_factory=dict)  # fits and inner scores shared by fold subsets (`stacking.robust`)


@dataclass
class TrainMaps:
    """Labelled train maps of the folds `folds_in` (None = all), streamed in batches (see module doc)."""

    read: ReadMaps
    truth: ReadTruth
    fold_of: Mapping[str, int]  # every train image of the run -> its fold
    members: tuple[str, ...]
    chunk: int = CHUNK
    folds_in: tuple[int, ...] | None = None
    threshold_range: tuple[float, float] = (0.2, 0.8)  # thresholds the shared evaluator must answer for
    shared: _Shared = field(default_factory=_Shared)
    photo: ReadPhoto | None = None

    @property
    def all_folds(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.fold_of.values())))

    @property
    def fold_set(self) -> tuple[int, ...]:
        return self.all_folds if self.folds_in is None else self.folds_in

    @property
    def held_out(self) -> tuple[int, ...]:
        """The run's folds this source leaves out (empty for the full source)."""
        return tuple(k for k in self.all_folds if k not in self.fold_set)

    @property
    def ids(self) -> list[str]:
        wanted = set(self.fold_set)
        return [img for img in sorted(self.fold_of) if self.fold_of[img] in wanted]

    @property
    def n_images(self) -> int:
        return len(self.ids)

    @property
    def n_members(self) -> int:
        return len(self.members)

    def folds(self, ks: Sequence[int]) -> TrainMaps:
        """The same source restricted to folds `ks` (sharing the evaluator pass)."""
        unknown = set(ks) - set(self.all_folds)
        if unknown:
            raise ValueError(f"folds {sorted(unknown)} are not among the run's folds {list(self.all_folds)}")
        return replace(self, folds_in=tuple(sorted(ks)))

    def batches(self, with_truth: bool = True) -> Iterator[MapBatch]:
        """The images in id order, `chunk` at a time; truths decoded once per pass."""
        ids = self.ids
        self.shared.n_passes += 1
        for start in range(0, len(ids), self.chunk):
            part = ids[start : start + self.chunk]
            truth = np.stack([self.truth(img) for img in part]) if with_truth else None
            yield MapBatch(self.read(part), tuple(part), np.array([angle_of(i) for i in part]), truth, self.photo)

    def unlabelled(self) -> TestMaps:
        """The same images as an unlabelled source, chunked alike (predicted chunk by chunk as test maps are)."""
        return TestMaps(self.read, tuple(self.ids), self.chunk, self.photo)

    def images(self) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        """(maps (M, H, W) uint8, truth (H, W), angle) one image at a time (the pixel stackers' stream)."""
        for batch in self.batches():
            assert batch.truth is not None  # batches() reads the truth by default
            for i in range(len(batch)):
                yield batch.maps[i], batch.truth[i], int(batch.angles[i])

    def evaluator(self) -> FoldsView:
        """The exact Dice evaluator of this source's images: one DiceEvaluator per fold of the run, built
        in one streamed pass on first use and shared by every fold subset and entry."""
        if self.shared.evaluator is None:
            root = replace(self, folds_in=None)
            evaluators = {k: DiceEvaluator(self.n_members, self.threshold_range) for k in self.all_folds}
            ids: dict[int, list[str]] = {k: [] for k in self.all_folds}
            for batch in root.batches():
                assert batch.truth is not None
                for i, img in enumerate(batch.ids):
                    evaluators[self.fold_of[img]].add_image(batch.maps[i], batch.truth[i], int(batch.angles[i]))
                    ids[self.fold_of[img]].append(img)
            self.shared.evaluator = FoldedEvaluator(evaluators, ids)
        return self.shared.evaluator.restricted(self.fold_set)

    @classmethod
    def from_evaluator(cls, evaluator: FoldedEvaluator, members: Sequence[str]) -> TrainMaps:
        """A source that holds only a ready FoldedEvaluator (its `ids` give the images): for entries that fit
        from the evaluator alone (the tuned blend); reading maps from it is an error."""

        def no_maps(_: object) -> np.ndarray:
            raise ValueError("this TrainMaps holds only an evaluator, no maps")

        fold_of = {img: k for k, ids in evaluator.ids.items() for img in ids}
        if set(evaluator.folds) - set(fold_of.values()):  # folds without ids: number their images
            fold_of = {f"fold{k}/{i}": k for k in evaluator.folds for i in range(evaluator.evaluators[k].n_images)}
        return cls(no_maps, no_maps, fold_of, tuple(members), shared=_Shared(evaluator))

    @classmethod
    def from_arrays(
        cls,
        maps: np.ndarray,
        truth: np.ndarray | None,
        ids: Sequence[str] | None = None,
        fold: Sequence[int] | None = None,
        chunk: int = CHUNK,
        threshold_range: tuple[float, float] = (0.2, 0.8),
        *,
        angles: Sequence[int] | None = None,
    ) -> TrainMaps:
        """In-memory source: maps (N, M, H, W) uint8 (or floats in [0, 1]), truth (N, H, W) 0/1.

        ids default to `<12 hex>_<NN>`-like names whose angle cycles 1..16, or is `angles` (N,) 1..16 when
        given; fold defaults to 0 for all."""
        batch = MapBatch.of(maps)
        n = len(batch)
        truth = None if truth is None else np.asarray(truth, dtype=np.uint8)
        shape = batch.maps.shape[:1] + batch.maps.shape[2:]
        if truth is not None and truth.shape != shape:
            raise ValueError(f"truth must be (N, H, W) = {shape}, got {truth.shape}")
        if ids is None:
            cycle = [i % 16 + 1 for i in range(n)] if angles is None else [int(a) for a in angles]
            if len(cycle) != n or any(not 1 <= a <= 16 for a in cycle):
                raise ValueError(f"angles must be ({n},) values 1..16, got {list(cycle)}")
            ids = [f"{i // 16:012x}_{a:02d}" if angles is None else f"{i:012x}_{a:02d}" for i, a in enumerate(cycle)]
        ids = list(ids)
        position = {img: i for i, img in enumerate(ids)}
        fold_of = dict(zip(ids, [int(k) for k in (fold if fold is not None else np.zeros(n, int))], strict=True))
        members = tuple(f"m{m}" for m in range(batch.n_members))

        def read_truth(img: str) -> np.ndarray:
            if truth is None:
                raise ValueError("this entry needs the truth y (N, H, W) to fit")
            return truth[position[img]]

        return cls(
            lambda part: batch.maps[[position[i] for i in part]],
            read_truth,
            fold_of,
            members,
            chunk,
            None,
            threshold_range,
        )


@dataclass(frozen=True)
class TestMaps:
    """The test images' member maps, streamed `chunk` at a time."""

    read: ReadMaps
    ids: tuple[str, ...]
    chunk: int = CHUNK
    photo: ReadPhoto | None = None

    def batches(self) -> Iterator[MapBatch]:
        for part in self.chunks():
            yield read_batch(self.read, part, self.photo)

    def chunks(self) -> list[tuple[str, ...]]:
        """The ids of each batch, in order."""
        return [tuple(self.ids[start : start + self.chunk]) for start in range(0, len(self.ids), self.chunk)]


def read_batch(read: ReadMaps, ids: tuple[str, ...], photo: ReadPhoto | None = None) -> MapBatch:
    """The unlabelled MapBatch of `ids` (their angles from the ids)."""
    return MapBatch(read(ids), ids, np.array([angle_of(i) for i in ids]), photo=photo)


@dataclass(frozen=True)
class StoreReader:
    """ids -> (n, M, H, W) uint8 maps of `members` from an OOF store's `split` (picklable)."""

    store: Any  # oof.Store
    members: tuple[str, ...]
    split: str

    def __call__(self, ids: Sequence[str]) -> np.ndarray:
        return np.stack([self.store.read_many(m, self.split, ids) for m in self.members], axis=1)
