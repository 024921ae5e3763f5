"""What a store smaller than the photos costs in Dice: maps shrunk to the store (area interpolation, as
`carvana.resize.resize_proba` does), upsampled bilinearly to 1918x1280 and thresholded at 0.5 (as the
leaderboard and the submission do), against the same maps kept at full size."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.common import markdown_table
from carvana.dataset import KAGGLE_SIZE, read_rle_csv
from carvana.metric import dice
from carvana.resize import resize_proba
from carvana.rle import rle_decode
from stacking.leaderboard import upsampled_dice

TITLE = "Store resolution: Dice lost by keeping maps smaller than the photos"
SIZES = (KAGGLE_SIZE, (1280, 854), (960, 640), (720, 480))  # W x H


def truths(n_cars: int) -> list[np.ndarray]:
    """(1280, 1918) 0/1 masks of rendered studio cars (bench.scale's templates, rendered if missing)."""
    from carvana.synth import generate

    root = Path("bench/_scratch/resolution")
    if not (root / "train_masks.csv").exists():
        generate(root, n_cars, 0, size=KAGGLE_SIZE, seed=1, progress=False)
    return [rle_decode(rle, (1280, 1918)) for rle in read_rle_csv(root / "train_masks.csv").values()]


def run(quick: bool = False) -> str:
    from bench.scale import member_map

    masks = truths(1 if quick else 3)
    maps = {"perfect map (truth x 255)": [m * np.uint8(255) for m in masks],
            "soft member (bench.scale's unet_resnet34_1024)":
                [member_map(m, "unet_resnet34_1024", str(i), False) for i, m in enumerate(masks)]}
    rows = []
    for name, images in maps.items():
        natives = np.array([dice(p >= 128, t) for p, t in zip(images, masks)])
        native = natives.mean()
        for width, height in SIZES[1:]:
            stored = [np.rint(resize_proba(p.astype(np.float32) / 255, height, width) * 255).astype(np.uint8)
                      for p in images]
            scores = np.array([upsampled_dice(s, t) for s, t in zip(stored, masks)])
            rows.append([name, f"{width}x{height}", f"{native:.6f}", f"{np.mean(scores):.6f}",
                         f"{native - scores.mean():.6f}", f"{np.max(natives - scores):.6f}"])
    return (f"{len(masks)} rendered studio photos at 1918x1280 (16 angles per car).\n\n"
            + markdown_table(["map", "store", "mean Dice at 1918x1280", "after the store round trip", "lost (mean)",
                              "lost (worst photo)"], rows))


if __name__ == "__main__":
    print(run())
