"""The last mile at Kaggle's size (1918x1280): writing, validating, blending and scoring submissions."""
from __future__ import annotations

import gzip
import multiprocessing
import os
import shutil
import tempfile
import time
import zlib
from pathlib import Path

import cv2
import numpy as np

from bench.common import markdown_table, median_seconds
from carvana import KAGGLE_SIZE, dice, rle_decode, rle_encode
from carvana.submission import blend_submissions, iter_rows, score_submission, validate_submission, write_submission
from carvana.submission.files import GZIP_LEVEL

TITLE = "Submissions: write, validate, blend, score at 1918x1280"
WIDTH, HEIGHT = KAGGLE_SIZE
N_TEST_ROWS = 100_064


def car_probability_map(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """An (h, w) uint8 probability x 255 map: a blurred car silhouette (body, cabin, spoked wheels)
    with a wobbly, uncertain outline and a half-sure window, like a U-Net's output."""
    h, w = shape
    s = w / WIDTH
    mask = np.zeros((h, w), np.float32)
    cx, cy = int(w / 2 + rng.integers(-80, 80) * s), int(h / 2 + rng.integers(-40, 40) * s)
    half = rng.integers(500, 750)
    pts = lambda *xy: tuple(int(v * s) for v in xy)  # noqa: E731 - full-size coordinates to this size
    cv2.rectangle(mask, (cx - int(half * s), cy - int(120 * s)), (cx + int(half * s), cy + int(160 * s)), 1.0, -1)
    cv2.ellipse(mask, (cx, cy - int(120 * s)), pts(half * 0.6, 170), 0, 180, 360, 1.0, -1)
    cv2.ellipse(mask, (cx, cy - int(150 * s)), pts(half * 0.4, 90), 0, 180, 360, 0.55, -1)  # glass
    for wx in (cx - int((half - 200) * s), cx + int((half - 200) * s)):
        cv2.circle(mask, (wx, cy + int(170 * s)), int(120 * s), 1.0, -1)
        for spoke in range(5):
            cv2.ellipse(mask, (wx, cy + int(170 * s)), pts(80, 80), spoke * 72 + rng.integers(0, 72), 0, 30, 0.0, -1)
    noise = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 6 * s + 1)
    prob = cv2.GaussianBlur(mask, (0, 0), 3 * s + 0.5) + 0.8 * noise * (mask > 0.02) * (mask < 0.98)
    return (np.clip(prob, 0, 1) * 255).round().astype(np.uint8)


class MapTable:
    """A picklable read_map over a few pre-made maps; consecutive ids get different maps, so gzip
    (32 kB window, ~17 kB rows) sees no repeated row. `png` keeps the maps as PNG bytes and decodes
    on every read, as an image-file store would."""

    def __init__(self, maps: list[np.ndarray], png: bool = False) -> None:
        self.png = png
        self.maps = [cv2.imencode(".png", m)[1] for m in maps] if png else maps

    def __call__(self, img: str) -> np.ndarray:
        car, angle = img[:-4].split("_")
        item = self.maps[(int(car, 16) * 16 + int(angle)) % len(self.maps)]
        return cv2.imdecode(item, cv2.IMREAD_UNCHANGED) if self.png else item


