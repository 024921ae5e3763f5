"""Score a submission file against a truth file (`img,rle_mask`, e.g. the synthetic test_masks.csv).

Dice is computed from the runs directly: |X and Y| comes from binary searches of one mask's run
bounds in the other's (`runs_intersection`), exact integers, so the result equals `carvana.mean_dice` on the decoded
masks bit for bit without ever building a pixel array.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from carvana.errors import WorkbenchError
from stacking.submission import KAGGLE_SIZE, describe_id_mismatch, iter_rows, parse_runs

ANGLE = re.compile(r"_(\d{2})\.jpg$")  # `<car>_<NN>.jpg`, NN = 01..16


@dataclass(frozen=True)
class ScoreResult:
    """Mean Dice over images, and the mean Dice and image count per angle ("01".."16").

    Ids that do not end in `_<NN>.jpg` count in the mean but in no angle.
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


def runs_dice(pred: tuple[np.ndarray, np.ndarray], truth: tuple[np.ndarray, np.ndarray]) -> float:
    """Dice of two run lists (0-indexed starts, exclusive ends), as `carvana.dice` computes it; 1.0
    when both are empty."""
    total = int((pred[1] - pred[0]).sum()) + int((truth[1] - truth[0]).sum())
    if total == 0:
        return 1.0
    return 2.0 * runs_intersection(pred, truth) / total


def runs_intersection(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> int:
    """Pixels in both run lists: the sum over a's runs of covered_b(end) - covered_b(start), where
    covered_b(x) counts b's pixels before x, found by a binary search in b's run starts."""
    # A leading empty run at -1 makes every search land on a run (no special case for x < b's first run).
    starts = np.concatenate([[-1], b[0]])
    lengths = np.concatenate([[0], b[1] - b[0]])
    before = np.cumsum(lengths) - lengths  # b's pixels before each run
    x = np.concatenate([a[1], a[0]])
    k = np.searchsorted(starts, x, side="right") - 1
    covered = before[k] + np.clip(x - starts[k], 0, lengths[k])
    return int(covered[: a[1].size].sum() - covered[a[1].size :].sum())


def _parse(path: Path, row: int, img: str, rle: str, n_pixels: int, size_text: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        return parse_runs(rle, n_pixels)
    except ValueError as error:
        raise WorkbenchError(
            f"{path}: row {row} ({img}): RLE {error}; fix: pass the masks' image size (--size, now {size_text})"
        ) from None


def _mismatch(sub_path: Path, truth_path: Path, row: int, got: str | None, want: str | None,
              truth_ids: list[str], sub_rows, truth_rows) -> WorkbenchError:
    """The error for the first row where the submission's id is not the truth's."""
    later_truth = [] if want is None else [img for _, img, _ in truth_rows]
    later_sub = [] if got is None else (img for _, img, _ in sub_rows)
    expected = set(truth_ids) | set(later_truth) | ({want} if want else set())
    problem = describe_id_mismatch(row, got, want, expected, set(truth_ids), later_sub)
    return WorkbenchError(
        f"{sub_path}: {problem} (against {truth_path}); fix: score a submission of the truth's ids, in its order"
    )


def score_submission(
    submission_path: Path, truth_path: Path, image_size: tuple[int, int] = KAGGLE_SIZE
) -> ScoreResult:
    """Mean Dice of a submission against a truth file with the same ids in the same order.

    `image_size` is (W, H); both files are streamed in lockstep, one row at a time.
    """
    submission_path, truth_path = Path(submission_path), Path(truth_path)
    n_pixels, size_text = image_size[0] * image_size[1], f"{image_size[0]}x{image_size[1]}"
    sub_rows, truth_rows = iter_rows(submission_path), iter_rows(truth_path)
    ids: list[str] = []
    scores: list[float] = []
    for row in itertools.count(1):
        sub, truth = next(sub_rows, None), next(truth_rows, None)
        if sub is None and truth is None:
            break
        got, want = (sub[1] if sub else None), (truth[1] if truth else None)
        if got != want:
            raise _mismatch(submission_path, truth_path, row, got, want, ids, sub_rows, truth_rows)
        pred_runs = _parse(submission_path, row, got, sub[2], n_pixels, size_text)
        truth_runs = _parse(truth_path, row, want, truth[2], n_pixels, size_text)
        ids.append(got)
        scores.append(runs_dice(pred_runs, truth_runs))
    if not scores:
        raise WorkbenchError(f"{submission_path}: no rows to score; fix: pass a submission with rows")
    return _summarise(ids, scores)


def _summarise(ids: list[str], scores: list[float]) -> ScoreResult:
    by_angle: dict[str, list[float]] = {}
    for img, score in zip(ids, scores):
        match = ANGLE.search(img)
        if match:
            by_angle.setdefault(match.group(1), []).append(score)
    return ScoreResult(
        # np.mean of the per-image floats, exactly as carvana.mean_dice does it
        mean_dice=float(np.mean(scores)),
        n_images=len(scores),
        dice_by_angle={a: float(np.mean(s)) for a, s in sorted(by_angle.items())},
        n_by_angle={a: len(s) for a, s in sorted(by_angle.items())},
    )
