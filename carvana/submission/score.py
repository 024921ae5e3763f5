"""Score a submission file against a truth file (`img,rle_mask`, e.g. the synthetic test_masks.csv).

Rows are matched by id, as Kaggle's scorer does: the two files must hold the same ids, in any order.
Dice is computed from the runs directly (`carvana.rle.runs_intersection`, exact integers), so the
result equals `carvana.mean_dice` on the decoded masks, in the submission's order, bit for bit,
without ever building a pixel array.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from carvana.dataset import KAGGLE_SIZE, format_size, image_id, parse_id
from carvana.errors import WorkbenchError
from carvana.rle import Runs, parse_runs, runs_intersection
from carvana.submission.files import iter_rows

N_NAMED = 5  # ids named in an error message; the rest are counted


@dataclass(frozen=True)
class ScoreResult:
    """Mean Dice over images, and the mean Dice and image count per angle ("01".."16").

    Ids that are not `<car>_<NN>.jpg` count in the mean but in no angle.
    """

    mean_dice: float
    n_images: int
    dice_by_angle: dict[str, float] = field(default_factory=dict)
    n_by_angle: dict[str, int] = field(default_factory=dict)

    def to_markdown(self) -> str:
        """A small table: the mean, then one row per angle."""
        lines = ["| images | mean Dice |", "|---|---|", f"| all {self.n_images} | {self.mean_dice:.6f} |"]
        lines += [f"| angle {a} ({self.n_by_angle[a]}) | {d:.6f} |" for a, d in self.dice_by_angle.items()]
        return "\n".join(lines)


def runs_dice(pred: Runs, truth: Runs) -> float:
    """Dice of two run lists (0-indexed starts, exclusive ends), as `carvana.dice` computes it; 1.0
    when both are empty."""
    total = int((pred[1] - pred[0]).sum()) + int((truth[1] - truth[0]).sum())
    if total == 0:
        return 1.0
    return 2.0 * runs_intersection(pred, truth) / total


class _RowsParser:
    """Parses a file's RLEs, naming the file, row and image size when one is malformed."""

    def __init__(self, path: Path, image_size: tuple[int, int]) -> None:
        self.path, self.image_size = path, image_size
        self.n_pixels = image_size[0] * image_size[1]
        self.seen: set[str] = set()

    def rows(self) -> Iterator[tuple[int, str, str]]:
        """The file's rows; WorkbenchError at an id seen before."""
        for row, img, rle in iter_rows(self.path):
            if img in self.seen:
                raise WorkbenchError(f"{self.path}: duplicate id {img} at row {row}; fix: keep one row per image")
            self.seen.add(img)
            yield row, img, rle

    def parse(self, row: int, img: str, rle: str) -> Runs:
        try:
            return parse_runs(rle, self.n_pixels)
        except ValueError as error:
            raise WorkbenchError(
                f"{self.path}: row {row} ({img}): RLE {error}; "
                f"fix: pass the masks' image size (--size, now {format_size(self.image_size)})"
            ) from None


class _TruthLookup:
    """The truth's runs by id, reading the file forward only as far as a wanted id; rows read past are
    kept (as int32 runs) until wanted, so memory grows only with how differently the two files are ordered."""

    def __init__(self, path: Path, image_size: tuple[int, int]) -> None:
        self.parser = _RowsParser(path, image_size)
        self.rows = self.parser.rows()
        self.ahead: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def pop(self, img: str) -> Runs | None:
        """The runs of `img`, or None when the truth has no such id."""
        if img in self.ahead:
            starts, ends = self.ahead.pop(img)
            return starts.astype(np.int64), ends.astype(np.int64)
        for row, other, rle in self.rows:
            runs = self.parser.parse(row, other, rle)
            if other == img:
                return runs
            self.ahead[other] = (runs[0].astype(np.int32), runs[1].astype(np.int32))
        return None

    def unmatched(self) -> list[str]:
        """The truth's ids never popped, in the truth's order (reads the rest of the file)."""
        later = [img for _, img, _ in self.rows]
        return [*self.ahead, *later]


def score_submission(
    submission_path: Path, truth_path: Path, *, image_size: tuple[int, int] = KAGGLE_SIZE
) -> ScoreResult:
    """Mean Dice of a submission against a truth file holding the same ids (in any order).

    `image_size` is (W, H). The submission streams row by row; WorkbenchError naming the missing and
    extra ids when the two id sets differ, or the file and row of a malformed RLE.
    """
    submission_path, truth_path = Path(submission_path), Path(truth_path)
    submission = _RowsParser(submission_path, image_size)
    truth = _TruthLookup(truth_path, image_size)
    ids: list[str] = []
    scores: list[float] = []
    extra: list[str] = []
    for row, img, rle in submission.rows():
        truth_runs = truth.pop(img)
        if truth_runs is None:
            extra.append(img)
            continue
        ids.append(img)
        scores.append(runs_dice(submission.parse(row, img, rle), truth_runs))
    missing = truth.unmatched()
    if missing or extra:
        raise WorkbenchError(
            f"{submission_path}: ids differ from {truth_path}: {_id_difference(missing, extra)}; "
            "fix: score a submission of exactly the truth's ids (any order)"
        )
    if not scores:
        raise WorkbenchError(f"{submission_path}: no rows to score; fix: pass a submission with rows")
    return _summarise(ids, scores)


def _id_difference(missing: list[str], extra: list[str]) -> str:
    """E.g. `missing 2 ids (a, b); extra 1 id (c)`, naming the first N_NAMED of each."""
    parts = []
    for word, found in (("missing", missing), ("extra", extra)):
        if found:
            named = ", ".join(found[:N_NAMED]) + (f" and {len(found) - N_NAMED} more" if len(found) > N_NAMED else "")
            parts.append(f"{word} {len(found)} id{'s' if len(found) > 1 else ''} ({named})")
    return "; ".join(parts)


def _angle(img: str) -> str | None:
    """The angle ("01".."16") of a `<car>_<NN>.jpg` id, None for other ids."""
    try:
        return f"{parse_id(image_id(img))[1]:02d}"
    except ValueError:
        return None


def _summarise(ids: list[str], scores: list[float]) -> ScoreResult:
    by_angle: dict[str, list[float]] = {}
    for img, score in zip(ids, scores):
        angle = _angle(img)
        if angle is not None:
            by_angle.setdefault(angle, []).append(score)
    return ScoreResult(
        # np.mean of the per-image floats, exactly as carvana.mean_dice does it
        mean_dice=float(np.mean(scores)),
        n_images=len(scores),
        dice_by_angle={a: float(np.mean(s)) for a, s in sorted(by_angle.items())},
        n_by_angle={a: len(s) for a, s in sorted(by_angle.items())},
    )
