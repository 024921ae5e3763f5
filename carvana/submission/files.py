"""Kaggle submission files: read and validate `img,rle_mask` CSVs (plain or gzipped), open them for writing.

Rows are numbered from 1 at the first data row (the header is line 1, so row N is line N + 1).
Everything streams: no function here holds more than a row of masks in memory, whatever the number
of rows (a real submission has 100,064 rows of ~10-20 kB of RLE text each).
"""

from __future__ import annotations

import contextlib
import gzip
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, cast

from carvana.dataset import KAGGLE_SIZE
from carvana.errors import WorkbenchError
from carvana.rle import parse_runs

HEADER = "img,rle_mask"
GZIP_LEVEL = 1  # bench_submission: level 6 takes ~6x longer per row for a file only ~8% smaller


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
    duplicate = first_duplicate(ids)
    if duplicate is not None:
        raise WorkbenchError(f"{sample_submission_csv}: id {duplicate} appears twice; fix: use Kaggle's file")
    return ids


def first_duplicate(ids: Iterable[str]) -> str | None:
    """The first id that appears a second time in `ids`, or None."""
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


def validate_submission(path: Path, expected_ids: Sequence[str], *, image_size: tuple[int, int] = KAGGLE_SIZE) -> None:
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


def open_compressed(raw: IO[bytes], out_path: Path) -> contextlib.AbstractContextManager[IO[bytes]]:
    """gzip for *.gz (mtime 0 and no name, so equal content gives equal bytes), else the raw file."""
    if out_path.name.endswith(".gz"):
        return cast(IO[bytes], gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0))
    return contextlib.nullcontext(raw)
