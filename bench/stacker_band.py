"""The pixel stackers' band, sample and threshold at 0.997 (issue 19 item 5): do the settings suit maps that are
99.7% certain, and is the regime bench's LightGBM gain memorised template masks?

For each finished run of `bench.regime` (members at Carvana's accuracy, 1918x1280, configs/kaggle.yaml's stack)
and of `bench.robust` (demo-size CPU members, configs/demo.yaml's stack), each pixel stacker is cross-fitted over
the run's car-grouped folds (fold k's maps from a fit that never saw fold k) as the run's config makes it, and
again with one setting changed:
- the band: where not every member is <= lo or >= hi, lo = 0.005, 0.02 or 0.2 (hi = 1 - lo);
- the sample: a quarter of the configured `max_pixels`;
- the threshold: the configured fit's OOF maps cut at 0.3 ... 0.7 instead of 0.5 (no refit: the curve is shown,
  not chosen from).
Each change's honest OOF mean Dice is given against the configured fit's, with the paired car-bootstrap 95%
interval (`stacking.uncertainty.paired_gains`, the leaderboard's). Dice is taken at the store's resolution, where
the fits are made; the leaderboard takes it at the photos' own size, so on the robustness datasets whose photos
are not 480x320 (pale-fleet-s3, close-up-s5) the configured figures differ from its by up to 0.0003.
On the regime runs the configured LightGBM's gain over the best member is also split by car:
`bench.scale.prepare_data` renders 4 train cars for 6 car ids, so two masks appear under two ids each ("twin"
cars, in different folds); a stacker that memorised masks by position would gain more on them than on the two
unique cars.

Usage: python -m bench.stacker_band [--robust DIR] [--regime DIR] [--sets NAME ...] [--models NAME ...] [--jobs N]
A run that is missing is skipped. Run whole, it writes its section into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from joblib import Parallel, delayed

from bench.common import machine_description, markdown_table, publish
from bench.robust import DATASETS
from bench.robust import WORK_DIR as ROBUST_DIR
from bench.temperature import REGIME_DIR, REGIME_SETS

if TYPE_CHECKING:
    from stacking.maps import TrainMaps
    from workbench.config import ExperimentConfig

TITLE = "Pixel stackers at 0.997: band, sample and threshold (bench.stacker_band)"
BANDS = (0.005, 0.02, 0.2)  # lo; hi = 1 - lo
THRESHOLDS = (0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7)
TEMPLATES = 4  # bench.scale.TEMPLATE_CARS[0]: car i of the regime data is template i % 4


def open_source(run_dir: Path, config: Path, data: Path | None) -> tuple[ExperimentConfig, TrainMaps]:
    """(the run's config, its TrainMaps of every finished member)."""
    from workbench.config import load_config
    from workbench.run import Run
    from workbench.stack import finished_members

    cfg = load_config(config, data=data, run_dir=run_dir)
    run = Run.open(cfg)
    return cfg, run.train_maps(finished_members(run))


def variants(cfg: ExperimentConfig) -> Iterator[tuple[str, dict]]:
    """(label, PixelStacker parameters): the configured stacker first, then one setting changed at a time."""
    from workbench.entries import stacker_params

    stack = cfg.stack
    configured = stacker_params(cfg)
    yield "configured", configured
    for lo in BANDS:
        if not np.isclose(lo, stack.band[0]):
            yield f"band {lo:g}-{1 - lo:g}", {**configured, "lo": lo, "hi": 1 - lo}
    yield f"max_pixels {stack.max_pixels // 4}", {**configured, "max_pixels": stack.max_pixels // 4}


def honest_maps_dice(
    model: str, params: dict, source: TrainMaps, thresholds: tuple[float, ...]
) -> dict[float, dict[str, float]]:
    """{threshold: {image: Dice}} of the stacker's car-grouped cross-fit OOF maps, one fit per held-out fold."""
    from stacking.crossfit import fitting_folds
    from stacking.pixel_stacker import make_stacker
    from stacking.robust import batch_dice

    out: dict[float, dict[str, float]] = {t: {} for t in thresholds}
    for k in source.all_folds:
        fitted = make_stacker(model, **params).fit(fitting_folds(source, k))
        for batch in source.folds([k]).batches():
            proba = fitted.predict_proba(batch)
            for t in thresholds:
                out[t].update(zip(batch.ids, batch_dice(proba, np.asarray(batch.truth), t).tolist()))
    return out


def best_member_dice(source: TrainMaps) -> dict[str, float]:
    """{image: Dice} of the member with the best OOF mean Dice (its own OOF maps at 0.5)."""
    from stacking.robust import batch_dice

    per = np.concatenate(
        [
            np.stack([batch_dice(b.maps[:, m] / 255.0, np.asarray(b.truth)) for m in range(source.n_members)], axis=1)
            for b in source.batches()
        ]
    )
    return dict(zip(source.ids, per[:, int(np.argmax(per.mean(axis=0)))].tolist()))


def twin_cars(data: Path) -> set[str]:
    """The regime data's car ids whose rendered template another car id reuses (`bench.scale.prepare_data`)."""
    from carvana.dataset import read_rle_csv

    train = {img[:12] for img in read_rle_csv(data / "train_masks.csv")}
    order = [line.split(",")[0] for line in (data / "metadata.csv").read_text().splitlines()[1:]]
    order = [car for car in order if car in train]
    template = {car: i % TEMPLATES for i, car in enumerate(order)}
    return {car for car in order if sum(t == template[car] for t in template.values()) > 1}


Found = tuple[
    list[list[object]], list[list[object]], list[list[object]], dict[str, list[tuple[str, float, float, float]]]
]


def score_run(name: str, run_dir: Path, config: Path, data: Path | None, regime: bool, models: list[str]) -> Found:
    """(table rows, threshold rows, twin rows, {model: [(label, change)]}) of one finished run."""
    from stacking.uncertainty import paired_gains

    cfg, source = open_source(run_dir, config, data)
    rows: list[list[object]] = []
    threshold_rows: list[list[object]] = []
    twin_rows: list[list[object]] = []
    changes: dict[str, list[tuple[str, float, float, float]]] = {m: [] for m in models}
    for model in models:
        per_variant: dict[str, dict[str, float]] = {}
        for label, params in variants(cfg):
            start = time.perf_counter()
            found = honest_maps_dice(model, params, source, THRESHOLDS if label == "configured" else (0.5,))
            per_variant[label] = found[0.5]
            if label == "configured":
                sweep = {f"threshold {t:g}": found[t] for t in THRESHOLDS if t != 0.5}
            print(
                f"{name} {model} {label}: {np.mean(list(found[0.5].values())):.6f} "
                f"({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
        gains = paired_gains({**per_variant, **sweep}, "configured", source.fold_of)
        base = np.mean(list(per_variant["configured"].values()))
        for label, gain in gains.items():
            if label == "configured":
                continue
            target = threshold_rows if label.startswith("threshold") else rows
            target.append([name, model, label, f"{base:.6f}", f"{gain.gain:+.6f}", f"{gain.lo:+.6f} to {gain.hi:+.6f}"])
            if not label.startswith("threshold"):
                changes[model].append((label, gain.gain, gain.lo, gain.hi))
        if regime and model == "lightgbm":
            best, twins = best_member_dice(source), twin_cars(Path(cfg.data))
            configured = per_variant["configured"]
            for group, members in (("twin", True), ("unique", False)):
                diff = [configured[i] - best[i] for i in configured if (i[:12] in twins) == members]
                twin_rows.append([name, group, len(diff), f"{np.mean(diff):+.6f}"])
    return rows, threshold_rows, twin_rows, changes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--robust", type=Path, default=ROBUST_DIR, help="bench.robust's work folder")
    parser.add_argument("--regime", type=Path, default=REGIME_DIR, help="bench.regime's work folder (one size)")
    parser.add_argument("--sets", nargs="+", help="only these datasets / member sets")
    parser.add_argument("--models", nargs="+", default=["lightgbm", "logistic"], help="pixel stackers to try")
    parser.add_argument("--jobs", type=int, default=1, help="runs scored at once (each one process, one core)")
    args = parser.parse_args(argv)
    demo = Path("configs/demo.yaml")
    runs = [(s, args.regime / s / "run", args.regime / s / "config.yaml", None, True) for s in REGIME_SETS]
    runs += [(d.name, args.robust / d.name / "run", demo, args.robust / d.name / "data", False) for d in DATASETS]
    todo = [run for run in runs if (not args.sets or run[0] in args.sets) and (run[1] / "leaderboard.csv").exists()]
    results = Parallel(n_jobs=args.jobs)(delayed(score_run)(*run, args.models) for run in todo)
    rows, threshold_rows, twin_rows = [], [], []
    summary: dict[tuple[str, str, bool], list[tuple[float, float, float]]] = {}
    for (_, _, _, _, regime), found in zip(todo, results):
        rows += found[0]
        threshold_rows += found[1]
        twin_rows += found[2]
        for model, changed in found[3].items():
            for label, gain, lo, hi in changed:
                summary.setdefault((model, label, regime), []).append((gain, lo, hi))
    lines = []
    for (model, label, regime), found in summary.items():
        gains, los, his = np.array(found).T
        where = "regime sets" if regime else "demo-size datasets"
        lines.append(
            f"- {model}, {label}, {where}: mean change {gains.mean():+.6f}, above 0 on {(gains > 0).sum()} "
            f"of {gains.size}, interval clear of 0 above on {(los > 0).sum()} and below on {(his < 0).sum()}"
        )
    header = ["set / dataset", "stacker", "change", "configured OOF", "OOF change", "95% car bootstrap"]
    text = "\n\n".join(
        [
            f"`python -m bench.stacker_band` on {machine_description()}: honest car-grouped OOF mean Dice of each "
            "pixel stacker as the run's config makes it (regime sets: configs/kaggle.yaml, band 0.02-0.98, 1M pixels, "
            "5% of a photo at most; demo-size datasets: configs/demo.yaml, band 0.2-0.8, 200k pixels) and with one "
            "setting changed, on finished runs of `bench.regime` and `bench.robust`.",
            markdown_table(header, rows),
            "\n".join(lines),
            "The configured fit's OOF maps cut at other thresholds (0.5 is the product's):",
            markdown_table(header, threshold_rows),
            "The configured LightGBM's gain over the best member on the regime sets, by car: twin cars share a "
            "rendered mask with another car id in another fold, unique cars do not.",
            markdown_table(["set", "cars", "photos", "gain over the best member"], twin_rows),
        ]
    )
    publish(TITLE, text, whole=not args.sets and args.models == ["lightgbm", "logistic"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
