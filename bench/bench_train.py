"""Training throughput per member, and the share of each epoch spent waiting for data, with the
decode-once cache against the plain loader that decodes and resizes every JPEG on every access."""
from __future__ import annotations

import csv
import dataclasses
import tempfile
from pathlib import Path

import numpy as np

from bench.common import markdown_table
from carvana.dataset import KAGGLE_SIZE, CarvanaData
from carvana.resize import resize_image, resize_mask
from zoo.cache import cached_split
from zoo.fold_data import FoldData
from zoo.registry import MEMBERS
from zoo.spec import MemberSpec

TITLE = "Training throughput and data wait: decode-once cache vs decoding every epoch"
MEMBER_NAMES = ["unet_resnet18_64", "keras_unet_64", "linknet_mobilenetv3_small_050_128"]


class DecodingImages:
    """The plain loader: every access decodes the full-size JPEG (or GIF) and resizes it."""

    def __init__(self, data: CarvanaData, ids: list[str], height: int, width: int, masks: bool = False) -> None:
        self.data, self.ids, self.size, self.masks = data, ids, (height, width), masks

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index) -> np.ndarray:
        if np.ndim(index) > 0:  # a batch of positions, as NumPy fancy indexing gives
            return np.stack([self[int(i)] for i in index])
        if self.masks:
            return resize_mask(self.data.load_mask(self.ids[index]), *self.size)
        return resize_image(self.data.load_image(self.ids[index]), *self.size)


def one_epoch(spec: MemberSpec, fold_data: FoldData, work_dir: Path) -> tuple[float, float]:
    """(images/s, data-wait share) of one training epoch, from the loop's own log."""
    if spec.framework == "keras":
        from zoo.train_keras import train_keras_fold as train
    else:
        from zoo.train_torch import train_fold as train
    work_dir.mkdir(parents=True)
    train(spec, fold_data, work_dir, progress=False)
    row = list(csv.DictReader(open(work_dir / "log.csv")))[-1]
    return float(row["images_per_s"]), float(row["data_wait_share"])


def run(quick: bool) -> str:
    from carvana.synth import generate

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        n_cars = 2 if quick else 3
        generate(root, n_cars=n_cars, n_test_cars=1, size=KAGGLE_SIZE, seed=3, progress=False)
        data = CarvanaData(root)
        ids = data.train_ids
        rows = []
        for name in MEMBER_NAMES[:1] if quick else MEMBER_NAMES:
            # Two epochs: the second is steady state (the first pays for compilation and warm-up).
            spec = dataclasses.replace(MEMBERS[name], train=dataclasses.replace(
                MEMBERS[name].train, epochs=2, batch_size=8, augment=True))
            _, images, masks = cached_split(data, "train", spec.height, spec.width, Path(tmp) / "cache")
            index = np.arange(len(ids))
            cached = FoldData(0, ids, images, masks, index, index[:8], index[:0])
            decoded = DecodingImages(data, ids, spec.height, spec.width)
            decoded_masks = DecodingImages(data, ids, spec.height, spec.width, masks=True)
            plain = FoldData(0, ids, decoded, decoded_masks, index, index[:8], index[:0])
            speed, wait = one_epoch(spec, cached, Path(tmp) / f"{name}-cached")
            plain_speed, plain_wait = one_epoch(spec, plain, Path(tmp) / f"{name}-plain")
            rows.append([name, f"{spec.height}x{spec.width}", f"{speed:.1f}", f"{100 * wait:.1f}%",
                         f"{plain_speed:.1f}", f"{100 * plain_wait:.1f}%", f"{speed / plain_speed:.2f}x"])
    return (
        f"{len(ids)} synthetic 1918x1280 photos, batch 8, augmentation on, CPU ({'quick' if quick else 'full'} run); "
        "steady-state second epoch of each. Data wait = time the loop waited for its next batch / epoch time "
        "(target: at most 10%). Reference: the plain loader decoding and resizing every JPEG on every access, "
        "measured in the same run.\n\n"
        + markdown_table(["member", "input", "cached img/s", "cached data wait", "plain img/s", "plain data wait",
                          "speed-up"], rows)
    )
