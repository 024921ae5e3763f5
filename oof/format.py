"""How one probability map is named and stored on disk: a zstd-compressed `.npy` file, written atomically.

Why this format (measured by `bench/bench_store.py`): smooth probability maps are mostly exact 0 and
255 with a thin soft band, so a general-purpose compressor on the raw bytes is as small as PNG
(~0.03-0.05 bytes/pixel) and decodes 20-40x faster, which keeps the stacker from being I/O bound.
Each file is a complete `.npy` stream compressed as one zstd frame, so `zstd -d x.npy.zst` and
`np.load` open it without this package.

Image ids are canonical without extension: `<car>_<NN>` (12 lowercase hex digits, angle 01..16);
`<car>_<NN>.jpg` is accepted everywhere and means the same image.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import zstandard

from carvana.atomic import write_atomic, write_json_atomic  # noqa: F401 (re-exported for oof's modules)
from carvana.dataset import ID_PATTERN
from carvana.errors import WorkbenchError

SPLITS = ("train", "test")
MAP_SUFFIX = ".npy.zst"
FORMAT = "npy+zstd"
FORMAT_VERSION = 1
CAR_LEVEL = 128  # car = probability >= 0.5 = level >= 128 of a map stored as probability x 255: its one home
ZSTD_LEVEL = 3  # level 1 is ~2x faster to write but no smaller; above 3 costs write time for ~2% size
MEMBER_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
FOLD_DIR_PATTERN = re.compile(r"^fold(\d+)$")

_NPY_HEADER_MAX = 4096  # .npy v1 headers of a 2-D uint8 array are 128 bytes; more means a foreign file


def canonical_id(img: str) -> str:
    """`<car>_<NN>` from `<car>_<NN>` or `<car>_<NN>.jpg`; ValueError for anything else."""
    stem = img.removesuffix(".jpg")
    if not ID_PATTERN.match(stem):
        raise ValueError(f"{img!r} is not an image id <12 hex digits>_<01..16> (optionally with .jpg)")
    return stem


def retrain_hint(member: str) -> str:
    """The fix for a member whose maps are wrong: retraining it rewrites all of them (fold jobs that are done skip)."""
    return f"re-run `workbench fold-train --retrain {member}`"


# The run folder's stores and the folders beside them, named once (`workbench.runfolder.RunPaths` gives the paths)
MEMBERS_STORE = "oof"  # RUN/oof holds the members' OOF and test maps
ENTRIES_STORE = "stack"  # RUN/stack holds stacking entries, rebuilt by `workbench stack`, not `fold-train`
TRAINED_DIR = "members"  # RUN/members/<member>/fold<k>: checkpoints, logs, claims and markers of training
CACHE_DIR = "cache"  # RUN/cache: photos and masks decoded at a member's input size
BOARDS_DIR = "tensorboard"  # RUN/tensorboard/<member>/fold<k>: training curves and validation overlays


def redo_hint(member_dir: Path) -> str:
    """The command that rewrites a member's maps: `fold-train --retrain <member>`, or for a stacking entry
    (a member of RUN/stack) deleting it so that `workbench stack` rebuilds it."""
    if member_dir.parent.name == ENTRIES_STORE:
        return f"delete the entry (`rm -r {member_dir}`) and re-run `workbench stack` (it rebuilds it)"
    return retrain_hint(member_dir.name)


def _member_dir_of(path: Path) -> Path:
    """<store>/<member> of a map file `<member>/test/<img>` or `<member>/train/fold<k>/<img>`."""
    return path.parent.parent if path.parent.name == "test" else path.parent.parent.parent


def check_member_name(member: str) -> str:
    """The member name, if it is safe as a folder name (letters, digits, `_`, `.`, `-`)."""
    if not isinstance(member, str) or not MEMBER_PATTERN.match(member):
        raise ValueError(f"member name {member!r} must be letters, digits, '_', '.', '-' (e.g. unet_resnet34_512)")
    return member


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split {split!r} must be one of {SPLITS}")
    return split


def fold_dir_name(fold: int) -> str:
    return f"fold{fold}"


def to_uint8(proba: np.ndarray, where: str) -> np.ndarray:
    """(H, W) uint8 probability x 255 from uint8 (kept as is) or floats in [0, 1] (rounded x 255).

    `where` names the map in the error raised for NaN or out-of-range floats.
    """
    proba = np.asarray(proba)
    if proba.ndim != 2:
        raise ValueError(f"{where}: a probability map is (H, W), got shape {proba.shape}")
    if proba.dtype == np.uint8:
        return proba
    if not np.issubdtype(proba.dtype, np.floating):
        raise TypeError(f"{where}: probability map must be uint8 or float in [0, 1], got {proba.dtype}")
    low, high = float(proba.min(initial=0.0)), float(proba.max(initial=0.0))
    if not (0.0 <= low and high <= 1.0):  # also false for NaN
        raise WorkbenchError(
            f"{where}: probabilities span [{low}, {high}], outside [0, 1] (NaN or a missing sigmoid); "
            "fix the member's prediction and re-run `workbench fold-train`"
        )
    # float64 so that a float32 input rounds exactly like round(float(p) * 255), half to even.
    return np.rint(proba.astype(np.float64) * 255.0).astype(np.uint8)


def encode_map(proba: np.ndarray) -> bytes:
    """The file bytes of a (H, W) uint8 map: one zstd frame holding a `.npy` stream."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(proba), allow_pickle=False)
    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(buffer.getbuffer())


def decode_map(data: bytes, path: Path, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 map from file bytes; WorkbenchError naming `path` if damaged or not `shape`."""
    try:
        raw = zstandard.ZstdDecompressor().decompress(data)
        stream = io.BytesIO(raw[:_NPY_HEADER_MAX])
        version = np.lib.format.read_magic(stream)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        got_shape, fortran_order, dtype = read_header(stream)
        array = np.frombuffer(raw, dtype=np.uint8, offset=stream.tell())
    except (zstandard.ZstdError, ValueError) as error:
        raise WorkbenchError(f"{path}: damaged map ({error}); {redo_hint(_member_dir_of(Path(path)))}") from None
    if dtype != np.uint8 or fortran_order or tuple(got_shape) != tuple(shape) or array.size != shape[0] * shape[1]:
        raise WorkbenchError(
            f"{path}: holds a {dtype} map of shape {tuple(got_shape)}, the store's maps are uint8 {tuple(shape)}; "
            f"{redo_hint(_member_dir_of(Path(path)))}"
        )
    return array.reshape(shape)


def read_map(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 map read from `path` (see decode_map); FileNotFoundError passes through."""
    with open(path, "rb") as f:
        return decode_map(f.read(), path, shape)
