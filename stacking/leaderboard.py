"""`RUN/leaderboard.csv`: one row per entry (member, blend, stacker) with its honest OOF mean Dice and,
from `workbench stack`, its gain over the best member with a car-bootstrap interval (`stacking.uncertainty`)
and which entries are the two submissions (`stacking.choice`). Rows are in honest OOF order, whatever the choice.

Scores are computed at the data's original size (maps are upsampled bilinearly, then thresholded),
so they are the competition's metric, not an approximation at the store's resolution.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from carvana.atomic import write_atomic
from carvana.dataset import CarvanaData, angle_of, read_rle_csv
from carvana.metric import dice
from carvana.progress import progress_bar
from carvana.rle import rle_decode
from folds import Folds
from oof import Store
from stacking.uncertainty import paired_gains

LEADING_COLUMNS = ["entry", "kind", "oof_mean_dice", "threshold"]
# Each entry against the best member (`add_gains`); written after the fold columns, in this order.
GAIN_COLUMNS = ["gain_over", "gain", "gain_lo", "gain_hi", "gain_positive_share", "gain_by_fold"]
# The submission choice (`stacking.choice.mark_choice`: "chosen" / "second", and why); after the gains.
CHOICE_COLUMNS = ["choice", "choice_reason"]
# Columns that compare an entry with the others of its `workbench stack`: stale in rows kept from an older one.
RELATIVE_COLUMNS = GAIN_COLUMNS + CHOICE_COLUMNS


@dataclass
class EntryScore:
    entry: str
    kind: str  # member | blend | stacker | cnn | tuned | ensemble | postprocess (stacking.choice.KIND_ORDER)
    threshold: float
    oof_per_image: dict[str, float]  # train image id -> Dice
    folds: Folds
    test_per_image: dict[str, float] | None = None
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def oof_mean_dice(self) -> float:
        return float(np.mean(list(self.oof_per_image.values())))

    def row(self) -> dict[str, object]:
        row: dict[str, object] = {
            "entry": self.entry,
            "kind": self.kind,
            "oof_mean_dice": f"{self.oof_mean_dice:.6f}",
            "threshold": f"{self.threshold:g}",
        }
        for k in range(self.folds.n_folds):
            row[f"fold{k}"] = f"{np.mean([d for i, d in self.oof_per_image.items() if self.folds.fold_of[i] == k]):.6f}"
        for angle in range(1, 17):
            scores = [d for i, d in self.oof_per_image.items() if angle_of(i) == angle]
            row[f"angle{angle:02d}"] = f"{np.mean(scores):.6f}" if scores else ""
        if self.test_per_image:
            row["test_mean_dice"] = f"{np.mean(list(self.test_per_image.values())):.6f}"
        row.update(self.extra)
        return row


def upsampled_dice(proba_u8: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> float:
    """Dice of a (h, w) uint8 map, resized bilinearly to the truth's (H, W) and thresholded, vs the truth."""
    if proba_u8.shape != truth.shape:
        proba_u8 = cv2.resize(proba_u8, truth.shape[::-1], interpolation=cv2.INTER_LINEAR)
    return dice(proba_u8 >= threshold * 255, truth)


def test_truth(data: CarvanaData) -> dict[str, str] | None:
    """The test truth RLEs when the data has them (the synthetic studio does), else None."""
    return read_rle_csv(data.test_truth_path) if data.test_truth_path.exists() else None


def score_entry(
    store: Store, entry: str, kind: str, data: CarvanaData, folds: Folds, native_hw: tuple[int, int]
) -> EntryScore:
    """`score_entries` for one entry."""
    return score_entries([(store, entry, kind)], data, folds, native_hw)[0]


