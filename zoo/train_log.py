"""The per-epoch training log both training loops write (framework-free, so importing it loads
neither PyTorch nor TensorFlow)."""

from __future__ import annotations

import csv
from pathlib import Path

from carvana.atomic import atomic_path
from zoo.faults import die_for_tests

LOG_COLUMNS = ["epoch", "train_loss", "val_mean_dice", "lr", "seconds", "images_per_s", "data_wait_share"]


def write_log(path: Path, history: list[list]) -> None:
    """Rewrite `log.csv` atomically from the whole history (a resumed run never duplicates rows)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(LOG_COLUMNS)
        writer.writerows(history)
    die_for_tests("AFTER_EPOCH", len(history))
