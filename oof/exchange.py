"""Probability maps made elsewhere (a teammate's model, a notebook, nnU-Net) turned into the store's levels.

Teams exchange maps in a handful of forms, told apart here by the files themselves:

| file | holds | level (probability x 255) |
|---|---|---|
| 8-bit grayscale PNG | probability x 255 | as is |
| 16-bit grayscale PNG | probability x 65535 | rounded / 257 |
| `.npy` uint8 | probability x 255 | as is |
| `.npy` uint16 | probability x 65535 | rounded / 257 |
| `.npy` float16/32/64 | probabilities in [0, 1] (or logits, when the caller says so) | rounded x 255 |
| `.npy` bool | a hard mask | 0 or 255 |

Any size with the photos' aspect (within 1%) is accepted and resized once to the store's resolution
(area when shrinking, bilinear when enlarging, as `carvana.resize` does everywhere); arrays load
without pickles. Every refusal is a WorkbenchError naming the file and the fix.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from carvana.errors import WorkbenchError
from carvana.resize import resize_proba
from oof.format import canonical_id, to_uint8

__all__ = ["ASPECT_TOLERANCE", "MAP_EXTENSIONS", "map_files", "read_foreign_map", "to_levels"]

MAP_EXTENSIONS = (".png", ".npy")
ASPECT_TOLERANCE = 0.01  # a map whose W/H is further than 1% from the photos' was cropped or padded: refused


def map_files(folder: Path) -> dict[str, list[Path]]:
    """{image id: the map files for it} of `<img>.<ext>` files in `folder` (`<img>.jpg.<ext>` too).

    Files with another extension, or hidden ones, are ignored; a name that is not an image id is an error.
    """
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in MAP_EXTENSIONS or not path.is_file():
            continue
        stem = path.name[: -len(path.suffix)]
        try:
            img = canonical_id(stem)
        except ValueError:
            raise WorkbenchError(
                f"{path}: the name is not <car>_<NN>{path.suffix} (a photo id with 12 lowercase hex digits and the "
                "angle 01..16); name each map after its photo"
            ) from None
        found.setdefault(img, []).append(path)
    return found


def read_foreign_map(path: Path) -> tuple[np.ndarray, str]:
    """(the file's array, its format name); WorkbenchError for a file that is not a single-channel map."""
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise WorkbenchError(
                f"{path}: not a plain .npy array ({error}); save maps with np.save(path, array) (no pickles)"
            ) from None
        kind = f"npy-{array.dtype}"
    else:
        array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if array is None:
            raise WorkbenchError(f"{path}: does not decode as a PNG; re-export the map")
        kind = f"png{8 * array.dtype.itemsize}"
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:2])
    if array.ndim == 3 and kind.startswith("png") and np.all(array == array[..., :1]):
        array = array[..., 0]  # a grey map saved as RGB(A) with equal channels
    if array.ndim != 2:
        raise WorkbenchError(
            f"{path}: holds an array of shape {array.shape}; a probability map is one channel (H, W): "
            "save the car channel only"
        )
    return array, kind


def to_levels(
    array: np.ndarray, path: Path, resolution: tuple[int, int], photo_hw: tuple[int, int], logits: bool = False
) -> np.ndarray:
    """(H, W) uint8 probability x 255 at the store's `resolution` (H, W) from a foreign map `array`.

    `photo_hw` is the photos' (H, W), whose aspect the map must keep; `logits` says that float arrays hold
    logits (a sigmoid is applied). WorkbenchError naming `path` for NaN, infinity, values out of range, an
    unknown dtype or another aspect.
    """
    _check_aspect(array.shape, path, photo_hw)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        proba = array.astype(np.float32) / 65535.0
    elif array.dtype == np.uint8:
        if array.shape == tuple(resolution):
            return array  # exactly the store's levels: no rounding on the way
        proba = array.astype(np.float32) / 255.0
    elif np.issubdtype(array.dtype, np.floating):
        proba = _float_proba(array, path, logits)
    else:
        raise WorkbenchError(
            f"{path}: dtype {array.dtype} is not a probability map; use uint8 (x 255), uint16 (x 65535) or floats"
        )
    if proba.shape != tuple(resolution):  # in float32, clipped: interpolation may overshoot 1 by an ulp
        proba = np.clip(resize_proba(np.ascontiguousarray(proba, dtype=np.float32), *resolution), 0.0, 1.0)
    return to_uint8(proba, str(path))


def _float_proba(array: np.ndarray, path: Path, logits: bool) -> np.ndarray:
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        bad = "NaN" if np.isnan(values).any() else "infinity"
        raise WorkbenchError(f"{path}: holds {bad}; fix the model's output (a missing sigmoid or a diverged fold)")
    if logits:
        return 0.5 * (1.0 + np.tanh(0.5 * values))  # the sigmoid, without overflow for large logits
    low, high = float(values.min(initial=0.0)), float(values.max(initial=0.0))
    if low < 0.0 or high > 1.0:
        raise WorkbenchError(
            f"{path}: values span [{low:.4g}, {high:.4g}], outside [0, 1]: these look like logits; "
            "import them with --logits (or save probabilities)"
        )
    return values


def _check_aspect(shape: tuple[int, ...], path: Path, photo_hw: tuple[int, int]) -> None:
    height, width = shape
    photo_aspect = photo_hw[1] / photo_hw[0]
    if abs(width / height - photo_aspect) > ASPECT_TOLERANCE * photo_aspect:
        raise WorkbenchError(
            f"{path}: map is {width}x{height} (aspect {width / height:.4f}), "
            f"the photos are {photo_hw[1]}x{photo_hw[0]} "
            f"(aspect {photo_aspect:.4f}); maps must cover the whole photo: undo the crop or padding before export"
        )