def plain_encode(mask: np.ndarray) -> str:
    """The Kaggle kernel encoder everyone copies: flatten, pad, np.where, join of str(x)."""
    pixels = np.concatenate([[0], mask.flatten(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def reference_write(ids: list[str], read_map: MapTable, out_path: Path) -> None:
    """The usual kernel loop: float probabilities, float resize, > 0.5, plain encoder, gzip level 9."""
    with gzip.open(out_path, "wt") as out:
        out.write("img,rle_mask\n")
        for img in ids:
            prob = cv2.resize(read_map(img).astype(np.float32) / 255, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR)
            out.write(f"{img},{plain_encode(prob > 0.5)}\n")


def reference_blend(paths: list[Path], out_path: Path) -> None:
    """Decode every file's mask to a full pixel array, sum the votes, threshold, re-encode."""
    with gzip.open(out_path, "wt", compresslevel=GZIP_LEVEL) as out:
        out.write("img,rle_mask\n")
        for rows in zip(*(iter_rows(p) for p in paths)):
            votes = sum(rle_decode(rle, (HEIGHT, WIDTH)).astype(np.float32) for _, _, rle in rows)
            out.write(f"{rows[0][1]},{rle_encode(votes > len(paths) / 2)}\n")


def reference_score(sub_path: Path, truth_path: Path) -> float:
    scores = [dice(rle_decode(a, (HEIGHT, WIDTH)), rle_decode(b, (HEIGHT, WIDTH)))
              for (_, _, a), (_, _, b) in zip(iter_rows(sub_path), iter_rows(truth_path))]
    return float(np.mean(scores))


def stage_times(prob: np.ndarray, text: bytes, repeats: int) -> list[list[object]]:
    """Per-mask milliseconds of each step of the writer, one step at a time, in this process;
    `prob` is a store-size map, `text` 8 real rows of a submission (for gzip)."""
    big = cv2.resize(prob, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR)
    mask = big >= 128
    png = MapTable([prob], png=True)
    steps = [
        ("read map (PNG decode, 960x640)", lambda: png("000000000000_01.jpg")),
        ("resize uint8 960x640 -> 1918x1280 (INTER_LINEAR)", lambda: cv2.resize(prob, (WIDTH, HEIGHT))),
        ("resize float32 (the usual kernel way)", lambda: cv2.resize(prob.astype(np.float32) / 255, (WIDTH, HEIGHT))),
        ("threshold uint8 >= 128", lambda: big >= 128),
        ("encode, carvana.rle_encode", lambda: rle_encode(mask)),
        ("encode, plain Kaggle encoder", lambda: plain_encode(mask)),
    ]
    rows = [[name, f"{median_seconds(fn, repeats) * 1e3:.2f}", ""] for name, fn in steps]
    for level in (1, 6, 9):
        seconds = median_seconds(lambda level=level: zlib.compress(text, level), repeats) / 8
        ratio = len(text) / len(zlib.compress(text, level))
        rows.append([f"gzip level {level} of one row ({len(text) // 8 // 1000} kB)", f"{seconds * 1e3:.2f}",
                     f"ratio {ratio:.1f}, {N_TEST_ROWS * len(text) / 8 / ratio / 1e6:.0f} MB for 100,064 rows"])
    return rows


def _burn(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def available_cores() -> float:
    """How many cores two CPU-bound processes actually get right now (2.0 on an idle 2-core box):
    other work on the machine slows parallel writers more than serial ones."""
    start = time.perf_counter()
    _burn(2_000_000)
    one = time.perf_counter() - start
    with multiprocessing.get_context("forkserver").Pool(2) as pool:
        pool.map(_burn, [10, 10])  # start-up outside the timing
        start = time.perf_counter()
        pool.map(_burn, [2_000_000, 2_000_000])
        two = time.perf_counter() - start
    return 2 * one / two


def writer_rows(ids: list[str], n_small: int, store: MapTable, out: Path, repeats: int) -> list[list[object]]:
    """Each writer timed on n_small and on all ids: the difference gives the steady rate, the rest
    the fixed cost (pool start-up, the first reads)."""
    full = MapTable([cv2.resize(m, (WIDTH, HEIGHT)) for m in store.maps])
    png = MapTable(store.maps, png=True)
    writers = [
        ("write_submission, n_jobs=2, 960x640 maps", lambda i: write_submission(i, store, out, progress=False)),
        ("write_submission, n_jobs=1 (same encoder, one process)",
         lambda i: write_submission(i, store, out, n_jobs=1, progress=False)),
        ("write_submission, n_jobs=2, 1918x1280 maps (no resize)",
         lambda i: write_submission(i, full, out, progress=False)),
        ("write_submission, n_jobs=2, 960x640 maps decoded from PNG each read",
         lambda i: write_submission(i, png, out, progress=False)),
        ("reference: kernel loop (float resize, plain encoder, gzip level 9), 960x640",
         lambda i: reference_write(i, store, out)),
    ]
    rows = []
    for name, write in writers:
        small = median_seconds(lambda write=write: write(ids[:n_small]), repeats, warmup=0)
        big = median_seconds(lambda write=write: write(ids), repeats, warmup=0)
        rate = (len(ids) - n_small) / (big - small)
        rows.append([name, f"{rate:.0f}", f"{max(small - n_small / rate, 0):.2f}", f"{len(ids) / big:.0f}",
                     f"{N_TEST_ROWS / rate / 60:.0f}"])
    return rows


def row_rate_rows(ids: list[str], inputs: list[Path], truth: Path, tmp: Path, repeats: int) -> list[list[object]]:
    """Rows/s of validating, blending (3 files) and scoring, against the decode-everything references."""
    steps = [
        ("validate_submission", lambda: validate_submission(inputs[0], ids), None, None),
        ("blend_submissions, 3 files, majority", lambda: blend_submissions(inputs, tmp / "blend.csv.gz"),
         "decode to pixel arrays, sum, threshold, encode", lambda: reference_blend(inputs, tmp / "ref.csv.gz")),
        ("score_submission", lambda: score_submission(inputs[0], truth),
         "decode both + carvana.dice", lambda: reference_score(inputs[0], truth)),
    ]
    rows = []
    for name, fn, ref_name, ref_fn in steps:
        ours = len(ids) / median_seconds(fn, repeats, warmup=0)
        ref = len(ids) / median_seconds(ref_fn, repeats, warmup=0) if ref_fn else None
        rows.append([name, f"{ours:.0f}", f"{N_TEST_ROWS / ours:.0f}", ref_name or "-",
                     f"{ref:.0f}" if ref else "-", f"{ours / ref:.1f}x" if ref else "-"])
    return rows


def run(quick: bool) -> str:
    rng = np.random.default_rng(0)
    n_masks, n_small, repeats = (96, 32, 1) if quick else (320, 32, 2)
    load, cores = os.getloadavg()[0], available_cores()
    ids = [f"{car:012x}_{angle:02d}.jpg" for car in range(n_masks // 16) for angle in range(1, 17)]
    store = MapTable([car_probability_map((640, 960), rng) for _ in range(8)])
    tmp = Path(tempfile.mkdtemp(prefix="bench_submission_"))
    try:
        write_table = writer_rows(ids, n_small, store, tmp / "sub.csv.gz", repeats)
        # Three submissions from maps shifted a little, and a fourth as the truth.
        paths = [write_submission(ids, MapTable([np.roll(m, 3 * k, axis=1) for m in store.maps]),
                                  tmp / f"sub{k}.csv.gz", progress=False) for k in range(4)]
        inputs, truth = paths[:3], paths[3]
        rate_table = row_rate_rows(ids, inputs, truth, tmp, repeats + 1)
        same = iter_rows_equal(tmp / "blend.csv.gz", tmp / "ref.csv.gz") and (
            score_submission(inputs[0], truth).mean_dice == reference_score(inputs[0], truth))
        with gzip.open(inputs[0], "rb") as f:
            text = b"".join(f.readline() for _ in range(9))[len(b"img,rle_mask\n"):]
        stages = stage_times(store.maps[0], text, 5 if quick else 9)
        kb_per_row = inputs[0].stat().st_size / len(ids) / 1e3
        n_runs = runs_per_mask(inputs[0])
    finally:
        shutil.rmtree(tmp)
    return (
        f"Writers: {len(ids)} and {n_small} masks (8 distinct smooth car-like maps, ~{n_runs:.0f} runs each), "
        f"median of {repeats} run(s); steady rate from the difference of the two, fixed cost = the rest "
        f"(process pool start-up, pickling the reader). gzip level {GZIP_LEVEL}; every write is validated "
        f"before its rename (included). Target: 50 masks/s. Load average when started: {load:.1f}; "
        f"two CPU-bound processes got {cores:.1f} cores (2.0 = an idle 2-core machine; other work slows "
        f"n_jobs=2 most).\n\n"
        + markdown_table(["writer", "masks/s steady", "fixed s", f"masks/s at {len(ids)}", "min for 100,064"],
                         write_table)
        + f"\n\nRows/s on {len(ids)}-row files (~{kb_per_row:.0f} kB gzipped per row, i.e. "
        f"~{kb_per_row * N_TEST_ROWS / 1e3:.0f} MB for 100,064 rows); blend output identical to the reference "
        f"and score equal to it: **{same}**.\n\n"
        + markdown_table(["step", "rows/s", "s for 100,064", "reference", "reference rows/s", "speed-up"], rate_table)
        + "\n\nWhere the writer's time goes, per mask, one process (ms):\n\n"
        + markdown_table(["step", "ms/mask", "note"], stages)
    )


def iter_rows_equal(a: Path, b: Path) -> bool:
    return all(x[1:] == y[1:] for x, y in zip(iter_rows(a), iter_rows(b), strict=True))


def runs_per_mask(path: Path) -> float:
    return float(np.mean([len(rle.split()) / 2 for _, _, rle in iter_rows(path)]))
