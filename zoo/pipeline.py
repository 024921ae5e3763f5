"""Prediction as three overlapped stages joined by bounded queues, so the device never waits on the CPU:

    decode (a thread pool)  ->  predict (the calling thread: the device)  ->  write (a thread pool)

Photos are decoded `depth` chunks ahead while the member predicts the current chunk, and each chunk's maps
are resized, encoded and written by the write pool while the next chunks are predicted. At most `depth`
chunks wait decoded and `depth` chunks wait to be written, so memory is a few chunks, never the test set.

Chunks are the same `chunk`-photo batches the synchronous loop predicted, in the same order, so the maps
are byte-identical to it. Threads, not processes: OpenCV's JPEG decode and resize and zstd release the
GIL, and a decoded 1918x1280 photo (7.4 MB) or map (9.8 MB) would otherwise be pickled between processes.

The first error in any stage cancels what is queued and is raised once, naming the stage and the photo.
A chunk counts as done (`after_chunk`) only when every map of it is written; a caller that writes a
completion marker after `run_pipeline` returns leaves none behind when killed, so a rerun redoes the lot.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from carvana.errors import WorkbenchError
from carvana.progress import progress_bar

__all__ = ["PipelineError", "StageTimes", "default_workers", "run_in_line", "run_pipeline"]

Load = Callable[[str], np.ndarray]  # photo id -> (h, w, 3) uint8
Predict = Callable[[np.ndarray, list[str]], np.ndarray]  # (n, h, w, 3) uint8, their ids -> (n, H, W) float32
Write = Callable[[str, np.ndarray], Any]  # photo id, its (H, W) map -> anything (returned to `on_written`)


class PipelineError(RuntimeError):
    """A stage failed on a photo; the original error is its `__cause__`."""


@dataclass
class StageTimes:
    """Seconds each stage was busy, summed over its workers, and the pipeline's wall time."""

    n_photos: int = 0
    n_decode: int = 1
    n_write: int = 1
    decode_s: float = 0.0
    predict_s: float = 0.0
    write_s: float = 0.0
    wall_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            setattr(self, f"{stage}_s", getattr(self, f"{stage}_s") + seconds)

    def per_photo(self) -> dict[str, float]:
        """Seconds per photo: each stage's (its busy time over its workers), the slowest, their sum, the wall."""
        n = max(self.n_photos, 1)
        stages = {
            "decode": self.decode_s / self.n_decode / n,
            "predict": self.predict_s / n,
            "write": self.write_s / self.n_write / n,
        }
        return {**stages, "slowest": max(stages.values()), "sum": sum(stages.values()), "wall": self.wall_s / n}


def default_workers() -> int:
    """Decode and write workers each: the cores this process may use (the predict stage mostly waits)."""
    return max(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 1)


def run_pipeline(
    ids: Sequence[str],
    load: Load,
    predict: Predict,
    write: Write,
    *,
    chunk: int,
    depth: int = 2,
    n_decode: int | None = None,
    n_write: int | None = None,
    after_chunk: Callable[[int], None] | None = None,
    on_written: Callable[[Any], None] | None = None,
    desc: str = "maps",
    progress: bool = False,
) -> StageTimes:
    """Decode, predict and write the maps of `ids`, `chunk` photos at a time, the stages overlapped.

    `after_chunk(k)` runs in this thread once chunk k's maps are all written, in chunk order;
    `on_written(result)` gets what each `write` returned, in this thread (e.g. to count maps without a lock).
    """
    ids = list(ids)
    times = StageTimes(len(ids), n_decode or default_workers(), n_write or default_workers())
    chunks = [ids[start : start + chunk] for start in range(0, len(ids), chunk)]
    start_wall = time.perf_counter()
    decoders = ThreadPoolExecutor(times.n_decode, thread_name_prefix="decode")
    writers = ThreadPoolExecutor(times.n_write, thread_name_prefix="write")
    decoded: deque[list[Future]] = deque()  # the decode queue: at most `depth` chunks ahead
    written: deque[tuple[int, list[Future]]] = deque()  # the write queue: at most `depth` chunks
    try:
        for k in range(min(depth, len(chunks))):
            decoded.append([decoders.submit(_timed, times, "decode", load, img) for img in chunks[k]])
        bar = progress_bar(total=len(chunks), desc=desc, leave=False, disable=not progress, unit="chunk")
        with bar:
            for k, names in enumerate(chunks):
                photos = np.stack([_result(f, "decoding", img) for f, img in zip(decoded.popleft(), names)])
                if k + depth < len(chunks):  # the freed slot: decode the next chunk while this one predicts
                    decoded.append([decoders.submit(_timed, times, "decode", load, img) for img in chunks[k + depth]])
                maps = _predict(times, predict, photos, names)
                del photos
                writes = [writers.submit(_timed, times, "write", write, img, m) for img, m in zip(names, maps)]
                written.append((k, writes))
                del maps
                while len(written) > depth:
                    _drain(written.popleft(), names_of=chunks, after_chunk=after_chunk, on_written=on_written, bar=bar)
            while written:
                _drain(written.popleft(), names_of=chunks, after_chunk=after_chunk, on_written=on_written, bar=bar)
    finally:  # on an error: drop what is queued, let running work end (writes are atomic), raise once
        decoders.shutdown(wait=True, cancel_futures=True)
        writers.shutdown(wait=True, cancel_futures=True)
    times.wall_s = time.perf_counter() - start_wall
    return times


