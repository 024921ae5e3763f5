"""RLE encode and decode on 1918x1280 car-like masks against the plain numpy versions everyone copies."""
from __future__ import annotations

import numpy as np

from bench.common import markdown_table, median_seconds
from carvana.dataset import KAGGLE_SIZE
from carvana.rle import rle_decode, rle_encode

TITLE = "RLE encode / decode, 1918x1280 car-like masks"


def plain_encode(mask: np.ndarray) -> str:
    """The Kaggle kernel version: flatten, pad, np.where(p[1:] != p[:-1]), join of str(x)."""
    pixels = mask.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def loop_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """The Kaggle kernel version: a Python loop over the runs."""
    numbers = rle.split()
    starts = np.asarray(numbers[0::2], dtype=int) - 1
    lengths = np.asarray(numbers[1::2], dtype=int)
    mask = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for start, length in zip(starts, lengths):
        mask[start:start + length] = 1
    return mask.reshape(shape)


def car_like_masks(n: int, seed: int = 0) -> list[np.ndarray]:
    """Filled car silhouettes (body, cabin, wheels with spoke gaps) with a ragged outline."""
    import cv2

    width, height = KAGGLE_SIZE
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(n):
        mask = np.zeros((height, width), np.uint8)
        cx, cy = width // 2 + rng.integers(-80, 80), height // 2 + rng.integers(-40, 40)
        half = rng.integers(500, 750)
        cv2.rectangle(mask, (cx - half, cy - 120), (cx + half, cy + 160), 1, -1)
        cv2.ellipse(mask, (cx, cy - 120), (int(half * 0.6), 170), 0, 180, 360, 1, -1)
        for wx in (cx - half + 200, cx + half - 200):
            cv2.circle(mask, (wx, cy + 170), 120, 1, -1)
            for spoke in range(5):  # spoke gaps: the background shows through the rims
                angle = spoke * 72 + rng.integers(0, 72)
                cv2.ellipse(mask, (wx, cy + 170), (80, 80), angle, 0, 30, 0, -1)
        noise = rng.random((height, width)) < 0.002
        mask[cv2.dilate(mask, np.ones((3, 3), np.uint8)).astype(bool) & noise] ^= 1  # ragged edges
        masks.append(mask)
    return masks


def run(quick: bool) -> str:
    masks = car_like_masks(3 if quick else 8)
    shape = masks[0].shape
    rles = [rle_encode(m) for m in masks]
    exact = all(plain_encode(m) == r for m, r in zip(masks, rles))
    exact &= all(np.array_equal(loop_decode(r, shape), rle_decode(r, shape)) for r in rles)
    exact &= all(np.array_equal(rle_decode(r, shape), m) for m, r in zip(masks, rles))
    repeats = 3 if quick else 7
    timings = {
        "encode": (lambda: [rle_encode(m) for m in masks], lambda: [plain_encode(m) for m in masks]),
        "decode": (lambda: [rle_decode(r, shape) for r in rles], lambda: [loop_decode(r, shape) for r in rles]),
    }
    rows = []
    for name, (ours, reference) in timings.items():
        ours_s = median_seconds(ours, repeats) / len(masks)
        ref_s = median_seconds(reference, repeats) / len(masks)
        ref_name = "plain numpy encode (np.where + join of str)" if name == "encode" else "loop over runs"
        rows.append([name, f"{ours_s * 1e3:.2f}", ref_name, f"{ref_s * 1e3:.2f}", f"{ref_s / ours_s:.1f}x"])
    n_runs = np.mean([len(r.split()) / 2 for r in rles])
    return (
        f"{len(masks)} masks of 1918x1280, {n_runs:.0f} runs each on average; median of {repeats} runs; "
        f"outputs exactly equal to the references: **{exact}**.\n\n"
        + markdown_table(["op", "ours ms/mask", "reference", "reference ms/mask", "speed-up"], rows)
    )
