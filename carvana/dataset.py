"""Reading the competition's files in the Kaggle layout (see CARVANA.md).

Image ids are `<car>_<NN>` (12 lowercase hex digits, angle 01..16) without the `.jpg`; the CSVs' `img`
column carries the `.jpg` and is converted at the border (`csv_image_id`: nothing else, no folder).

Photos are decoded one way everywhere (`load_image`): the pixels as stored, an EXIF orientation tag
ignored, so a photo and its mask are never turned against each other; `check-data` refuses a photo that
carries such a tag (`exif_orientation`).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from carvana.errors import WorkbenchError

N_ANGLES = 16
KAGGLE_SIZE = (1918, 1280)  # (W, H) of every Kaggle photo
ID_TEXT = "<12 lowercase hex digits>_<01..16>"
ID_PATTERN = re.compile(r"^([0-9a-f]{12})_(0[1-9]|1[0-6])$")
TRAIN_DIR, MASK_DIR, TEST_DIR = "train", "train_masks", "test"
TRAIN_MASKS_CSV, METADATA_CSV, SAMPLE_CSV = "train_masks.csv", "metadata.csv", "sample_submission.csv"
TEST_MASKS_CSV = "test_masks.csv"  # written by the synthetic generator only: the test truth
EXIF_ORIENTATION = 0x0112  # the EXIF tag that asks viewers to turn a photo
METADATA_COLUMNS = ["id", "year", "make", "model", "trim1", "trim2"]


def parse_size(text: str) -> tuple[int, int]:
    """`"1918x1280"` -> (1918, 1280), i.e. (W, H); ValueError for anything but two positive integers."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"size {text!r} is not WxH (two positive integers, e.g. 1918x1280)")
    return int(parts[0]), int(parts[1])


def format_size(size: tuple[int, int]) -> str:
    """(W, H) -> `"WxH"`, the form `parse_size` reads."""
    return f"{size[0]}x{size[1]}"


def image_id(name: str) -> str:
    """`<car>_<NN>` from a file name or CSV value such as `abc..._01.jpg` or `abc..._01_mask.gif`."""
    stem = Path(name).name
    for suffix in (".jpg", "_mask.gif"):
        stem = stem.removesuffix(suffix)
    return stem


def parse_id(img: str) -> tuple[str, int]:
    """(car, angle 1..16) of an image id; ValueError when it is not `<12 lowercase hex digits>_<01..16>`."""
    match = ID_PATTERN.match(img)
    if not match:
        raise ValueError(f"{img!r} is not {ID_TEXT}")
    return match.group(1), int(match.group(2))


def car_of(img: str) -> str:
    return parse_id(img)[0]


def angle_of(img: str) -> int:
    return parse_id(img)[1]


def csv_image_id(value: str) -> str:
    """The image id of a CSV's `img` value, `<car>_<NN>.jpg` (or without `.jpg`); ValueError for anything
    else, a folder (`../x/<id>.jpg`) included: the value names a file the workbench will open or write."""
    img = value.removesuffix(".jpg")
    parse_id(img)
    return img


def read_rle_csv(path: Path) -> dict[str, str]:
    """{image id: rle} from an `img,rle_mask` CSV (train_masks.csv, sample_submission.csv, ...); every
    `img` is checked (`csv_image_id`) and named with its line when it is not a photo's name."""
    rows = read_csv_rows(path, ["img", "rle_mask"])
    table: dict[str, str] = {}
    for line_no, row in enumerate(rows, start=2):
        try:
            img = csv_image_id(row["img"] or "")
        except ValueError:
            raise WorkbenchError(
                f"{path}: line {line_no}: {row['img']!r} is not a photo's name {ID_TEXT}.jpg (no folder); "
                "write each photo's file name, e.g. 0cdf5b5d0ce1_01.jpg"
            ) from None
        if img in table:
            raise WorkbenchError(f"{path}: line {line_no}: {row['img']} is listed twice; keep one row per image")
        table[img] = row["rle_mask"] or ""
    return table


