"""Cost of the LightGBM pixel stacker at a Kaggle-like scale, against the plain mean blend.

Maps: `bench_trial.synthetic_image` (5 members at 640 x 960; car-like silhouettes, each member a
blurred, shifted copy through a steep logit with low-frequency noise, so members saturate away from
the edge and disagree in a thin noisy band). Fit images are generated one at a time and streamed into
`sample_band_features`; generation time is measured apart and not counted. Held-out images (other
seeds) are predicted by the stacker and by `MeanBlender` in the same run.
"""
from __future__ import annotations

import dataclasses
import resource
import time
import tracemalloc
from collections.abc import Iterator

import numpy as np

from bench.bench_trial import HEIGHT, N_MEMBERS, WIDTH, synthetic_image
from bench.common import markdown_table, median_seconds
from carvana.metric import dice
from stacking.blenders import MeanBlender
from stacking.features import band_levels, band_mask, member_mean, sample_band_features
from stacking.maps import MapBatch, TrainMaps
from stacking.pixel_stacker import PixelStacker

TITLE = "Pixel stacker: LightGBM on the uncertain band vs the mean blend"
HELD_OUT_SEED = 100_000  # held-out images use seeds the fit images never use


def timed_images(n_images: int, clock: dict) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Stream synthetic images 0..n-1, adding the seconds spent generating them to clock['generate']."""
    for i in range(n_images):
        start = time.perf_counter()
        image = synthetic_image(i)
        clock["generate"] += time.perf_counter() - start
        yield image


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_sample(n_images: int, max_pixels: int, lo_level: int, hi_level: int) -> dict:
    """Stream n_images into a band sample; time (minus generation) and tracemalloc peak."""
    clock = {"generate": 0.0}
    tracemalloc.start()
    start = time.perf_counter()
    sample = sample_band_features(timed_images(n_images, clock), lo_level, hi_level, max_pixels, 0, n_images)
    seconds = time.perf_counter() - start - clock["generate"]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return dict(sample=sample, seconds=seconds, generate=clock["generate"], peak=peak, rss=rss_mb())


def timed_fit(sample, max_pixels: int, n_jobs: int, monotone: bool = True) -> tuple[PixelStacker, float]:
    start = time.perf_counter()
    # the sample is drawn once and fitted by several models: the stacker's private door for that
    stacker = PixelStacker(max_pixels=max_pixels, lgbm_params={"n_jobs": n_jobs}, monotone=monotone)
    stacker._fit_sample(sample)
    return stacker, time.perf_counter() - start


def held_out_quality(stacker: PixelStacker, held: list, lo_level: int, hi_level: int) -> dict:
    """Mean Dice of stacker and mean blend at 0.5, band share, share of the mean blend's errors in the band."""
    stacked, blended, n_band, n_errors, n_errors_in_band = [], [], 0, 0, 0
    for maps, truth, angle in held:
        mean = member_mean(maps)
        band = band_mask(maps, lo_level, hi_level)
        errors = (mean >= 0.5) != (truth != 0)
        n_band += np.count_nonzero(band)
        n_errors += np.count_nonzero(errors)
        n_errors_in_band += np.count_nonzero(errors & band)
        stacked.append(dice(stacker.predict_proba(MapBatch.of(maps[None], angles=[angle]))[0] >= 0.5, truth))
        blended.append(dice(mean >= 0.5, truth))
    n_pixels = len(held) * held[0][1].size
    return dict(stacked=float(np.mean(stacked)), blended=float(np.mean(blended)), band=n_band / n_pixels,
                errors_in_band=n_errors_in_band / max(n_errors, 1))


