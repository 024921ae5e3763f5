"""The OOF store's map format against raw `.npy` (the plain reference), PNG, lossless WebP and zlib.

Realistic maps: a car-like mask (ellipse body, cabin, wheels, antenna) blurred into a soft boundary
band a few pixels wide, with noise in the band, quantised to uint8: mostly exact 0 and 255. A second,
pessimistic kind keeps faint noise (values 1-3) over the whole background, as an unsaturated model
would emit. Files are read back right after writing, so reads come from the OS page cache: they
measure decoding, not the disk (from a cold disk, smaller files read proportionally faster).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from bench.common import markdown_table, median_seconds
from oof import Store
from oof.format import ZSTD_LEVEL

TITLE = "OOF store: map format (bytes/pixel, write and read ms per map)"
SIZES = ((320, 480), (1280, 1918))  # (H, W): the demo's store and Kaggle's full resolution
FOLDS_HASH = hashlib.sha256(b"bench").hexdigest()
REFERENCE = "raw .npy (np.save / np.load): reference"


def realistic_map(shape: tuple[int, int], rng: np.random.Generator, saturated: bool = True) -> np.ndarray:
    """(H, W) uint8 probability x 255 of a car-like silhouette with a soft, noisy boundary band."""
    height, width = shape
    scale = width / 480
    mask = np.zeros(shape, np.uint8)
    cx, cy = int(width * rng.uniform(0.42, 0.58)), int(height * rng.uniform(0.5, 0.6))
    body = (int(width * rng.uniform(0.33, 0.4)), int(height * rng.uniform(0.14, 0.19)))
    cv2.ellipse(mask, (cx, cy), body, rng.uniform(-4, 4), 0, 360, 1, -1)
    cv2.rectangle(mask, (cx - int(width * 0.2), cy - int(height * 0.27)), (cx + int(width * 0.15), cy), 1, -1)
    for dx in (-0.25, 0.25):
        cv2.circle(mask, (cx + int(width * dx), cy + int(height * 0.12)), int(height * 0.09), 1, -1)
    tip = (cx + int(width * 0.12), cy - int(height * 0.4))
    cv2.line(mask, (cx + int(width * 0.1), cy - int(height * 0.27)), tip, 1, max(1, int(scale)))
    proba = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), scale)
    band = cv2.dilate(((proba > 0.01) & (proba < 0.99)).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    proba[band] += rng.normal(0, 0.05, int(band.sum())).astype(np.float32)
    if not saturated:
        faint = np.abs(rng.normal(0, 0.004, shape)).astype(np.float32)
        proba += np.where(proba < 0.5, faint, -faint)
    return np.rint(np.clip(proba, 0, 1) * 255).astype(np.uint8)


class _Files:
    """A per-image file format the store is compared with: `save(path, proba)` and `load(path) -> proba`."""

    def __init__(self, key: str, name: str, save: Callable, load: Callable) -> None:
        self.key, self.name, self.save, self.load = key, name, save, load

    def write(self, folder: Path, i: int, proba: np.ndarray) -> None:
        self.save(folder / f"{i}.{self.key}", proba)

    def read(self, folder: Path, i: int) -> np.ndarray:
        return self.load(folder / f"{i}.{self.key}")


def _encoded(encode: Callable[[np.ndarray], bytes], decode: Callable[[bytes], np.ndarray]) -> tuple[Callable, Callable]:
    return (lambda path, proba: path.write_bytes(encode(proba))), (lambda path: decode(path.read_bytes()))


def _candidates(shape: tuple[int, int], with_webp: bool) -> list[_Files]:
    def gray(data: bytes) -> np.ndarray:
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)

    def png(level: int) -> tuple[Callable, Callable]:
        return _encoded(lambda p: cv2.imencode(".png", p, [cv2.IMWRITE_PNG_COMPRESSION, level])[1].tobytes(), gray)

    files = [
        _Files("npy", REFERENCE, np.save, np.load),
        _Files("png1", "PNG (cv2, level 1)", *png(1)),
        _Files("png6", "PNG (cv2, level 6)", *png(6)),
        _Files("zlib1", "raw bytes + zlib level 1 (stdlib)", *_encoded(
            lambda p: zlib.compress(p.tobytes(), 1),
            lambda d: np.frombuffer(zlib.decompress(d), np.uint8).reshape(shape))),
    ]
    if with_webp:
        webp = _encoded(lambda p: cv2.imencode(".webp", p, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes(), gray)
        files.append(_Files("webp", "WebP lossless (cv2, quality 101)", *webp))
    return files


def _median_ms_each(fn: Callable[[int], object], n: int) -> float:
    """Median wall time in ms of fn(i) over i in range(n), each timed once."""
    times = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".json"))


def _measure(maps: list[np.ndarray], root: Path, with_webp: bool) -> tuple[list[list], Store, list[str]]:
    """Rows of the format table for one map size, and the store and ids written (for read_many)."""
    shape, n_maps, n_pixels = maps[0].shape, len(maps), maps[0].size * len(maps)
    imgs = [f"{i:012x}_01" for i in range(n_maps)]
    store = Store(root / "oof")
    writer = store.open_member("bench", {"maps": n_maps}, FOLDS_HASH, shape, reset=True)
    results = {"store": (
        _median_ms_each(lambda i: writer.write("test", imgs[i], maps[i]), n_maps),
        _median_ms_each(lambda i: store.read("bench", "test", imgs[i]), n_maps),
        _folder_bytes(root / "oof" / "bench" / "test"),
    )}
    for files in _candidates(shape, with_webp):
        folder = root / files.key
        folder.mkdir()
        write_ms = _median_ms_each(lambda i, files=files, folder=folder: files.write(folder, i, maps[i]), n_maps)
        assert all(np.array_equal(files.read(folder, i), maps[i]) for i in range(n_maps)), files.name
        read_ms = _median_ms_each(lambda i, files=files, folder=folder: files.read(folder, i), n_maps)
        results[files.name] = (write_ms, read_ms, _folder_bytes(folder))
    assert all(np.array_equal(a, b) for a, b in zip(store.read_many("bench", "test", imgs), maps))
    npy = results[REFERENCE]
    size = f"{shape[0]}x{shape[1]}"
    rows = []
    for name, (write_ms, read_ms, n_bytes) in results.items():
        label = f"oof.Store: .npy + zstd level {ZSTD_LEVEL} per map" if name == "store" else name
        rows.append([size, label, f"{n_bytes / n_pixels:.4f}", f"{npy[2] / n_bytes:.1f}x", f"{write_ms:.2f}",
                     f"{read_ms:.2f}", f"{npy[1] / read_ms:.2f}x"])
    return rows, store, imgs


def _read_many_rows(store: Store, imgs: list[str], root: Path, maps: list[np.ndarray]) -> list[list]:
    """Rows of the read_many table: whole calls, against a loop of np.load over the reference files."""
    n_maps, n_bytes = len(imgs), sum(m.nbytes for m in maps)
    size = f"{maps[0].shape[0]}x{maps[0].shape[1]}"
    npy_folder = root / "npy"

    def npy_loop() -> np.ndarray:
        out = np.empty((n_maps, *maps[0].shape), np.uint8)
        for i in range(n_maps):
            out[i] = np.load(npy_folder / f"{i}.npy")
        return out

    rows = []
    for label, fn in [
        ("raw .npy, np.load loop: reference", npy_loop),
        ("Store.read_many (default: 1 thread)", lambda: store.read_many("bench", "test", imgs)),
        ("Store.read_many, 2 threads", lambda: store.read_many("bench", "test", imgs, n_threads=2)),
    ]:
        seconds = median_seconds(fn, repeats=3)
        rate = [f"{n_maps / seconds:.0f}", f"{n_bytes / seconds / 1e6:.0f}"]
        rows.append([size, label, n_maps, f"{seconds * 1e3:.1f}", *rate])
    return rows


def _pessimistic_rows(shape: tuple[int, int], n_maps: int, root: Path) -> list[list]:
    """Bytes/pixel and read ms of the store vs .npy and PNG on maps whose background is not saturated."""
    rng = np.random.default_rng(1)
    maps = [realistic_map(shape, rng, saturated=False) for _ in range(n_maps)]
    return _measure(maps, root, with_webp=False)[0]


def run(quick: bool) -> str:
    counts = {(320, 480): 16, (1280, 1918): 4} if quick else {(320, 480): 64, (1280, 1918): 24}
    format_rows, many_rows, pessimistic, exact = [], [], [], []
    for shape in SIZES:
        rng = np.random.default_rng(0)
        maps = [realistic_map(shape, rng) for _ in range(counts[shape])]
        exact.append(np.mean([(m == 0) | (m == 255) for m in maps]))
        with tempfile.TemporaryDirectory() as tmp:
            rows, store, imgs = _measure(maps, Path(tmp), with_webp=True)
            format_rows += rows
            many_rows += _read_many_rows(store, imgs, Path(tmp), maps)
        with tempfile.TemporaryDirectory() as tmp:
            pessimistic += _pessimistic_rows(shape, max(4, counts[shape] // 4), Path(tmp))
    head = ["size (HxW)", "format", "bytes/pixel", "smaller than .npy", "write ms/map", "read ms/map",
            "read speed-up vs .npy"]
    return "\n\n".join([
        f"Per-map files of realistic probability maps ({counts[SIZES[0]]} at 320x480, {counts[SIZES[1]]} at "
        f"1280x1918; {exact[0]:.1%} and {exact[1]:.1%} of pixels exactly 0 or 255). Medians over maps; every "
        "format is read back and checked lossless. The store row is the real code path (`MemberWriter.write`, "
        "`Store.read`: atomic write, header and shape checks, a writable copy).",
        markdown_table(head, format_rows),
        "`Store.read_many` throughput (decoded uint8 MB/s, page cache warm) against a loop of `np.load` of raw "
        f".npy files into one array; {os.cpu_count()} cores.",
        markdown_table(["size (HxW)", "reader", "N maps", "ms per call", "maps/s", "MB/s"], many_rows),
        "Pessimistic maps: faint noise (1-3/255) over the whole background, as an unsaturated model emits.",
        markdown_table(head, pessimistic),
    ])