def _timed(times: StageTimes, stage: str, function: Callable, *args):
    start = time.perf_counter()
    try:
        return function(*args)
    finally:
        times.add(stage, time.perf_counter() - start)


def _predict(times: StageTimes, predict: Predict, photos: np.ndarray, names: list[str]) -> np.ndarray:
    try:
        maps = _timed(times, "predict", predict, photos, names)
    except WorkbenchError:
        raise
    except Exception as error:
        raise PipelineError(f"predicting photos {', '.join(names)} failed: {error!r}") from error
    if len(maps) != len(names):
        raise PipelineError(f"predicting photos {', '.join(names)}: {len(maps)} maps for {len(names)} photos")
    return maps


def _result(future: Future, stage: str, img: str):
    """The stage's result; its error once, naming the photo (a WorkbenchError names its file already)."""
    try:
        return future.result()
    except WorkbenchError:
        raise
    except Exception as error:
        raise PipelineError(f"{stage} photo {img} failed: {error!r}") from error


def _drain(item: tuple[int, list[Future]], names_of: list[list[str]], after_chunk, on_written, bar) -> None:
    k, futures = item
    for future, img in zip(futures, names_of[k]):
        result = _result(future, "writing the map of", img)
        if on_written is not None:
            on_written(result)
    if after_chunk is not None:
        after_chunk(k)
    bar.update(1)


def run_in_line(
    ids: Sequence[str],
    load: Load,
    predict: Predict,
    write: Write,
    *,
    chunk: int,
    n_decode: int | None = None,
    after_chunk: Callable[[int], None] | None = None,
    on_written: Callable[[Any], None] | None = None,
    desc: str = "maps",
    progress: bool = False,
) -> StageTimes:
    """The synchronous loop `run_pipeline` replaces, kept as its reference (tests, bench): a thread pool
    decodes a chunk, then it is predicted, then its maps are written one by one in this thread."""
    ids = list(ids)
    times = StageTimes(len(ids), n_decode or default_workers(), 1)
    chunks = [ids[start : start + chunk] for start in range(0, len(ids), chunk)]
    start_wall = time.perf_counter()
    with ThreadPoolExecutor(times.n_decode, thread_name_prefix="decode") as decoders:
        for k in progress_bar(range(len(chunks)), desc=desc, leave=False, disable=not progress, unit="chunk"):
            names = chunks[k]
            futures = [decoders.submit(_timed, times, "decode", load, img) for img in names]
            photos = np.stack([_result(f, "decoding", img) for f, img in zip(futures, names)])
            for img, proba in zip(names, _predict(times, predict, photos, names)):
                try:
                    result = _timed(times, "write", write, img, proba)
                except WorkbenchError:
                    raise
                except Exception as error:
                    raise PipelineError(f"writing the map of photo {img} failed: {error!r}") from error
                if on_written is not None:
                    on_written(result)
            if after_chunk is not None:
                after_chunk(k)
    times.wall_s = time.perf_counter() - start_wall
    return times
