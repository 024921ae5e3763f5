"""Validation of a data folder in the Kaggle layout, run by `workbench check-data` and every verb
that reads data.

`check_data(root, deep=False)` checks what reading headers and CSVs can tell: the files exist,
names parse, images and masks pair one to one, one size throughout, the CSVs list exactly the
images. `deep=True` also decodes every image and mask and compares each GIF with train_masks.csv
(minutes at Kaggle scale, so only `check-data` does it; other verbs meet a bad file when they load
it, with the same kind of message), decoded as training decodes them (carvana.dataset.load_image).
Every `img` of the CSVs (sample_submission.csv included) is checked to be a photo's name before any
work (carvana.dataset.csv_image_id); a photo with an EXIF orientation tag is refused from its header.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from carvana.dataset import (
    MASK_DIR,
    METADATA_CSV,
    SAMPLE_CSV,
    TEST_DIR,
    TRAIN_DIR,
    TRAIN_MASKS_CSV,
    CarvanaData,
    car_of,
    exif_orientation,
    image_id,
    load_image,
    load_mask,
    parse_id,
    read_rle_csv,
)
from carvana.errors import WorkbenchError
from carvana.progress import progress_bar
from carvana.rle import rle_decode, rle_problem


@dataclass(frozen=True)
class DataSummary:
    root: Path
    n_train_cars: int
    n_test_cars: int
    n_train_images: int
    n_test_images: int
    size: tuple[int, int]  # (W, H)
    makes: dict[str, int]  # make -> number of cars
    has_test_truth: bool

    def __str__(self) -> str:
        makes = ", ".join(f"{make} {n}" for make, n in sorted(self.makes.items(), key=lambda kv: -kv[1]))
        return (
            f"{self.root}: ok\n"
            f"  train: {self.n_train_cars} cars, {self.n_train_images} images (+ masks)\n"
            f"  test:  {self.n_test_cars} cars, {self.n_test_images} images"
            f"{' (truth in test_masks.csv)' if self.has_test_truth else ''}\n"
            f"  size:  {self.size[0]}x{self.size[1]} (W x H)\n"
            f"  makes: {makes}"
        )


def check_data(root: Path, *, deep: bool = False, progress: bool = False) -> DataSummary:
    """Validate the data folder `root`; raise WorkbenchError naming the first bad file and the fix."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise WorkbenchError(
            f"{root}: is a file, not a data folder; pass the folder that holds train/, train_masks/ and test/"
        )
    if not root.is_dir():
        raise WorkbenchError(
            f"{root}: data folder not found; run `workbench synth --out {root}` or download Kaggle's data there"
        )
    for name in (TRAIN_DIR, MASK_DIR, TEST_DIR):
        if not (root / name).is_dir():
            raise WorkbenchError(
                f"{root / name}: folder missing; the Kaggle layout needs train/, train_masks/ and test/"
            )
    data = CarvanaData(root)
    train_ids, test_ids = data.train_ids, data.test_ids
    _check_names(root / TRAIN_DIR, "*", ".jpg")
    _check_names(root / TEST_DIR, "*", ".jpg")
    _check_names(root / MASK_DIR, "*", "_mask.gif")
    if not train_ids:
        raise WorkbenchError(f"{root / TRAIN_DIR}: no .jpg images; put the training photos there")
    _check_pairs(root, train_ids)
    _check_csv_ids(root / TRAIN_MASKS_CSV, data.train_rles, train_ids, "train/")
    sample = read_rle_csv(root / SAMPLE_CSV)
    _check_csv_ids(root / SAMPLE_CSV, sample, test_ids, "test/")
    size = _check_sizes(data, train_ids, test_ids)
    _check_rles(root / TRAIN_MASKS_CSV, data.train_rles, size)
    if data.test_truth_path.exists():
        truth = read_rle_csv(data.test_truth_path)
        _check_csv_ids(data.test_truth_path, truth, test_ids, "test/")
        _check_rles(data.test_truth_path, truth, size)
    cars = {"train": sorted({car_of(i) for i in train_ids}), "test": sorted({car_of(i) for i in test_ids})}
    makes = _check_metadata(root / METADATA_CSV, data, cars["train"] + cars["test"])
    if deep:
        _decode_everything(data, train_ids, test_ids, size, progress)
    return DataSummary(
        root,
        len(cars["train"]),
        len(cars["test"]),
        len(train_ids),
        len(test_ids),
        size,
        makes,
        data.test_truth_path.exists(),
    )


def _check_names(folder: Path, pattern: str, suffix: str) -> None:
    for path in folder.glob(pattern):
        if not path.name.endswith(suffix):
            raise WorkbenchError(
                f"{path}: unexpected file in {folder.name}/ (expected only *{suffix}); move it elsewhere"
            )
        try:
            parse_id(image_id(path.name))
        except ValueError as error:
            raise WorkbenchError(f"{path}: malformed name, {error}; Kaggle names are <car>_<NN>{suffix}") from None


