"""The checks of `workbench import-member` that need only file names: every train and test photo exactly once,
no foreign id, and the folds the OOF maps were made with (fold<k>/ folders or a fold file) the run's own,
car by car. They run before any map is decoded, so a wrong export is refused at once."""

from __future__ import annotations

from pathlib import Path

from carvana.dataset import car_of
from carvana.errors import WorkbenchError, and_more
from folds.exchange import compare_folds, read_car_folds
from oof.exchange import map_files
from oof.format import FOLD_DIR_PATTERN, fold_dir_name
from workbench.run import Run

__all__ = ["test_files", "train_files"]


def train_files(run: Run, oof_dir: Path, folds_file: Path | None) -> tuple[dict[str, Path], dict[str, int], str]:
    """({train img: file}, {img: the run's fold}, how the folds were checked), or WorkbenchError."""
    if not oof_dir.is_dir():
        raise WorkbenchError(f"{oof_dir}: OOF folder not found; give the folder of OOF maps (`<img>.png` or fold<k>/)")
    fold_dirs = {int(m.group(1)): p for p in oof_dir.iterdir() if p.is_dir() and (m := FOLD_DIR_PATTERN.match(p.name))}
    if fold_dirs:
        flat = map_files(oof_dir)
        if flat:
            raise WorkbenchError(
                f"{oof_dir}: holds both fold<k>/ folders and maps ({next(iter(flat))}); keep one layout"
            )
        found: dict[str, list[Path]] = {}
        their_fold = {}
        for k, folder in sorted(fold_dirs.items()):
            for img, paths in map_files(folder).items():
                found.setdefault(img, []).extend(paths)
                their_fold[img] = k
        files = _one_each(found, oof_dir, "OOF")
    else:
        files, their_fold = _one_each(map_files(oof_dir), oof_dir, "OOF"), {}
    _check_ids(oof_dir, set(files), set(run.data.train_ids), "train")
    notes = []
    if their_fold:
        _check_folds(run, _fold_of_car(oof_dir, their_fold), f"{oof_dir} (its fold<k>/ folders)")
        notes.append("fold folders checked car by car against the run's folds")
    if folds_file is not None:
        _check_folds(run, read_car_folds(Path(folds_file), run.data.train_ids), str(folds_file))
        notes.append(f"{folds_file} checked car by car against the run's folds")
    if not notes:
        notes.append(
            "no fold folders and no --folds: the maps are taken as made with the run's exported folds "
            "(`workbench folds --export`); give --folds FILE to have them checked"
        )
    return files, run.folds.fold_of, "; ".join(notes)


def test_files(run: Run, test_dir: Path) -> dict[str, Path]:
    if not test_dir.is_dir():
        raise WorkbenchError(f"{test_dir}: test folder not found; give the folder of fold-averaged test maps")
    files = _one_each(map_files(test_dir), test_dir, "test")
    _check_ids(test_dir, set(files), set(run.data.test_ids), "test")
    return files


def _one_each(found: dict[str, list[Path]], folder: Path, what: str) -> dict[str, Path]:
    for img, paths in sorted(found.items()):
        if len(paths) > 1:
            names = ", ".join(str(p.relative_to(folder)) for p in paths)
            raise WorkbenchError(f"{folder}: {what} image {img} has {len(paths)} maps ({names}); keep exactly one")
    return {img: paths[0] for img, paths in sorted(found.items())}


def _check_ids(folder: Path, found: set[str], expected: set[str], split: str) -> None:
    extra, missing = sorted(found - expected), sorted(expected - found)
    if extra:
        raise WorkbenchError(
            f"{folder}: a map of {extra[0]}{and_more(extra)}, which is not a {split} photo of this data; "
            "remove it (maps of other data, or of the other split, do not belong here)"
        )
    if missing:
        raise WorkbenchError(
            f"{folder}: no map of {split} photo {missing[0]}{and_more(missing)} "
            f"({len(found)} of {len(expected)} present); every {split} photo needs one: export the missing maps"
        )


def _fold_of_car(folder: Path, fold_of_img: dict[str, int]) -> dict[str, int]:
    by_car: dict[str, int] = {}
    for img, k in sorted(fold_of_img.items()):
        if by_car.setdefault(car_of(img), k) != k:
            raise WorkbenchError(
                f"{folder}: car {car_of(img)} has OOF maps in {fold_dir_name(by_car[car_of(img)])}/ and "
                f"{fold_dir_name(k)}/ (a leak: all 16 photos of a car are held out by one fold); fix the export"
            )
    return by_car


def _check_folds(run: Run, theirs: dict[str, int], source: str) -> None:
    ours = {car_of(img): k for img, k in run.folds.fold_of.items()}
    differ = compare_folds(theirs, ours)
    if differ:
        raise WorkbenchError(
            f"{source}: the maps were made with other folds: {len(differ)} of {len(ours)} cars are held out by "
            f"another fold than in {run.paths.folds_csv} (e.g. {', '.join(differ[:3])}), so their OOF maps "
            "would leak into every learned entry's honest score; retrain on the run's folds "
            "(`workbench folds --export FILE`), or adopt theirs in a new run "
            "(`workbench folds --from FILE --run-dir NEW`)"
        )
