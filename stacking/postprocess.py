"""Post-processing of an entry's maps, chosen on honest OOF (nnU-Net's rule): each operation is applied to
the best entry's stored OOF and test maps, written as an entry `<best>.<operation>`, and kept only when its
OOF mean Dice beats the best entry's. The operations learn nothing, so the OOF maps stay honest; the only
choice made on the OOF images is keep / drop among a handful of operations.

Operations on one (H, W) uint8 map (probability x 255; car = level >= 128), 8-connected components:
* `largest`: keep only the largest car component (Carvana photos show exactly one car);
* `fill_holes`: fill background holes enclosed by the car that are smaller than `MAX_HOLE_SHARE` of the
  car's area (pinholes in the body), sparing large enclosed gaps such as the gap between the wheels;
* `drop_blobs`: drop car components smaller than `MAX_BLOB_SHARE` of the largest one that lie more than
  `MIN_BLOB_GAP` of the image diagonal away from it (spots on the studio floor), keeping near fragments.
A pixel switched to background gets min(level, 127), one switched to car max(level, 128): the map stays a
probability map whose 0.5 decision is the post-processed mask.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
from scipy import ndimage

from oof import Store
from oof.format import CAR_LEVEL
from stacking.crossfit import MapWriter, TestClock, write_each_map

MAX_HOLE_SHARE = 0.005
MAX_BLOB_SHARE = 0.05
MIN_BLOB_GAP = 0.02


def _components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels (H, W) int32, areas (n,) of components 1..n-1 at index 1..) of a bool mask, 8-connected."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return labels, stats[:, cv2.CC_STAT_AREA]


def largest_component(car: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of bool mask `car` (all False when empty)."""
    labels, areas = _components(car)
    if len(areas) < 2:
        return np.zeros_like(car, dtype=bool)
    return labels == 1 + int(np.argmax(areas[1:]))


def fill_holes(car: np.ndarray, max_share: float = MAX_HOLE_SHARE) -> np.ndarray:
    """`car` with enclosed background holes (4-connected, not touching the border) under max_share of its area
    filled."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats((~car).astype(np.uint8), connectivity=4)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    small = stats[:, cv2.CC_STAT_AREA] <= max_share * max(int(np.count_nonzero(car)), 1)
    small[0] = False  # label 0 is the car itself
    small[border] = False
    return car | small[labels]


def drop_blobs(car: np.ndarray, max_share: float = MAX_BLOB_SHARE, min_gap: float = MIN_BLOB_GAP) -> np.ndarray:
    """`car` without small components far from the largest one (see the module docstring)."""
    labels, areas = _components(car)
    if len(areas) < 3:
        return car
    main = 1 + int(np.argmax(areas[1:]))
    distance = cv2.distanceTransform((labels != main).astype(np.uint8), cv2.DIST_L2, 3)
    gap = min_gap * float(np.hypot(*car.shape))
    nearest = np.asarray(ndimage.minimum(distance, labels, np.arange(len(areas))), dtype=np.float64)
    drop = (areas < max_share * areas[main]) & (nearest > gap)
    drop[[0, main]] = False
    return car & ~drop[labels]


OPERATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "largest": largest_component,
    "fill_holes": fill_holes,
    "drop_blobs": drop_blobs,
}


def postprocess_map(proba: np.ndarray, operation: str) -> np.ndarray:
    """(H, W) uint8 map whose >= 128 pixels are `operation` applied to the >= 128 pixels of `proba`."""
    if operation not in OPERATIONS:
        raise ValueError(f"unknown post-processing {operation!r}; valid: {', '.join(OPERATIONS)}")
    car = proba >= CAR_LEVEL
    kept = OPERATIONS[operation](car)
    return np.where(
        kept & ~car, np.maximum(proba, CAR_LEVEL), np.where(car & ~kept, np.minimum(proba, CAR_LEVEL - 1), proba)
    )


def postprocessed_name(entry: str, operation: str) -> str:
    return f"{entry}.{operation}"


def postprocess_spec(source: Store, entry: str, operation: str) -> dict:
    """What the post-processed entry's maps depend on: the operation and the exact maps of `entry`."""
    return {
        "entry": postprocessed_name(entry, operation),
        "of": entry,
        "operation": operation,
        "source_generation": source.metadata(entry)["generation"],
    }


def write_postprocessed(
    source: Store, entry: str, operation: str, writer: MapWriter, clock: TestClock | None = None
) -> None:
    """Write `operation` applied to every OOF map (to its fold) and test map of `entry` in `source`."""
    write_each_map(
        source, entry, writer, lambda split, img: postprocess_map(source.read(entry, split, img), operation), clock
    )