def _check_pairs(root: Path, train_ids: list[str]) -> None:
    masks = {image_id(p.name) for p in (root / MASK_DIR).glob("*_mask.gif")}
    for img in train_ids:
        if img not in masks:
            raise WorkbenchError(
                f"{root / TRAIN_DIR / (img + '.jpg')}: no mask {MASK_DIR}/{img}_mask.gif; add it or remove the image"
            )
    for img in sorted(masks - set(train_ids)):
        raise WorkbenchError(
            f"{root / MASK_DIR / (img + '_mask.gif')}: no image {TRAIN_DIR}/{img}.jpg for this mask; "
            "add it or remove the mask"
        )


def _check_csv_ids(path: Path, table: dict[str, str], ids: list[str], folder: str) -> None:
    listed, present = set(table), set(ids)
    for img in sorted(present - listed):
        raise WorkbenchError(
            f"{path}: no row for {img}.jpg, which is in {folder}; the CSV must list exactly the images in {folder}"
        )
    for img in sorted(listed - present):
        raise WorkbenchError(
            f"{path}: row {img}.jpg has no image in {folder}; the CSV must list exactly the images in {folder}"
        )


def _check_sizes(data: CarvanaData, train_ids: list[str], test_ids: list[str]) -> tuple[int, int]:
    """The one (W, H) of every image and mask, read from file headers; the odd one out is named. A photo
    whose EXIF orientation asks to turn it is refused: its mask fits the pixels as stored, which is how the
    workbench decodes every photo (carvana.dataset.load_image), but the photo looks turned everywhere else."""
    paths = [data.image_path(i, "train") for i in train_ids] + [data.mask_path(i) for i in train_ids]
    paths += [data.image_path(i, "test") for i in test_ids]
    sizes = []
    for path in paths:
        try:
            with Image.open(path) as image:
                sizes.append(image.size)
                orientation = exif_orientation(image) if path.suffix == ".jpg" else 1
        except (OSError, SyntaxError):
            raise WorkbenchError(f"{path}: not a readable image; replace it with the original file") from None
        if orientation != 1:
            raise WorkbenchError(
                f"{path}: carries an EXIF orientation tag ({orientation}, not 1): viewers turn this photo, the "
                "workbench reads its pixels as stored, like its mask; rotate the pixels and drop the tag (e.g. "
                "`exiftran -ai FILE`, or Pillow's ImageOps.exif_transpose) so the stored photo is upright like its "
                "mask, or drop the tag alone if the stored pixels already match the mask"
            )
    size = Counter(sizes).most_common(1)[0][0]
    for path, this in zip(paths, sizes):
        if this != size:
            raise WorkbenchError(
                f"{path}: size {this[0]}x{this[1]} differs from the {size[0]}x{size[1]} of the "
                "other images; every image and mask must have one size"
            )
    return size


def _check_rles(path: Path, table: dict[str, str], size: tuple[int, int]) -> None:
    n_pixels = size[0] * size[1]
    for img, rle in table.items():
        problem = rle_problem(rle, n_pixels)
        if problem:
            raise WorkbenchError(f"{path}: the RLE of {img}.jpg {problem}; re-encode it (row-major, 1-indexed)")


def _check_metadata(path: Path, data: CarvanaData, cars: list[str]) -> dict[str, int]:
    metadata = data.metadata
    for car in cars:
        if car not in metadata:
            raise WorkbenchError(f"{path}: no row for car {car}; metadata.csv needs one row per car (train and test)")
    return dict(Counter(metadata[car]["make"] for car in cars))


def _decode_everything(data: CarvanaData, train_ids, test_ids, size, progress: bool) -> None:
    """Decode every photo and mask, and compare each mask with its train_masks.csv row."""
    width, height = size

    def check_decoded(path: Path, decoded: tuple[int, int], against: str) -> None:
        if decoded != (height, width):
            raise WorkbenchError(
                f"{path}: decodes to {decoded[1]}x{decoded[0]}, {against} is {width}x{height}; "
                "re-save the file with its pixels upright and no orientation tag"
            )

    def check_train(img: str) -> None:
        photo = load_image(data.image_path(img, "train"))
        mask = load_mask(data.mask_path(img))
        check_decoded(data.image_path(img, "train"), photo.shape[:2], f"its mask {data.mask_path(img).name}")
        check_decoded(data.mask_path(img), mask.shape, "the photos' size")
        if not np.array_equal(mask, rle_decode(data.train_rles[img], (height, width))):
            raise WorkbenchError(
                f"{data.root / TRAIN_MASKS_CSV}: row {img}.jpg disagrees with {data.mask_path(img)}; "
                "re-encode the CSV from the GIFs"
            )

    def check_test(img: str) -> None:
        check_decoded(data.image_path(img, "test"), load_image(data.image_path(img, "test")).shape[:2], "every photo")

    jobs = [(check_train, i) for i in train_ids] + [(check_test, i) for i in test_ids]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = pool.map(lambda job: job[0](job[1]), jobs)
        for _ in progress_bar(results, total=len(jobs), desc="decoding", disable=not progress, unit="img"):
            pass
