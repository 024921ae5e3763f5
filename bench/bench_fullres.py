"""Full resolution on CPU: training on random crops of the padded photo against training on whole
photos resized to the same pixel count, and prediction by overlapping tiles against whole-photo
prediction (both padded, hflip TTA, cropped back)."""
from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.bench_train import one_epoch
from bench.common import markdown_table
from carvana.dataset import CarvanaData
from zoo.cache import cached_split
from zoo.fold_data import FoldData
from zoo.spec import MemberSpec, PredictConfig, TrainConfig
from zoo.torch_member import TorchMember

TITLE = "Full resolution: crop vs whole-photo training, tiled vs whole prediction"
PHOTO = (320, 479)  # (H, W): a quarter of the Kaggle size (CPU), odd width like Kaggle's 1918 / 4
ENCODER = "tu-mobilenetv3_small_050"


def _member(height: int, width: int, **fields) -> MemberSpec:
    return MemberSpec(f"linknet_mobilenetv3_small_050_{height}", "linknet", height, width, ENCODER, **fields)


def _training_rows(data: CarvanaData, tmp: Path, repeats: int) -> list[list[str]]:
    crop = (PHOTO[0] // 2, 256)  # 160 x 256 crops of the 320 x 480 padded photo
    train = TrainConfig(epochs=2, batch_size=4, augment=True)
    cases = [("whole photo resized", _member(*crop, train=train), f"{crop[0]}x{crop[1]} (resized)"),
             ("random crops", _member(*PHOTO, train=dataclasses.replace(train, crop=crop)),
              f"{crop[0]}x{crop[1]} of {PHOTO[0]}x{PHOTO[1]} padded")]
    folds = {}
    for label, spec, _ in cases:
        ids, images, masks = cached_split(data, "train", spec.height, spec.width, tmp / "cache")
        index = np.arange(len(ids))
        folds[label] = FoldData(0, ids, images, masks, index, index[:4], index[:0])
    runs: dict[str, list] = {label: [] for label, _, _ in cases}
    for r in range(repeats):  # interleaved, so a busy spell on the machine hits both alike
        for label, spec, _ in cases:
            runs[label].append(one_epoch(spec, folds[label], tmp / f"{label}-{r}"))
    rows = []
    for label, _, what in cases:
        speed, wait = statistics.median(r[0] for r in runs[label]), statistics.median(r[1] for r in runs[label])
        rows.append([label, what, f"{crop[0] * crop[1]:,}", f"{speed:.2f}", f"{100 * wait:.1f}%"])
    return rows


def _prediction_rows(data: CarvanaData, tmp: Path, repeats: int) -> list[list[str]]:
    import torch

    from zoo.torch_models import build_torch_model

    spec = _member(*PHOTO)
    checkpoint = tmp / "untrained.pt"
    torch.save({"model": build_torch_model(spec).state_dict()}, checkpoint)  # timing only: weights do not matter
    photos = np.stack([data.load_image(img) for img in data.train_ids[:4]])
    rows, whole_time = [], None
    for tile in [None, (192, 256), (128, 192)]:
        case = dataclasses.replace(spec, predict=PredictConfig(tile=tile, overlap=32))
        member = TorchMember(case, [checkpoint])
        member.predict_proba(photos[:1])  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            member.predict_proba(photos)
            times.append((time.perf_counter() - start) / len(photos))
        seconds = statistics.median(times)
        whole_time = whole_time or seconds
        label = "whole (padded 320x480)" if tile is None else f"tiles {tile[0]}x{tile[1]}, overlap 32"
        rows.append([label, f"{1000 * seconds:.0f}", f"{seconds / whole_time:.2f}x"])
    return rows


def run(quick: bool) -> str:
    from carvana.synth import generate

    repeats = 1 if quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        generate(root, n_cars=1, n_test_cars=1, size=(PHOTO[1], PHOTO[0]), seed=5, progress=False)
        data = CarvanaData(root)
        training = _training_rows(data, Path(tmp), repeats)
        prediction = _prediction_rows(data, Path(tmp), 2 if quick else 5)
    return (
        f"{len(data.train_ids)} synthetic {PHOTO[1]}x{PHOTO[0]} photos, LinkNet {ENCODER.removeprefix('tu-')}, CPU "
        f"({'quick' if quick else 'full'} run). Training: batch 4, augmentation on, steady-state second epoch, median "
        f"of {repeats} runs; both at the same pixels per sample; data wait = share of the epoch spent waiting for "
        "the next batch. Crops are cut after augmenting the whole padded photo, so their data cost grows with "
        "the photo, not the crop.\n\n"
        + markdown_table(["training on", "sample", "px per sample", "img/s", "data wait"], training)
        + f"\n\nPrediction of a {PHOTO[1]}x{PHOTO[0]} photo (padded to 480, hflip TTA, cropped back), median of "
        "several runs over 4 photos; the reference is whole-photo prediction in the same run.\n\n"
        + markdown_table(["prediction", "ms per photo", "vs whole"], prediction)
    )
