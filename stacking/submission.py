"""Kaggle submission files: read, validate and write `img,rle_mask` CSVs (plain or gzipped).

Rows are numbered from 1 at the first data row (the header is line 1, so row N is line N + 1).
Everything streams: no function here holds more than a few chunks of masks in memory, whatever
the number of rows (a real submission has 100,064 rows of ~10-20 kB of RLE text each).
"""
from __future__ import annotations

import contextlib
import ctypes
import gzip
import multiprocessing
import os
import pickle
import tempfile
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from carvana.errors import WorkbenchError
from carvana.rle import rle_encode, rle_problem

HEADER = "img,rle_mask"
KAGGLE_SIZE = (1918, 1280)  # (W, H) of every Carvana photo
GZIP_LEVEL = 1  # bench_submission: level 6 takes ~6x longer per row for a file only ~8% smaller
IDS_PER_TASK = 16  # ids per worker task: big enough to amortise pickling, small for steady progress


def parse_image_size(text: str) -> tuple[int, int]:
    """`"1918x1280"` -> (1918, 1280), i.e. (W, H), as the CLI's `--size WxH` takes it."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise WorkbenchError(f"size {text!r} is not WxH; fix: pass e.g. --size 1918x1280")
    return int(parts[0]), int(parts[1])


def threshold_level(threshold: float) -> int:
    """The smallest uint8 level v with v / 255 >= threshold (256 when none): car is `map >= level`.

    This is exactly "probability >= threshold" for maps stored as probability x 255, e.g. 0.5 -> 128.
    """
    if not 0.0 <= threshold <= 1.0:
        raise WorkbenchError(f"threshold {threshold} is outside [0, 1]; fix: pass a probability such as 0.5")
    return int(np.searchsorted(np.arange(256) / 255.0, threshold, side="left"))


def parse_runs(rle: str, n_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Run starts and ends of an RLE string as 0-indexed int64 arrays, ends exclusive (pixel index
    = row * W + column). Raises ValueError with `carvana.rle.rle_problem`'s reason when malformed.

    Only plain ASCII decimal integers are accepted (rle_problem also lets through e.g. Arabic-Indic
    digits, and numbers so large that start + length overflows int64; this refuses both).
    """
    if not rle or rle.isspace():  # an empty mask (np.fromstring refuses blank text)
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    try:  # np.fromstring is ~5x faster than int() on split tokens; it raises on any non-integer
        numbers = np.fromstring(rle, dtype=np.int64, sep=" ")
    except ValueError:
        numbers = None
    if numbers is not None and _well_formed(numbers, n_pixels):
        return numbers[0::2] - 1, numbers[0::2] - 1 + numbers[1::2]
    try:  # the slow reference names what is wrong (it overflows on numbers beyond int64)
        with np.errstate(over="ignore"):
            problem = rle_problem(rle, n_pixels)
    except OverflowError:
        problem = None
    raise ValueError(problem or f"has a number that is not a plain integer from 1 to {n_pixels}")


def _well_formed(numbers: np.ndarray, n_pixels: int) -> bool:
    """rle_problem's checks, vectorised on the parsed numbers (starts/lengths 1-indexed)."""
    if numbers.size % 2 or numbers.size == 0 or numbers.min() < 1 or numbers.max() > n_pixels:
        return False
    starts, lengths = numbers[0::2], numbers[1::2]
    ends = starts + lengths  # one past each run; no overflow since both are <= n_pixels
    return bool((starts[1:] >= ends[:-1]).all() and ends[-1] - 1 <= n_pixels)


def open_text(path: Path) -> IO[str]:
    """Open a CSV for reading as text, gunzipping when its first bytes are gzip's magic number."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
    except OSError as error:
        raise WorkbenchError(f"{path}: cannot read ({error.strerror}); fix: check the path") from error
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def iter_rows(path: Path) -> Iterator[tuple[int, str, str]]:
    """Yield (row, img, rle) for each data row of an `img,rle_mask` CSV, checking its shape."""
    path = Path(path)
    with open_text(path) as f:
        try:
            header = f.readline().rstrip("\r\n")
            if header.lstrip("\ufeff") != HEADER:
                raise WorkbenchError(f"{path}: header is {header[:60]!r}, not {HEADER!r}; fix: make line 1 {HEADER}")
            for row, line in enumerate(f, start=1):
                img, comma, rle = line.rstrip("\r\n").partition(",")
                if not comma or not img or "," in rle:
                    raise WorkbenchError(
                        f"{path}: row {row} (line {row + 1}) is not `img,rle_mask` ({line[:60]!r}); "
                        "fix: one id and one space-separated RLE per row"
                    )
                yield row, img, rle
        except (OSError, EOFError, UnicodeDecodeError, zlib.error) as error:  # truncated or corrupt files
            raise WorkbenchError(f"{path}: unreadable ({error}); fix: re-write or re-download the file") from error


def read_sample_ids(sample_submission_csv: Path) -> list[str]:
    """The ids (`<car>_<NN>.jpg`) of Kaggle's sample_submission.csv, in its order."""
    ids = [img for _, img, _ in iter_rows(sample_submission_csv)]
    if not ids:
        raise WorkbenchError(f"{sample_submission_csv}: no rows; fix: use Kaggle's sample_submission.csv")
    duplicate = _first_duplicate(ids)
    if duplicate is not None:
        raise WorkbenchError(f"{sample_submission_csv}: id {duplicate} appears twice; fix: use Kaggle's file")
    return ids


