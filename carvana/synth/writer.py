"""Write a synthetic dataset in Kaggle's Carvana layout, into a temporary sibling renamed at the end."""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from carvana.dataset import N_ANGLES
from carvana.errors import WorkbenchError
from carvana.progress import progress_bar
from carvana.rle import rle_encode
from carvana.synth.annotate import annotate
from carvana.synth.car import build_car
from carvana.synth.catalog import CarSpec, draw_car
from carvana.synth.render import render_view
from carvana.synth.variants import Variant, get_variant

TRAIN, TEST = 0, 1
JPEG_QUALITY = (85, 95)  # inclusive range, drawn per image
SAMPLE_RLE = "1 1"  # what every row of sample_submission.csv holds, as in Kaggle's sample
METADATA_FIELDS = ["id", "year", "make", "model", "trim1", "trim2"]
MAX_SIDE = 4096


@dataclass(frozen=True)
class Shot:
    """One photo to take: which car, from which angle, for which split."""

    spec: CarSpec
    split: int
    index: int  # the car's index within its split (it seeds the car)
    angle: int

    @property
    def img(self) -> str:
        return f"{self.spec.car_id}_{self.angle:02d}.jpg"


def car_rng(seed: int, split: int, index: int, angle: int = 0) -> np.random.Generator:
    """The Generator for one car (angle 0) or one of its photos: independent of how many cars exist."""
    return np.random.default_rng([seed, split, index, angle])


def draw_cars(seed: int, split: int, n_cars: int, taken: set[str], variant: Variant) -> list[CarSpec]:
    """Cars 0..n_cars-1 of a split; a car whose id is already taken is redrawn from the same stream."""
    cars = []
    for index in range(n_cars):
        rng = car_rng(seed, split, index)
        spec = draw_car(rng, variant)
        while spec.car_id in taken:
            spec = draw_car(rng, variant)
        taken.add(spec.car_id)
        cars.append(spec)
    return cars


def check_args(out_dir: Path, n_cars: int, n_test_cars: int, size: tuple[int, int]) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise WorkbenchError(
            f"{out_dir}: already exists and is not an empty folder; pass a new --out folder or delete this one"
        )
    if n_cars < 1 or n_test_cars < 0:
        raise WorkbenchError(
            f"{out_dir}: need at least 1 train car and 0 or more test cars (got {n_cars} and {n_test_cars})"
        )
    width, height = size
    if not (32 <= width <= MAX_SIDE and 32 <= height <= MAX_SIDE):
        raise WorkbenchError(
            f"{out_dir}: image size {width}x{height} is outside 32..{MAX_SIDE} per side; "
            "pass e.g. --size 480x320 (Kaggle's is 1918x1280)"
        )


def generate(
    out_dir: Path,
    n_cars: int,
    n_test_cars: int,
    *,
    size: tuple[int, int] = (480, 320),
    seed: int = 0,
    progress: bool = True,
    variant: str = "default",
) -> None:
    """Write `n_cars` train and `n_test_cars` test cars x 16 angles at `size` (W, H) into `out_dir`.

    `variant` names a studio variant (`carvana.synth.variants.VARIANTS`): how large the cars are in
    the frame, the fleet's colours, the annotators' habits.

    The whole layout is written into a hidden temporary sibling and renamed to `out_dir` at the end,
    so a killed run leaves no folder that looks complete (only a `.<name>.tmp-*` sibling to delete).
    Same seed, same files, byte for byte; car i of a split does not depend on how many cars there are.
    """
    out_dir = Path(out_dir)
    size = (int(size[0]), int(size[1]))
    check_args(out_dir, n_cars, n_test_cars, size)
    studio = get_variant(variant)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    train, test = draw_cars(seed, TRAIN, n_cars, taken, studio), draw_cars(seed, TEST, n_test_cars, taken, studio)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the dataset is not
        _write_layout(tmp, train, test, size, seed, progress, studio.zoom)
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_layout(
    root: Path, train: list[CarSpec], test: list[CarSpec], size: tuple[int, int], seed: int, progress: bool, zoom: float
) -> None:
    for name in ("train", "train_masks", "test"):
        (root / name).mkdir()
    shots = [
        Shot(spec, split, index, angle)
        for split, cars in ((TRAIN, train), (TEST, test))
        for index, spec in enumerate(cars)
        for angle in range(1, N_ANGLES + 1)
    ]
    rles: dict[int, list[tuple[str, str]]] = {TRAIN: [], TEST: []}
    bar = progress_bar(total=len(shots), desc="synth", unit="img", disable=not progress)
    packed, packed_id = None, ""
    for shot in shots:
        if shot.spec.car_id != packed_id:  # shots come grouped by car: build each mesh once
            packed, packed_id = build_car(shot.spec), shot.spec.car_id
        rng = car_rng(seed, shot.split, shot.index, shot.angle)
        assert packed is not None  # the first shot built its car
        image, layers = render_view(packed, shot.spec, shot.angle, size, rng, zoom)
        mask = annotate(layers, shot.spec.policy, rng)
        folder = "train" if shot.split == TRAIN else "test"
        quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
        Image.fromarray(image).save(root / folder / shot.img, quality=quality)
        if shot.split == TRAIN:
            write_mask_gif(mask, root / "train_masks" / shot.img.replace(".jpg", "_mask.gif"))
        rles[shot.split].append((shot.img, rle_encode(mask)))
        bar.update(1)
    bar.close()
    _write_csv(root / "train_masks.csv", ["img", "rle_mask"], sorted(rles[TRAIN]))
    _write_csv(root / "test_masks.csv", ["img", "rle_mask"], sorted(rles[TEST]))
    _write_csv(root / "sample_submission.csv", ["img", "rle_mask"], sorted((img, SAMPLE_RLE) for img, _ in rles[TEST]))
    metadata = sorted((spec.metadata for spec in train + test), key=lambda row: str(row["id"]))
    _write_csv(root / "metadata.csv", METADATA_FIELDS, [[row[k] for k in METADATA_FIELDS] for row in metadata])


def write_mask_gif(mask: np.ndarray, path: Path) -> None:
    """Save an (H, W) 0/1 mask as Kaggle does: a palette GIF whose pixel values are 0 and 1."""
    image = Image.frombytes("P", (mask.shape[1], mask.shape[0]), np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
    image.putpalette([0, 0, 0, 255, 255, 255])
    image.save(path, format="GIF", optimize=False)


def _write_csv(path: Path, header: list[str], rows: list) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
