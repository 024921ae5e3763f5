"""TensorBoard curves for every member x fold, framework-free (the `tensorboard` package's own event
writer, so the Keras and PyTorch loops write the same way): per-epoch scalars (train loss,
validation mean Dice, learning rate, throughput) and a few validation overlays.

`make tensorboard` serves `RUN/tensorboard/`; each member x fold is one run, `<member>/fold<k>`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from oof.format import BOARDS_DIR

N_OVERLAYS = 3  # validation photos shown per epoch
SCALARS = {"train_loss": 1, "val_mean_dice": 2, "lr": 3, "images_per_s": 5}  # tag -> log row column


def board_dir(run_dir: Path, member: str, fold: int) -> Path:
    return Path(run_dir) / BOARDS_DIR / member / f"fold{fold}"


class EpochBoard:
    """Writes one member x fold's events to `log_dir` (None: writes nothing)."""

    def __init__(self, log_dir: Path | None) -> None:
        self.writer: Any = None
        if log_dir is not None:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            Path(log_dir).mkdir(parents=True, exist_ok=True)
            self.writer = EventFileWriter(str(log_dir), flush_secs=10)

    def epoch(self, row: list, images: np.ndarray | None = None, probas: np.ndarray | None = None) -> None:
        """One epoch's log row (`zoo.train_log.LOG_COLUMNS` order) and optional overlays:
        images (n, H, W, 3) uint8 with their predicted probabilities (n, H, W) float32."""
        if self.writer is None:
            return
        from tensorboard.compat.proto import summary_pb2

        step = int(row[0])
        values = [summary_pb2.Summary.Value(tag=tag, simple_value=float(row[col])) for tag, col in SCALARS.items()]
        if images is not None and probas is not None:
            for i, (image, proba) in enumerate(zip(images, probas)):
                values.append(summary_pb2.Summary.Value(tag=f"val_overlay/{i}", image=_png(overlay(image, proba))))
        self._add(step, summary_pb2.Summary(value=values))
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def _add(self, step: int, summary) -> None:
        from tensorboard.compat.proto import event_pb2

        self.writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))


def overlay(image: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 photo with the predicted car (p > 0.5) tinted red and its outline white."""
    mask = (proba > 0.5).astype(np.uint8)
    out = image.copy()
    out[mask > 0] = (0.6 * out[mask > 0] + 0.4 * np.array([255, 0, 0])).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, (255, 255, 255), 1)
    return out


def _png(image: np.ndarray):
    from tensorboard.compat.proto import summary_pb2

    _, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    height, width = image.shape[:2]
    return summary_pb2.Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=encoded.tobytes())
