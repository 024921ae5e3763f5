"""`folds.csv` (`img,car,fold`): written once, read by everyone, checked for leaks on every read."""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from carvana.atomic import write_text_atomic
from carvana.dataset import car_of, image_id, parse_id, read_csv_rows
from carvana.errors import WorkbenchError

COLUMNS = ["img", "car", "fold"]


@dataclass(frozen=True)
class Folds:
    """The fold of every training image; `hash` identifies the exact folds.csv it was read from."""

    fold_of: dict[str, int]  # image id -> fold
    n_folds: int
    hash: str

    def ids(self, fold: int, held_out: bool = True) -> list[str]:
        """Image ids in fold `fold` (held_out=True) or in every other fold (held_out=False)."""
        return sorted(img for img, k in self.fold_of.items() if (k == fold) == held_out)

    def cars(self, fold: int) -> list[str]:
        return sorted({car_of(img) for img in self.ids(fold)})


def write_folds(path: Path, fold_of_car: dict[str, int], train_ids: list[str]) -> Folds:
    """Write folds.csv atomically (rows sorted by image id) and return it as read back."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for img in sorted(train_ids):
        writer.writerow([img, car_of(img), fold_of_car[car_of(img)]])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, buffer.getvalue())
    return read_folds(path, train_ids)


# `workbench folds` never replaces a run's folds.csv (every result in the run is built on it), so the fix
# for a damaged or foreign one is the original file back, or a new run folder.
FOLDS_FIX = "restore the run's folds.csv, or use another --run-dir for this data (`workbench folds` makes new folds)"


def read_folds(path: Path, train_ids: list[str] | None = None) -> Folds:
    """Read and check folds.csv: ids parse, each car in one fold, folds 0..K-1 all used, and (when
    `train_ids` is given) exactly the data's training images. WorkbenchError naming the problem."""
    rows = read_csv_rows(Path(path), COLUMNS)
    fold_of: dict[str, int] = {}
    fold_of_car: dict[str, int] = {}
    for line_no, row in enumerate(rows, start=2):
        where = f"{path}: line {line_no}"
        img = image_id(row["img"])
        try:
            car = parse_id(img)[0]
            fold = int(row["fold"])
        except ValueError as error:
            raise WorkbenchError(f"{where}: {error}; {FOLDS_FIX}") from None
        if row["car"] != car:
            raise WorkbenchError(f"{where}: car {row['car']!r} does not match image {img}; {FOLDS_FIX}")
        if img in fold_of:
            raise WorkbenchError(f"{where}: {img} is listed twice; {FOLDS_FIX}")
        if fold_of_car.setdefault(car, fold) != fold:
            raise WorkbenchError(
                f"{where}: car {car} is split across folds {fold_of_car[car]} and {fold} (a leak: all 16 photos of a "
                f"car must share a fold); {FOLDS_FIX}"
            )
        fold_of[img] = fold
    n_folds = _check_fold_numbers(path, set(fold_of_car.values()))
    if train_ids is not None:
        _check_same_images(path, fold_of, train_ids)
    return Folds(fold_of, n_folds, hashlib.sha256(Path(path).read_bytes()).hexdigest())


def _check_fold_numbers(path: Path, folds: set[int]) -> int:
    n_folds = max(folds, default=-1) + 1
    if n_folds < 2 or folds != set(range(n_folds)):
        raise WorkbenchError(f"{path}: folds used are {sorted(folds)}; they must be 0..K-1 with K >= 2; {FOLDS_FIX}")
    return n_folds


def _check_same_images(path: Path, fold_of: dict[str, int], train_ids: list[str]) -> None:
    missing = sorted(set(train_ids) - set(fold_of))
    extra = sorted(set(fold_of) - set(train_ids))
    if missing or extra:
        what = f"no fold for train image {missing[0]}" if missing else f"image {extra[0]} is not in the data's train/"
        raise WorkbenchError(
            f"{path}: does not match the data ({len(missing)} missing, {len(extra)} extra; {what}); {FOLDS_FIX}"
        )