def score_entries(
    entries: Sequence[tuple[Store, str, str]],
    data: CarvanaData,
    folds: Folds,
    native_hw: tuple[int, int],
    progress: bool = False,
) -> list[EntryScore]:
    """OOF (and, with test truth, test) per-image Dice at threshold 0.5 of each (store, entry, kind)'s maps
    (a member in the OOF store, or a blend / stacker in the stack store); `native_hw` is the photos' (H, W).

    One pass per split: each truth is decoded once and every entry's map of that image scored against it."""
    oof = _score_split(entries, "train", data.train_rles, native_hw, progress)
    truth = test_truth(data)
    test: list[dict[str, float] | None] = [None] * len(entries)
    if truth is not None:
        scorable = [i for i, (store, entry, _) in enumerate(entries) if set(store.ids(entry, "test")) == set(truth)]
        for i, scores in zip(
            scorable, _score_split([entries[i] for i in scorable], "test", truth, native_hw, progress)
        ):
            test[i] = scores
    return [
        EntryScore(entry, kind, 0.5, scores, folds, test_scores)
        for (_, entry, kind), scores, test_scores in zip(entries, oof, test)
    ]


def _score_split(
    entries: Sequence[tuple[Store, str, str]], split: str, rles: dict[str, str], shape: tuple[int, int], progress: bool
) -> list[dict[str, float]]:
    scores: list[dict[str, float]] = [{} for _ in entries]
    bar = progress_bar(
        rles.items(), total=len(rles), desc=f"scoring {split}", disable=not progress or not entries, leave=False
    )
    for img, rle in bar:
        truth = rle_decode(rle, shape)
        for i, (store, entry, _) in enumerate(entries):
            scores[i][img] = upsampled_dice(store.read(entry, split, img), truth)
    return scores


def add_gains(scores: list[EntryScore]) -> None:
    """Put each entry's gain over the best member (highest OOF mean Dice of kind "member", imported ones
    included) in its row: the gain, its 95% paired car-bootstrap interval, the share of resamples where it
    is above 0 and the per-fold gains ("+a/+b/-c"). Nothing when no entry is a member."""
    members = [s for s in scores if s.kind == "member"]
    if not members:
        return
    best = max(members, key=lambda s: s.oof_mean_dice)
    gains = paired_gains({s.entry: s.oof_per_image for s in scores}, best.entry, best.folds.fold_of)
    for score in scores:
        gain = gains[score.entry]
        score.extra.update(
            gain_over=best.entry,
            gain=f"{gain.gain:.6f}",
            gain_lo=f"{gain.lo:.6f}",
            gain_hi=f"{gain.hi:.6f}",
            gain_positive_share=f"{gain.positive_share:.3f}",
            gain_by_fold="/".join(f"{g:+.6f}" for g in gain.by_fold),
        )


def write_leaderboard(
    path: Path, entries: list[EntryScore], keep: Callable[[dict], bool] = lambda row: False
) -> list[dict]:
    """Write `entries` plus the existing rows that `keep` accepts (default none), best OOF score first.
    Kept rows lose their gains and the choice: the entries they were measured against may have changed."""
    rows: dict[str, dict] = {
        row["entry"]: {c: v for c, v in row.items() if c not in RELATIVE_COLUMNS}
        for row in read_leaderboard(path)
        if keep(row)
    }
    rows.update({e.entry: e.row() for e in entries})
    exact = {e.entry: e.oof_mean_dice for e in entries}  # the order `stacking.choice` sees, not the rounded one
    ordered = sorted(rows.values(), key=lambda r: -exact.get(r["entry"], float(r["oof_mean_dice"])))
    columns = LEADING_COLUMNS + sorted(
        {c for r in ordered for c in r} - set(LEADING_COLUMNS),
        key=lambda c: (
            c != "test_mean_dice",
            not c.startswith("fold"),
            RELATIVE_COLUMNS.index(c) if c in RELATIVE_COLUMNS else len(RELATIVE_COLUMNS),
            c,
        ),
    )
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(ordered)
    write_atomic(path, text.getvalue().encode())
    return ordered


def read_leaderboard(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def format_table(rows: list[dict[str, object]], extra_columns: tuple[str, ...] = ()) -> str:
    """A fixed-width text table of the leaderboard's main columns, best first."""
    if not rows:
        return "(no entry has finished every fold yet)"
    columns = ["entry", "kind", "oof_mean_dice", "threshold"]
    columns += [c for c in rows[0] if c.startswith("fold")] if rows else []
    columns += [c for c in ("tuned_on_mean_dice", "test_mean_dice", *extra_columns) if any(r.get(c) for r in rows)]
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)
