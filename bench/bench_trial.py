"""Cost of one Optuna trial (threshold-only and weighted blend) with DiceEvaluator vs numpy brute force.

Synthetic but realistic maps: a car-like silhouette per image (body, cabin, wheels; width depends on
the angle), and per member a blurred, slightly shifted copy pushed through a steep logit with
low-frequency noise, so members saturate to 0/255 away from the car's edge and disagree in a thin band
near it. Images are generated one at a time and streamed into the evaluator.
"""
from __future__ import annotations

import math
import resource
import time
import tracemalloc

import cv2
import numpy as np

from bench.common import markdown_table, median_seconds
from stacking.evaluate import DiceEvaluator, brute_force_mean_dice, level_thresholds

TITLE = "Stacking trial: fast exact Dice evaluator vs brute force"
HEIGHT, WIDTH, N_MEMBERS = 640, 960, 5


def car_mask(rng: np.random.Generator, angle: int) -> np.ndarray:
    """(H, W) uint8 0/1 car silhouette; side views (angles 5, 13) are long, front/back views narrow."""
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    yaw = 2 * math.pi * (angle - 1) / 16
    half_len = int(WIDTH * (0.18 + 0.22 * abs(math.sin(yaw))) * rng.uniform(0.9, 1.1))
    cx, cy = int(WIDTH / 2 + rng.integers(-30, 30)), int(HEIGHT * 0.58)
    body_h = int(HEIGHT * 0.14 * rng.uniform(0.9, 1.1))
    cv2.ellipse(mask, (cx, cy), (half_len, body_h), 0, 0, 360, 1, -1)
    cv2.ellipse(mask, (cx - half_len // 8, cy - body_h), (int(half_len * 0.6), int(body_h * 0.9)), 0, 180, 360, 1, -1)
    for side in (-1, 1):
        cv2.circle(mask, (cx + side * int(half_len * 0.65), cy + body_h), int(body_h * 0.55), 1, -1)
    return mask


def member_map(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One member's (H, W) uint8 map: blurred shifted truth + low-frequency noise through a steep logit."""
    dx, dy = rng.integers(-2, 3, 2)
    shifted = np.roll(truth, (int(dy), int(dx)), axis=(0, 1)).astype(np.float32)
    soft = cv2.GaussianBlur(shifted, (0, 0), float(rng.uniform(1.5, 3.5)))
    noise = cv2.resize(rng.normal(0, 0.12, (HEIGHT // 32, WIDTH // 32)).astype(np.float32), (WIDTH, HEIGHT))
    logit = np.float32(rng.uniform(25, 40)) * (soft - np.float32(0.5) + noise)
    return np.rint(255 / (1 + np.exp(-logit))).astype(np.uint8)


def synthetic_image(index: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Image `index`: members' maps (M, H, W) uint8, truth (H, W) uint8 0/1, angle 1..16."""
    rng = np.random.default_rng(index)
    angle = index % 16 + 1
    truth = car_mask(rng, angle)
    return np.stack([member_map(truth, rng) for _ in range(N_MEMBERS)]), truth, angle


def float32_brute_force(maps: np.ndarray, truths: np.ndarray, angles: np.ndarray, threshold: np.ndarray,
                        weights: np.ndarray) -> float:
    """What one would write without the evaluator: float32 blend of every pixel, threshold, per-image Dice."""
    w = (weights / weights.sum()).astype(np.float32) / np.float32(255)
    scores = []
    for i in range(len(truths)):
        blend = w[0] * maps[i, 0]
        for m in range(1, maps.shape[1]):
            blend += w[m] * maps[i, m]
        pred = blend >= np.float32(threshold[angles[i] - 1])
        truth = truths[i].view(bool)
        total = np.count_nonzero(pred) + np.count_nonzero(truth)
        scores.append(1.0 if total == 0 else 2 * np.count_nonzero(pred & truth) / total)
    return float(np.mean(scores))


def level_sum_brute_force(level_sums: np.ndarray, truths: np.ndarray, angles: np.ndarray, k: np.ndarray) -> float:
    """Threshold-only brute force on precomputed equal-weight level sums (N, H, W) uint16."""
    scores = []
    for i in range(len(truths)):
        pred = level_sums[i] >= k[angles[i] - 1]
        truth = truths[i].view(bool)
        total = np.count_nonzero(pred) + np.count_nonzero(truth)
        scores.append(1.0 if total == 0 else 2 * np.count_nonzero(pred & truth) / total)
    return float(np.mean(scores))


def build(n_images: int, n_kept: int) -> dict:
    """Stream n_images into an evaluator (timed, traced); keep the first n_kept for brute force."""
    evaluator, small = DiceEvaluator(N_MEMBERS), DiceEvaluator(N_MEMBERS)
    kept_maps = np.empty((n_kept, N_MEMBERS, HEIGHT, WIDTH), np.uint8)
    kept_truths = np.empty((n_kept, HEIGHT, WIDTH), np.uint8)
    add_seconds, gen_seconds = 0.0, 0.0
    tracemalloc.start()
    for i in range(n_images):
        start = time.perf_counter()
        maps, truth, angle = synthetic_image(i)
        gen_seconds += time.perf_counter() - start
        start = time.perf_counter()
        evaluator.add_image(maps, truth, angle)
        add_seconds += time.perf_counter() - start
        if i < n_kept:
            kept_maps[i], kept_truths[i] = maps, truth
            small.add_image(maps, truth, angle)
    start = time.perf_counter()
    evaluator.score(0.5)  # packs the per-image chunks
    pack_seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    angles = np.arange(n_kept) % 16 + 1
    return dict(evaluator=evaluator, small=small, maps=kept_maps, truths=kept_truths, angles=angles,
                add_seconds=add_seconds, gen_seconds=gen_seconds, pack_seconds=pack_seconds, peak=peak)


def run(quick: bool) -> str:
    n_images, n_kept = (48, 8) if quick else (1000, 24)
    b = build(n_images, n_kept)
    evaluator, small = b["evaluator"], b["small"]
    maps, truths, angles = b["maps"], b["truths"], b["angles"]
    rng = np.random.default_rng(0)
    per_angle = rng.uniform(0.35, 0.65, 16)
    weights = np.array([0.3, 0.25, 0.2, 0.15, 0.1])
    member_list = [maps[:, m] for m in range(N_MEMBERS)]

    exact = [abs(small.score(t, w) - brute_force_mean_dice(member_list, truths, angles, t, w))
             for t, w in [(0.5, None), (per_angle, None), (0.5, weights), (per_angle, weights)]]
    fast_threshold = median_seconds(lambda: evaluator.score(per_angle), repeats=20)
    fast_weighted = median_seconds(lambda: evaluator.score(per_angle, weights), repeats=5)
    level_sums = maps.sum(axis=1, dtype=np.uint16)
    k_equal = level_thresholds(per_angle, N_MEMBERS)
    brute_threshold = median_seconds(lambda: level_sum_brute_force(level_sums, truths, angles, k_equal), repeats=3)
    brute_weighted = median_seconds(lambda: float32_brute_force(maps, truths, angles, per_angle, weights), repeats=3)
    brute_exact = median_seconds(lambda: brute_force_mean_dice(member_list, truths, angles, per_angle, weights),
                                 repeats=1, warmup=0)
    scale = n_images / n_kept  # brute force cost is linear in images; measured on n_kept held in memory

    def row(name: str, fast: float, brute: float, ref: str) -> list[object]:
        return [name, f"{fast * 1e3:.2f}", f"{brute * scale * 1e3:.0f}", ref, f"{brute * scale / fast:.0f}x"]

    table = markdown_table(
        ["trial", "evaluator ms", "brute force ms (extrapolated)", "brute force reference", "speed-up"],
        [row("threshold only (16 per-angle thresholds)", fast_threshold, brute_threshold,
             "threshold precomputed equal-weight level sums, count, Dice"),
         row("weighted blend + per-angle thresholds", fast_weighted, brute_weighted,
             "float32 blend of every pixel, threshold, count, Dice"),
         row("weighted blend, exact reference", fast_weighted, brute_exact, "`brute_force_mean_dice` (int64)")])
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return (
        f"{N_MEMBERS} members x {n_images} images at {HEIGHT}x{WIDTH} (synthetic car-like maps, streamed one image "
        f"at a time). Brute force was timed on the first {n_kept} images held in memory and scaled by "
        f"{n_images}/{n_kept} (its cost is linear in images; holding all maps would take "
        f"{N_MEMBERS * n_images * HEIGHT * WIDTH / 1e9:.1f} GB).\n\n{table}\n\n"
        f"- Exactness on the {n_kept} held images: max |evaluator - brute_force_mean_dice| = {max(exact):.1e} "
        f"over 4 trials (global/per-angle threshold x equal/learned-style weights).\n"
        f"- Build: {b['add_seconds']:.1f} s in `add_image` + {b['pack_seconds']:.1f} s packing "
        f"({b['gen_seconds']:.1f} s generating the maps, not counted).\n"
        f"- Uncertain pixels (some member strictly between 0 and 255, or members disagree): "
        f"{evaluator.uncertain_share:.2%} of {evaluator.n_pixels / 1e6:.0f} M pixels.\n"
        f"- Memory: evaluator holds {evaluator.nbytes / 1e6:.0f} MB; tracemalloc peak during the build "
        f"{b['peak'] / 1e6:.0f} MB (includes one image's generation and the {n_kept} held images, "
        f"{b['maps'].nbytes / 1e6:.0f} MB); process max RSS {rss_mb:.0f} MB.\n"
    )
