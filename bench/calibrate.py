"""How `bench.calibrated`'s members compare with the published spread (`make bench-calibrate`, a minute or two per
car set): single members 0.9960-0.9972 honest OOF mean Dice at 1918x1280, a plain mean of comparable members
+0.0001 to +0.0004 over the best one, fold-mean test maps better than OOF maps.

On each car set (studio cars rendered at Kaggle's size with the seed named) every photo gets the OOF map of each
of `bench.regime`'s comparable members, made by the fold model of its car (cars dealt to 5 folds in order), and
its fold-mean map, as a test photo would. Printed per set (and, for the default sets, written into
bench/RESULTS.md): each member's mean Dice of both, and the plain mean of the members' OOF maps with its gain
over the best member. Nothing is fitted: this is the yardstick the `Style` defaults are read against, on more
than one set of cars so that no set's cars decide them.

Usage: python -m bench.calibrate [--seeds 0 3 7] [--cars 6] [--work DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from bench.calibrated import Photo, Style, fold_mean_map, oof_map, rle_shape
from bench.common import machine_description, markdown_table, publish
from bench.regime import SETS
from bench.scale import REPO, SIZE
from carvana.dataset import read_rle_csv
from carvana.rle import rle_decode
from stacking.robust import batch_dice

TITLE = "Calibrated members against the published spread (bench.calibrate)"
WORK_DIR = REPO / "bench" / "_scratch" / "calibrate"
N_FOLDS = 5
HALF = 127.5  # p >= 0.5 on the 0-255 levels of the maps
SEEDS, CARS = [0, 3, 7], 6  # the section in bench/RESULTS.md is written for these only


def car_set(work: Path, seed: int, n_cars: int) -> Path:
    """WORK/seedS-carsN: `n_cars` studio cars at Kaggle's size, rendered once."""
    from carvana.synth import generate

    out = work / f"seed{seed}-cars{n_cars}"
    if not (out / "train_masks.csv").exists():
        generate(out, n_cars, 0, size=SIZE, seed=seed, progress=False)
    return out


def measure(data: Path, styles: list[Style]) -> dict[str, list[float]]:
    """Per-photo Dice lists: each style's OOF ("NAME") and fold-mean ("NAME test") maps, the plain mean of the
    styles' OOF maps ("mean")."""
    rles = read_rle_csv(data / "train_masks.csv")
    cars = sorted({img[:-3] for img in rles})
    shape = rle_shape(data)
    scores: dict[str, list[float]] = {}

    def add(name: str, levels: np.ndarray, truth: np.ndarray) -> None:
        scores.setdefault(name, []).append(float(batch_dice(levels[None], truth[None], threshold=HALF)[0]))

    for img in sorted(rles):
        truth = rle_decode(rles[img], shape)
        photo, fold = Photo(img, truth), cars.index(img[:-3]) % N_FOLDS
        oofs = []
        for style in styles:
            oofs.append(oof_map(photo, style, fold))
            add(style.name, oofs[-1], truth)
            add(f"{style.name} test", fold_mean_map(photo, style, N_FOLDS), truth)
        add("mean", np.mean(oofs, axis=0), truth)
    return scores


def section(results: dict[int, dict[str, list[float]]], styles: list[Style], n_cars: int) -> str:
    rows: list[list[object]] = []
    for seed, scores in results.items():
        mean = {name: float(np.mean(values)) for name, values in scores.items()}
        best = max((s.name for s in styles), key=mean.__getitem__)
        members = ", ".join(f"{s.name} {mean[s.name]:.5f} (test {mean[s.name + ' test']:.5f})" for s in styles)
        rows.append([seed, members, f"{mean['mean']:.5f}", f"{mean['mean'] - mean[best]:+.5f}"])
    head = (
        f"`python -m bench.calibrate --cars {n_cars}` on {machine_description()}: per car set (seed), each "
        "comparable member's honest OOF mean Dice (its fold-mean map's in brackets) and the plain mean's."
    )
    return head + "\n\n" + markdown_table(["seed", "members: OOF (test)", "plain mean", "gain over best"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=SEEDS, help="studio seeds: one car set each")
    parser.add_argument("--cars", type=int, default=CARS, help="cars per set (x 16 photos)")
    parser.add_argument("--work", type=Path, default=WORK_DIR)
    args = parser.parse_args(argv)
    styles = SETS["comparable"]
    results = {seed: measure(car_set(args.work, seed, args.cars), styles) for seed in args.seeds}
    publish(TITLE, section(results, styles, args.cars), whole=args.seeds == SEEDS and args.cars == CARS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