def run(quick: bool) -> str:
    n_fit, n_held, max_pixels = (24, 4, 100_000) if quick else (400, 12, 500_000)
    lo_level, hi_level = band_levels(0.02, 0.98)
    built = build_sample(n_fit, max_pixels, lo_level, hi_level)
    sample = built["sample"]
    stacker, fit_default = timed_fit(sample, max_pixels, n_jobs=1)
    rss_after_fit = rss_mb()
    free, fit_free = timed_fit(sample, max_pixels, n_jobs=1, monotone=False)
    # Threads compared on a 100k-row slice: a 2-thread fit of the whole sample can take minutes here.
    rows = slice(0, min(100_000, sample.labels.size // 2))
    part = dataclasses.replace(sample, features=sample.features[rows], labels=sample.labels[rows])
    one, fit_one = timed_fit(part, max_pixels, n_jobs=1)
    two, fit_two = timed_fit(part, max_pixels, n_jobs=2)
    held = [synthetic_image(HELD_OUT_SEED + i) for i in range(n_held)]

    def per_image(predict) -> float:
        return median_seconds(lambda: [predict(maps, angle) for maps, _, angle in held], repeats=3, warmup=0) / n_held

    def predictor(model):
        return lambda maps, angle: model.predict_proba(MapBatch.of(maps[None], angles=[angle]))

    predict_default = per_image(predictor(stacker))
    predict_one, predict_two = per_image(predictor(one)), per_image(predictor(two))
    predict_mean = per_image(predictor(MeanBlender().fit(TrainMaps.from_arrays(held[0][0][None], None))))
    quality = held_out_quality(stacker, held, lo_level, hi_level)
    free_dice = held_out_quality(free, held, lo_level, hi_level)["stacked"]

    rows_fit = sample.labels.size
    table = markdown_table(
        ["step", "seconds", "per image", "reference (same run)"],
        [[f"band sample: stream {n_fit} images, featurise sampled band pixels", f"{built['seconds']:.1f}",
          f"{built['seconds'] / n_fit * 1e3:.1f} ms",
          f"generating the maps took {built['generate']:.1f} s (not counted)"],
         [f"LightGBM fit (defaults: 200 trees, monotone, n_jobs=1), {rows_fit:,} rows x "
          f"{sample.features.shape[1]} features", f"{fit_default:.1f}", "",
          f"free (monotone=False): {fit_free:.1f} s ({fit_default / fit_free:.2f}x)"],
         [f"LightGBM fit on the first {part.labels.size:,} rows, n_jobs=1", f"{fit_one:.1f}", "",
          f"same rows with n_jobs=2: {fit_two:.1f} s"],
         ["predict one image (stacker, n_jobs=1)", f"{predict_default:.3f}", f"{predict_default * 1e3:.0f} ms",
          f"mean blend {predict_mean * 1e3:.1f} ms ({predict_default / predict_mean:.0f}x)"],
         [f"predict one image, models fitted on {part.labels.size:,} rows, n_jobs=1", f"{predict_one:.3f}",
          f"{predict_one * 1e3:.0f} ms", f"n_jobs=2: {predict_two * 1e3:.0f} ms"]])
    return (
        f"{N_MEMBERS} members x {n_fit} fit images at {HEIGHT}x{WIDTH} (synthetic car-like maps, streamed), "
        f"max_pixels={max_pixels:,}, lo=0.02 / hi=0.98 (consensus: every level <= {lo_level} or every level "
        f">= {hi_level}); {n_held} held-out images predicted. Reduced from the Kaggle-like 1,000 images and the "
        f"default max_pixels=2,000,000 so the section runs in ~3 minutes on this shared 2-core box: fit time "
        f"grows with the rows sampled (max_pixels), featurising with the images streamed.\n\n{table}\n\n"
        f"- Band share: {sample.n_band / sample.n_pixels:.2%} of {sample.n_pixels / 1e6:.0f} M fit pixels "
        f"({quality['band']:.2%} of the held-out pixels); {quality['errors_in_band']:.1%} of the mean blend's "
        f"held-out errors at 0.5 lie in the band (the rest are pixels where every member is confidently wrong, "
        f"which no band stacker can fix).\n"
        f"- Held-out mean Dice at 0.5: stacker {quality['stacked']:.5f} vs mean blend {quality['blended']:.5f} "
        f"({quality['stacked'] - quality['blended']:+.5f}; free LightGBM {free_dice:.5f}); synthetic members, so "
        f"only a sign of life, not a forecast for real U-Nets.\n"
        f"- Memory: band sample {sample.features.nbytes / 1e6:.0f} MB; tracemalloc peak while streaming and "
        f"featurising {built['peak'] / 1e6:.0f} MB (numpy only, includes generating one image; at most "
        f"{sample.max_held:,} sampled rows held at once); process max RSS {built['rss']:.0f} MB after sampling, "
        f"{rss_after_fit:.0f} MB after the LightGBM fit (LightGBM's own buffers are invisible to tracemalloc).\n"
    )
