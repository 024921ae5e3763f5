"""Writing a submission from probability maps: resize, threshold, encode, in worker processes.

Memory is bounded whatever the number of rows: at most 2 x n_jobs chunks of masks are in flight.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import pickle
from collections import deque
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from carvana.atomic import atomic_path
from carvana.dataset import KAGGLE_SIZE
from carvana.errors import WorkbenchError
from carvana.interrupts import interrupts_deferred
from carvana.progress import progress_bar
from carvana.rle import rle_encode
from carvana.submission.files import HEADER, first_duplicate, open_compressed, validate_submission

IDS_PER_TASK = 16  # ids per worker task: big enough to amortise pickling, small for steady progress


def threshold_level(threshold: float) -> int:
    """The smallest uint8 level v with v / 255 >= threshold (256 when none): car is `map >= level`.

    This is exactly "probability >= threshold" for maps stored as probability x 255, e.g. 0.5 -> 128.
    """
    if not 0.0 <= threshold <= 1.0:
        raise WorkbenchError(f"threshold {threshold} is outside [0, 1]; fix: pass a probability such as 0.5")
    return int(np.searchsorted(np.arange(256) / 255.0, threshold, side="left"))


@dataclass(frozen=True)
class _MaskEncoder:
    """Turns ids into CSV lines: read the map, resize to (W, H), threshold, encode. Picklable when
    `read_map` is, so worker processes can receive it."""

    read_map: Callable[[str], np.ndarray]
    width: int
    height: int
    level: int

    def encode(self, img: str) -> str:
        prob = self.read_map(img)
        if not isinstance(prob, np.ndarray) or prob.ndim != 2 or prob.dtype != np.uint8:
            kind = f"{prob.dtype} {prob.shape}" if isinstance(prob, np.ndarray) else type(prob).__name__
            raise WorkbenchError(f"map of {img}: got {kind}; fix: read_map must return (h, w) uint8 (prob x 255)")
        if prob.shape != (self.height, self.width):
            # Bilinear on the uint8 levels: OpenCV's fixed-point rounding is within 1/255 of float bilinear.
            prob = cv2.resize(prob, (self.width, self.height), interpolation=cv2.INTER_LINEAR)
        return rle_encode(prob >= self.level)

    def lines(self, ids: Sequence[str]) -> str:
        return "".join(f"{img},{self.encode(img)}\n" for img in ids)


_WORKER_ENCODER: _MaskEncoder | None = None


def _init_worker(encoder: _MaskEncoder) -> None:
    global _WORKER_ENCODER
    _WORKER_ENCODER = encoder
    cv2.setNumThreads(1)  # the pool already uses every core; OpenCV's own threads would oversubscribe
    _keep_freed_memory()


def _keep_freed_memory() -> None:
    """Let glibc keep freed blocks up to 32 MB in the heap instead of returning them to the OS.

    Measured in forkserver workers: every mask's ~2.5 MB temporaries were unmapped on free and
    faulted in again (~1,200 page faults per mask), making a worker 2-3x slower than the same loop
    in the parent. No-op where libc has no mallopt (musl, macOS, Windows).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: allocate blocks below 32 MB from the heap
        libc.mallopt(-1, 128 << 20)  # M_TRIM_THRESHOLD: keep up to 128 MB of free heap top
    except (OSError, AttributeError):
        pass


def _encode_in_worker(ids: Sequence[str]) -> str:
    assert _WORKER_ENCODER is not None
    return _WORKER_ENCODER.lines(ids)


def _encoded_chunks(encoder: _MaskEncoder, chunks: list[Sequence[str]], n_jobs: int) -> Generator[str, None, None]:
    """CSV text of each chunk, in order. At most 2 x n_jobs chunks are in flight, so memory is bounded."""
    if n_jobs == 1:
        for chunk in chunks:
            yield encoder.lines(chunk)
        return
    # forkserver, not fork: forking a parent whose OpenCV thread pool has just worked hangs the child's
    # first cv2 call now and then (2 scripts in 6 here); forkserver children come from a clean process.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if context.get_start_method() == "forkserver":
        context.set_forkserver_preload([__name__])
    with interrupts_deferred():
        pool = context.Pool(n_jobs, initializer=_init_worker, initargs=(encoder,))
    try:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_encode_in_worker, (chunk,)))
            if len(pending) >= 2 * n_jobs:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
    finally:
        # Drained, not terminated, on any exit (Ctrl-C included): the workers finish the chunks in flight (at
        # most 2 x n_jobs) and leave; one terminated while it starts prints a traceback of its own.
        pool.close()
        pool.join()


def write_submission(
    ids: Sequence[str],
    read_map: Callable[[str], np.ndarray],
    out_path: Path,
    *,
    image_size: tuple[int, int] = KAGGLE_SIZE,
    threshold: float = 0.5,
    n_jobs: int = 2,
    progress: bool = True,
) -> Path:
    """Write `img,rle_mask` rows for `ids` in order; gzipped when `out_path` ends in .gz.

    `read_map(img)` returns an (h, w) uint8 probability x 255 map at any resolution; it is resized
    bilinearly to `image_size` (W, H) and a pixel is car when its level >= `threshold_level(threshold)`.
    With n_jobs > 1, `read_map` must be picklable (a module-level function or a reader object).
    The file is written beside `out_path`, validated, then renamed over it: errors leave `out_path` alone.
    """
    out_path = Path(out_path)
    width, height = image_size
    encoder = _MaskEncoder(read_map, width, height, threshold_level(threshold))
    duplicate = first_duplicate(ids)
    if duplicate is not None:
        raise WorkbenchError(f"id {duplicate} appears twice in the ids to write; fix: pass sample_submission.csv's ids")
    chunks = [ids[i : i + IDS_PER_TASK] for i in range(0, len(ids), IDS_PER_TASK)]
    n_jobs = _worker_count(n_jobs, len(chunks), encoder)
    with atomic_path(out_path) as tmp_path:
        texts = contextlib.closing(_encoded_chunks(encoder, chunks, n_jobs))  # closing stops the pool
        bar = progress_bar(total=len(ids), unit="mask", disable=not progress, desc=f"writing {out_path.name}")
        with open(tmp_path, "wb") as raw, open_compressed(raw, out_path) as out, texts as chunk_texts, bar:
            out.write(f"{HEADER}\n".encode())
            for chunk, text in zip(chunks, chunk_texts):
                out.write(text.encode())
                bar.update(len(chunk))
        validate_submission(tmp_path, ids, image_size=image_size)
    return out_path


def _worker_count(n_jobs: int, n_chunks: int, encoder: _MaskEncoder) -> int:
    """Processes to use (-1: every core, never more than the chunks); checks the encoder pickles."""
    if n_jobs == -1:
        n_jobs = os.cpu_count() or 1
    if n_jobs < 1:
        raise WorkbenchError(f"n_jobs={n_jobs}; fix: pass a positive number of processes, or -1 for all cores")
    n_jobs = max(1, min(n_jobs, n_chunks))
    if n_jobs > 1:
        try:
            pickle.dumps(encoder)
        except Exception as error:
            raise TypeError(
                f"read_map must be picklable for n_jobs={n_jobs} ({error}); pass a module-level "
                "function or a reader object, or use n_jobs=1"
            ) from error
    return n_jobs
