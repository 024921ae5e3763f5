"""Where the regime bench's LightGBM gain comes from (issue 19): the pixels it decides otherwise than the best member,
by the generator's error they lie in.

`bench.regime`'s LightGBM gains +0.0007 to +0.0020 honest OOF over the best member, 3-10x what real Carvana stacks
gained. `bench.stacker_band` ruled out memorised masks; this bench asks which of the generator's errors
(`bench.calibrated`) the gain is made on. For each finished regime set, every train photo's OOF masks (map >= 0.5)
of the best member and of the configured `lightgbm` entry (`workbench stack`'s stored maps) are compared with the
truth. Each pixel where the two differ falls in one region of the photo (`bench.calibrated.Photo`):
- thin: the car's parts narrower than 9 px, which members miss (the widest `thin` of the sets' styles);
- roof: where a roof blob moves the boundary (its weight > 0.1), outside thin parts;
- boundary: every other pixel (the smooth offset fields; all within 64 px of the true boundary).
A region's share of the gain is its first-order part of each photo's Dice change: with TP and P the true positives
and predicted pixels, dDice ~ (2 dTP - Dice dP) / (P + |truth|), summed over the region's pixels, averaged over
photos. The regions' parts add up to the gain up to second-order terms (the table's last column shows it).

Usage: python -m bench.stacker_gain [--regime DIR] [--sets NAME ...]
A set that is missing is skipped. Run whole, it writes its section into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from bench.common import machine_description, markdown_table, publish, read_set
from bench.temperature import REGIME_DIR, REGIME_SETS
from stacking.robust import batch_dice

TITLE = "Regime: where LightGBM's gain over the best member comes from (bench.stacker_gain)"
REGIONS = ("thin", "roof", "boundary")
THIN_WIDTH = 9
ROOF_WEIGHT = 0.1
LEVEL = 128  # the store's car level: a map >= 0.5


def regions(img: str, truth: np.ndarray) -> np.ndarray:
    """(H, W) int8 region index (`REGIONS`) of every pixel of a train photo."""
    from bench.calibrated import Photo

    photo = Photo(img, truth)
    label = np.full(truth.size, REGIONS.index("boundary"), dtype=np.int8)
    roof = sum(photo.bumps, np.zeros(len(photo.band), np.float32)) > ROOF_WEIGHT
    label[photo.band[roof]] = REGIONS.index("roof")
    label[photo.band[photo.thin(THIN_WIDTH)]] = REGIONS.index("thin")
    return label.reshape(truth.shape)


def dice_parts(member: np.ndarray, stacked: np.ndarray, truth: np.ndarray, label: np.ndarray) -> tuple[float, ...]:
    """(each region's first-order part of Dice(stacked) - Dice(member), that exact difference), one photo."""

    def dice(pred: np.ndarray) -> float:
        return float(batch_dice(pred[None], truth[None], threshold=1)[0])

    base, size = dice(member), member.sum() + truth.sum()
    changed = member != stacked
    d_tp = np.where(truth, stacked.astype(np.int8) - member.astype(np.int8), 0)[changed]
    d_p = (stacked.astype(np.int8) - member.astype(np.int8))[changed]
    where = label[changed]
    parts = [(2 * d_tp[where == r].sum() - base * d_p[where == r].sum()) / max(size, 1) for r in range(len(REGIONS))]
    return (*map(float, parts), dice(stacked) - base)


def score_set(out: Path) -> tuple[str, np.ndarray, np.ndarray]:
    """(best member, (photos, regions + 1) Dice parts, (regions, 2) fixed and broken pixels per photo)."""
    from carvana.dataset import read_rle_csv
    from carvana.rle import rle_decode
    from oof.store import Store

    run = out / "run"
    best = read_set(out)["best"]
    rles = read_rle_csv(Path(read_config_data(out)) / "train_masks.csv")
    members, stack = Store(run / "oof"), Store(run / "stack")
    parts, pixels = [], np.zeros((len(REGIONS), 2))
    for name in sorted(rles):
        img = name.removesuffix(".jpg")
        member = members.read(best, "train", img) >= LEVEL
        truth = rle_decode(rles[name], member.shape).astype(bool)
        stacked = stack.read("lightgbm", "train", img) >= LEVEL
        label = regions(img, truth)
        parts.append(dice_parts(member, stacked, truth, label))
        right = stacked == truth
        for r in range(len(REGIONS)):
            changed = (member != stacked) & (label == r)
            pixels[r] += (np.count_nonzero(changed & right), np.count_nonzero(changed & ~right))
    return best, np.array(parts), pixels / len(rles)


def read_config_data(out: Path) -> str:
    """The data folder a regime set's config names."""
    import yaml

    return yaml.safe_load((out / "config.yaml").read_text())["data"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regime", type=Path, default=REGIME_DIR, help="bench.regime's work folder (one size)")
    parser.add_argument("--sets", nargs="+", help="only these member sets")
    args = parser.parse_args(argv)
    rows: list[list[object]] = []
    n_photos = 0
    for name in REGIME_SETS:
        out = args.regime / name
        if (args.sets and name not in args.sets) or not (out / "run" / "leaderboard.csv").exists():
            continue
        best, parts, pixels = score_set(out)
        mean, n_photos = parts.mean(axis=0), len(parts)
        shares = [f"{mean[r]:+.6f} ({mean[r] / mean[-1]:.0%})" if mean[-1] else f"{mean[r]:+.6f}" for r in range(3)]
        moved = [f"{pixels[r, 0]:.0f} / {pixels[r, 1]:.0f}" for r in range(len(REGIONS))]
        rows.append([name, best, f"{mean[-1]:+.6f}", *shares, *moved, f"{mean[:-1].sum():+.6f}"])
        print(f"{name}: done", flush=True)
    header = [
        "set",
        "best member",
        "LightGBM's gain (OOF)",
        *(f"from {r}" for r in REGIONS),
        *(f"{r} px fixed / broken per photo" for r in REGIONS),
        "sum of the parts",
    ]
    text = "\n\n".join(
        [
            f"`python -m bench.stacker_gain` on {machine_description()}: the configured LightGBM's honest OOF "
            "gain over the best member on each `bench.regime` set, split by the generator's error region of the "
            f"pixels it decides otherwise (thin parts under {THIN_WIDTH} px, roof blobs, the rest of the boundary "
            f"band); first-order parts of each photo's Dice change, averaged over the {n_photos} train photos.",
            markdown_table(header, rows),
        ]
    )
    publish(TITLE, text, whole=not args.sets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
