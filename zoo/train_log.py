"""The per-epoch training log both training loops write (framework-free, so importing it loads
neither PyTorch nor TensorFlow)."""
from __future__ import annotations

import csv
import os
from pathlib import Path

LOG_COLUMNS = ["epoch", "train_loss", "val_mean_dice", "lr", "seconds", "images_per_s", "data_wait_share"]


def write_log(path: Path, history: list[list]) -> None:
    """Rewrite `log.csv` atomically from the whole history (a resumed run never duplicates rows)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(LOG_COLUMNS)
        writer.writerows(history)
    os.replace(tmp, path)
