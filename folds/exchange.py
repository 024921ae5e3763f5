"""Fold files that travel between teammates: `id,fold`, one row per car (the 1st- and 4th-place convention),
or `img,fold`, one row per photo.

A team trains on one split: whoever made the run exports its folds, teammates train their members on
them, and a run that adopts a teammate's folds reads the file back, checked car by car (every train car
once, all 16 photos of a car in one fold, folds numbered 0..K-1).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from carvana.atomic import write_text_atomic
from carvana.dataset import ID_PATTERN, car_of, image_id
from carvana.errors import WorkbenchError, and_more
from folds.table import Folds

CAR_COLUMNS, IMAGE_COLUMNS = ["id", "fold"], ["img", "fold"]
CAR_FILE_FIX = "give a CSV with the header `id,fold` (one row per car) or `img,fold` (one row per photo)"


def write_car_folds(path: Path, folds: Folds) -> Path:
    """Write `id,fold` (one row per car, sorted by car) atomically; return the path."""
    fold_of_car = {car_of(img): k for img, k in folds.fold_of.items()}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CAR_COLUMNS)
    for car in sorted(fold_of_car):
        writer.writerow([car, fold_of_car[car]])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, buffer.getvalue())
    return path


def read_car_folds(path: Path, train_ids: list[str]) -> dict[str, int]:
    """{car: fold} from an `id,fold` or `img,fold` file, checked against the data's train photos.

    WorkbenchError naming the file, the line and the fix: an unknown header, an id that is not a car or a
    photo of this data, a car split across folds or listed twice, a train car missing, folds not 0..K-1.
    """
    rows, header = _read_rows(path)
    by_car = header == CAR_COLUMNS
    cars = {car_of(img) for img in train_ids}
    fold_of_car: dict[str, int] = {}
    seen_images: set[str] = set()
    for line_no, row in enumerate(rows, start=2):
        where = f"{path}: line {line_no}"
        key, fold = _parse_row(row, by_car, where)
        car = key if by_car else car_of(key)
        if car not in cars:
            raise WorkbenchError(
                f"{where}: {key} is not a train {'car' if by_car else 'photo'} of this data; "
                "export the folds from a run on the same data"
            )
        if by_car and car in fold_of_car:
            raise WorkbenchError(f"{where}: car {car} is listed twice; keep one row per car")
        if not by_car:
            if key in seen_images:
                raise WorkbenchError(f"{where}: {key} is listed twice; keep one row per photo")
            seen_images.add(key)
        if fold_of_car.setdefault(car, fold) != fold:
            raise WorkbenchError(
                f"{where}: car {car} is split across folds {fold_of_car[car]} and {fold} (a leak: all 16 photos of a "
                "car must share a fold); fix the file"
            )
    _check_complete(path, fold_of_car, cars, seen_images if not by_car else None, train_ids)
    return fold_of_car


def _read_rows(path: Path) -> tuple[list[list[str]], list[str]]:
    if not Path(path).is_file():
        raise WorkbenchError(f"{path}: fold file not found; {CAR_FILE_FIX}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            lines = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as error:
        raise WorkbenchError(f"{path}: not a readable CSV ({error}); {CAR_FILE_FIX}") from None
    header = [h.strip() for h in lines[0]] if lines else []
    if header not in (CAR_COLUMNS, IMAGE_COLUMNS):
        raise WorkbenchError(f"{path}: header is {','.join(header)!r}; {CAR_FILE_FIX}")
    return [row for row in lines[1:] if row], header


def _parse_row(row: list[str], by_car: bool, where: str) -> tuple[str, int]:
    if len(row) != 2:
        raise WorkbenchError(f"{where}: {len(row)} columns, expected 2; {CAR_FILE_FIX}")
    key, fold_text = row[0].strip(), row[1].strip()
    if by_car:
        valid = len(key) == 12 and ID_PATTERN.match(f"{key}_01") is not None
    else:
        key = image_id(key)
        valid = ID_PATTERN.match(key) is not None
    if not valid:
        what = "a car id (12 lowercase hex digits)" if by_car else "a photo id <car>_<NN>[.jpg]"
        raise WorkbenchError(f"{where}: {row[0]!r} is not {what}; {CAR_FILE_FIX}")
    try:
        return key, int(fold_text)
    except ValueError:
        raise WorkbenchError(f"{where}: fold {fold_text!r} is not an integer; folds are numbered 0..K-1") from None


def _check_complete(
    path: Path, fold_of_car: dict[str, int], cars: set[str], images: set[str] | None, train_ids: list[str]
) -> None:
    missing = sorted(cars - set(fold_of_car))
    if missing:
        raise WorkbenchError(
            f"{path}: no fold for train car {missing[0]}{and_more(missing)}; every train car needs one "
            "(export the folds from a run on the same data)"
        )
    if images is not None:
        missing_images = sorted(set(train_ids) - images)
        if missing_images:
            raise WorkbenchError(
                f"{path}: no row for train photo {missing_images[0]}{and_more(missing_images)}; "
                "list every photo, or give one row per car (`id,fold`)"
            )
    used = sorted(set(fold_of_car.values()))
    if len(used) < 2 or used != list(range(len(used))):
        raise WorkbenchError(f"{path}: folds used are {used}; number them 0..K-1 with K >= 2")


def compare_folds(theirs: Mapping[str, int], ours: Mapping[str, int]) -> list[str]:
    """Cars whose fold differs between two {car: fold} maps of the same cars, sorted.

    Fold numbers are labels: two splits that hold out the same groups of cars agree even when the groups
    are numbered differently. Their folds are matched to ours so that the most cars agree (an assignment on
    the table of shared cars); the cars off that matching are the ones that differ, as few as any
    renumbering allows.
    """
    from scipy.optimize import linear_sum_assignment

    cars = sorted(ours)
    their_labels, our_labels = sorted(set(theirs.values())), sorted(set(ours.values()))
    shared = np.zeros((len(their_labels), len(our_labels)), dtype=np.int64)
    for car in cars:
        shared[their_labels.index(theirs[car]), our_labels.index(ours[car])] += 1
    rows, columns = linear_sum_assignment(shared, maximize=True)
    match = {their_labels[r]: our_labels[c] for r, c in zip(rows, columns)}
    return [car for car in cars if match.get(theirs[car]) != ours[car]]