def _first_duplicate(ids: Iterable[str]) -> str | None:
    seen: set[str] = set()
    for img in ids:
        if img in seen:
            return img
        seen.add(img)
    return None


def describe_id_mismatch(
    row: int, got: str | None, want: str | None, all_expected: set[str], seen: set[str], later: Iterable[str]
) -> str:
    """Name the first id problem at `row`: the file has `got` (None: it ended), `want` was expected
    there (None: no more rows expected); `seen` holds the file's ids before `row`, `later` its ids after.
    """
    if got is None:
        return f"missing id {want}: the file ends before row {row}"
    if got in seen:
        return f"duplicate id {got} at row {row}"
    if got not in all_expected:
        return f"extra id {got} at row {row} (not an expected id)"
    if want is None:
        return f"extra row {row} ({got})"
    if want not in set(later):
        return f"missing id {want} (expected at row {row}, where the file has {got})"
    return f"row {row} has {got} where {want} is expected: the ids are out of order"


def validate_submission(path: Path, expected_ids: Sequence[str], image_size: tuple[int, int] = KAGGLE_SIZE) -> None:
    """Check header, ids (same set and order as `expected_ids`) and every RLE; raise WorkbenchError.

    `image_size` is (W, H). Reads .csv and .csv.gz in one streaming pass.
    """
    path = Path(path)
    n_pixels = image_size[0] * image_size[1]
    rows = iter_rows(path)
    n_rows = 0
    for n_rows, img, rle in rows:
        want = expected_ids[n_rows - 1] if n_rows <= len(expected_ids) else None
        if img != want:
            expected_set = set(expected_ids)
            seen = set(expected_ids[: n_rows - 1])
            later = (other for _, other, _ in rows)
            problem = describe_id_mismatch(n_rows, img, want, expected_set, seen, later)
            raise WorkbenchError(f"{path}: {problem}; fix: write exactly sample_submission.csv's ids, in its order")
        try:
            parse_runs(rle, n_pixels)
        except ValueError as error:
            raise WorkbenchError(
                f"{path}: row {n_rows} ({img}): RLE {error}; fix: re-encode the mask with carvana.rle_encode "
                f"(row-major, 1-indexed) at the image size {image_size[0]}x{image_size[1]}"
            ) from None
    if n_rows < len(expected_ids):
        problem = describe_id_mismatch(n_rows + 1, None, expected_ids[n_rows], set(expected_ids), set(), ())
        raise WorkbenchError(f"{path}: {problem}; fix: write a row for every id of sample_submission.csv")


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


def _encoded_chunks(encoder: _MaskEncoder, chunks: list[Sequence[str]], n_jobs: int) -> Iterator[str]:
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
    with context.Pool(n_jobs, initializer=_init_worker, initargs=(encoder,)) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_encode_in_worker, (chunk,)))
            if len(pending) >= 2 * n_jobs:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def write_submission(
    ids: Sequence[str],
    read_map: Callable[[str], np.ndarray],
    out_path: Path,
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
    duplicate = _first_duplicate(ids)
    if duplicate is not None:
        raise WorkbenchError(f"id {duplicate} appears twice in the ids to write; fix: pass sample_submission.csv's ids")
    if n_jobs == -1:
        n_jobs = os.cpu_count() or 1
    if n_jobs < 1:
        raise WorkbenchError(f"n_jobs={n_jobs}; fix: pass a positive number of processes, or -1 for all cores")
    chunks = [ids[i : i + IDS_PER_TASK] for i in range(0, len(ids), IDS_PER_TASK)]
    n_jobs = max(1, min(n_jobs, len(chunks)))
    if n_jobs > 1:
        try:
            pickle.dumps(encoder)
        except Exception as error:
            raise TypeError(f"read_map must be picklable for n_jobs={n_jobs} ({error}); pass a module-level "
                            "function or a reader object, or use n_jobs=1") from error
    with atomic_output(out_path) as tmp_path:
        texts = contextlib.closing(_encoded_chunks(encoder, chunks, n_jobs))  # closing stops the pool
        bar = tqdm(total=len(ids), unit="mask", disable=not progress, desc=f"writing {out_path.name}")
        with open(tmp_path, "wb") as raw, open_compressed(raw, out_path) as out, texts as texts, bar:
            out.write(f"{HEADER}\n".encode())
            for chunk, text in zip(chunks, texts):
                out.write(text.encode())
                bar.update(len(chunk))
        validate_submission(tmp_path, ids, image_size)
    return out_path


def open_compressed(raw: IO[bytes], out_path: Path) -> IO[bytes]:
    """gzip for *.gz (mtime 0 and no name, so equal content gives equal bytes), else the raw file."""
    if out_path.name.endswith(".gz"):
        return gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0)
    return contextlib.nullcontext(raw)


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """`with atomic_output(path) as tmp:` write tmp (same folder); on success it replaces `path`,
    on any error (or interrupt) it is deleted and `path` keeps its old bytes."""
    path = Path(path)
    if not path.parent.is_dir():
        raise WorkbenchError(f"{path.parent}: no such folder; fix: create it or choose another --out")
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a submission is an ordinary file
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
