"""Submissions: write one from a leaderboard entry's test maps, blend files, score against truth."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from carvana.atomic import refuse_overwrite, write_json_atomic
from carvana.dataset import SAMPLE_CSV, CarvanaData
from carvana.errors import WorkbenchError
from carvana.submission import (
    ScoreResult,
    read_sample_ids,
    score_submission,
    write_submission,
)
from carvana.validate import DataSummary
from oof import Store
from stacking.choice import chosen_row
from stacking.leaderboard import read_leaderboard
from workbench.config import ExperimentConfig
from workbench.run import Run
from workbench.runfolder import RunPaths, output_role
from workbench.runlock import run_lock


@dataclass(frozen=True)
class TestMapReader:
    """Picklable `read_map` for the submission writer's worker processes: one entry's test maps."""

    store_path: Path
    entry: str

    def __call__(self, img: str) -> np.ndarray:
        return Store(self.store_path).read(self.entry, "test", img)


def entry_store(config: ExperimentConfig, kind: str) -> Store:
    """Members' maps are in RUN/oof, blends' and stackers' in RUN/stack."""
    return Store(RunPaths(config.run_dir).store(kind))


def chosen_entry(config: ExperimentConfig) -> dict[str, str]:
    """The leaderboard row of the entry `workbench stack` chose (`stacking.choice`; never by test score)."""
    rows = read_leaderboard(RunPaths(config.run_dir).leaderboard)
    if not rows:
        raise WorkbenchError(f"{RunPaths(config.run_dir).leaderboard}: no leaderboard yet; run `workbench stack` first")
    return chosen_row(rows)


def submit(
    config: ExperimentConfig,
    *,
    entry: str | None = None,
    out_path: Path | None = None,
    progress: bool = True,
    run: Run | None = None,
) -> Path:
    """Write `RUN/submission.csv.gz` (or `out_path`, never one of the run's own files) from `entry`'s test
    maps (default: the entry `workbench stack` chose); `run`, when the caller has opened it, saves checking
    the data again."""
    default = RunPaths(config.run_dir).submission
    out_path = Path(out_path or default)
    refuse_overwrite("--out", out_path, record_path(out_path), lambda p: output_role(p, config.run_dir), str(default))
    run = run or Run.open(config)
    run.folds  # noqa: B018 (a folder that is no run is refused before the lock file is made)
    with run_lock(config.run_dir, "submit"):
        return _submit(config, entry, out_path, progress, run.summary)


def record_path(out_path: Path) -> Path:
    """The JSON written beside a submission: `X.csv.gz` -> `X.json` (which entry, its score, when)."""
    return out_path.with_name(out_path.name.removesuffix(".gz").removesuffix(".csv") + ".json")


def _submit(config: ExperimentConfig, entry: str | None, out_path: Path, progress: bool, summary: DataSummary) -> Path:
    leaderboard = RunPaths(config.run_dir).leaderboard
    rows = {r["entry"]: r for r in read_leaderboard(leaderboard)}
    row = chosen_entry(config) if entry is None else rows.get(entry)
    if row is None:
        raise WorkbenchError(f"{leaderboard}: no entry {entry!r}; valid: {', '.join(rows)}")
    store = entry_store(config, row["kind"])
    ids = read_sample_ids(config.data / SAMPLE_CSV)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    write_submission(
        ids,
        TestMapReader(store.path, row["entry"]),
        out_path,
        image_size=summary.size,
        threshold=float(row["threshold"]),
        progress=progress,
    )
    record = {
        "entry": row["entry"],
        "kind": row["kind"],
        "oof_mean_dice": float(row["oof_mean_dice"]),
        "n_rows": len(ids),
        "seconds": round(time.time() - start, 1),
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_json_atomic(record_path(out_path), record)
    return out_path


def local_score(config: ExperimentConfig, submission: Path, run: Run | None = None) -> ScoreResult | None:
    """The submission's mean Dice against the data's test truth, when it has one (synthetic data)."""
    data = CarvanaData(config.data)
    if not data.test_truth_path.exists():
        return None
    return score_submission(submission, data.test_truth_path, image_size=(run or Run.open(config)).summary.size)