def read_csv_rows(path: Path, columns: list[str]) -> list[dict[str, str]]:
    """Rows of a CSV whose header must start with `columns`; WorkbenchError naming the file otherwise. A
    UTF-8 byte-order mark (spreadsheet programs write one) is accepted: every CSV the workbench reads
    comes through here or through carvana.submission's reader, which accepts one too."""
    if not path.is_file():
        raise WorkbenchError(f"{path}: file not found; the Kaggle layout needs it (see README, 'Data format')")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            if header[: len(columns)] != columns:
                raise WorkbenchError(
                    f"{path}: header is {','.join(header)!r}, expected {','.join(columns)!r}; "
                    f"make line 1 {','.join(columns)}"
                )
            return list(reader)
    except (UnicodeDecodeError, csv.Error) as error:
        raise WorkbenchError(f"{path}: not a readable CSV ({error}); restore the original file") from None


@dataclass(frozen=True)
class CarvanaData:
    """A data folder in the Kaggle layout: ids, cars, angles, images, masks and metadata."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def image_path(self, img: str, split: str = "train") -> Path:
        return self.root / (TRAIN_DIR if split == "train" else TEST_DIR) / f"{img}.jpg"

    def mask_path(self, img: str) -> Path:
        return self.root / MASK_DIR / f"{img}_mask.gif"

    @cached_property
    def train_ids(self) -> list[str]:
        return sorted(image_id(p.name) for p in (self.root / TRAIN_DIR).glob("*.jpg"))

    @cached_property
    def test_ids(self) -> list[str]:
        return sorted(image_id(p.name) for p in (self.root / TEST_DIR).glob("*.jpg"))

    def ids(self, split: str) -> list[str]:
        return self.train_ids if split == "train" else self.test_ids

    @cached_property
    def metadata(self) -> dict[str, dict[str, str]]:
        """{car: {year, make, model, trim1, trim2}} from metadata.csv."""
        rows = read_csv_rows(self.root / METADATA_CSV, METADATA_COLUMNS)
        return {row["id"]: {k: row[k] for k in METADATA_COLUMNS[1:]} for row in rows}

    @cached_property
    def train_rles(self) -> dict[str, str]:
        return read_rle_csv(self.root / TRAIN_MASKS_CSV)

    @property
    def test_truth_path(self) -> Path:
        return self.root / TEST_MASKS_CSV

    def load_image(self, img: str, split: str = "train") -> np.ndarray:
        """(H, W, 3) uint8 RGB photo."""
        return load_image(self.image_path(img, split))

    def load_mask(self, img: str) -> np.ndarray:
        """(H, W) uint8 mask, 1 = car."""
        return load_mask(self.mask_path(img))


def load_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a JPEG, the pixels as stored (an EXIF orientation tag is ignored: OpenCV
    would turn the photo, never its mask); WorkbenchError naming the file when it does not decode."""
    try:
        encoded = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise WorkbenchError(f"{path}: cannot be read ({error.strerror}); restore the file") from None
    # OpenCV decodes a truncated JPEG without complaint (grey bottom rows): check the end marker.
    complete = encoded[:2].tobytes() == b"\xff\xd8" and b"\xff\xd9" in encoded[-64:].tobytes()
    bgr = cv2.imdecode(encoded, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if complete else None
    if bgr is None:
        raise WorkbenchError(f"{path}: corrupt or truncated JPEG; replace it with the original photo")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation tag of an opened photo (1, the default, when it has none): anything but 1 means
    viewers and OpenCV's default decoding turn the pixels."""
    value = image.getexif().get(EXIF_ORIENTATION, 1)
    return value if isinstance(value, int) else 1


def load_mask(path: Path) -> np.ndarray:
    """(H, W) uint8 0/1 from a Kaggle mask GIF (palette mode, values 0/1; 0/255 greyscale accepted)."""
    try:
        with Image.open(path) as gif:
            mode = gif.mode
            values = np.array(gif)
    except (OSError, SyntaxError) as error:
        raise WorkbenchError(f"{path}: does not decode as a GIF mask ({error}); replace it with the original") from None
    levels = set(np.unique(values).tolist())
    if not (levels <= {0, 1} or (mode != "P" and levels <= {0, 255})):
        raise WorkbenchError(
            f"{path}: mask is not binary (mode {mode}, values {sorted(levels)[:6]}); "
            "masks hold 0 for background and 1 for car"
        )
    return (values > 0).view(np.uint8)
