"""Blend submission files directly (as the 31st-place team did): a weighted vote per pixel.

The vote runs on run boundaries, never on pixel arrays: every run of file i adds its bit 2**i to a
coverage code at its start and removes it at its end; after sorting the boundaries, a cumulative sum
gives, for each stretch between boundaries, exactly which files cover it. The vote of a code is the
sum of its files' weights, added in file order, so it equals a per-pixel `sum(w_i * mask_i)` bit for
bit (ties included). Files are read in lockstep, one row at a time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from carvana.atomic import atomic_path, refuse_overwrite, write_text_atomic
from carvana.dataset import KAGGLE_SIZE, format_size
from carvana.errors import WorkbenchError
from carvana.rle import Runs, parse_runs, runs_to_rle
from carvana.submission.files import HEADER, iter_rows, open_compressed

MAX_FILES = 62  # coverage codes are int64 bit sets
TABLE_FILES = 16  # up to this many files, the vote of every code is looked up in a 2**n table


def run_coverage(runs: Sequence[Runs]) -> tuple[np.ndarray, np.ndarray]:
    """Boundaries and coverage codes of several run lists (0-indexed starts, exclusive ends, int64).

    Returns (bounds, codes): pixels in [bounds[k], bounds[k + 1]) are covered by the lists whose bit
    is set in codes[k]; codes[-1] is 0 (nothing covers the pixels after the last boundary).
    Runs within one list must not overlap (touching is fine).
    """
    positions = np.concatenate([edge for starts, ends in runs for edge in (starts, ends)])
    bit_pairs = [np.array([1, -1], dtype=np.int64) << i for i in range(len(runs))]  # +bit at starts, -bit at ends
    deltas = np.concatenate([np.repeat(pair, starts.size) for pair, (starts, _) in zip(bit_pairs, runs)])
    if positions.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    order = np.argsort(positions, kind="stable")
    positions, deltas = positions[order], deltas[order]
    # Sum the deltas of equal positions first: a run ending where another starts is no boundary.
    first = np.flatnonzero(np.r_[True, positions[1:] != positions[:-1]])
    return positions[first], np.cumsum(np.add.reduceat(deltas, first))


def vote_table(weights: Sequence[float], min_votes: float) -> np.ndarray:
    """Whether each coverage code passes: (2**n_files,) bool, `sum of its files' weights >= min_votes`.

    Weights are added in file order, as a per-pixel `votes += w_i * mask_i` adds them, so ties and
    float rounding come out the same.
    """
    codes = np.arange(1 << len(weights), dtype=np.int64)
    return _code_votes(codes, weights) >= min_votes


def _code_votes(codes: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    votes = np.zeros(codes.size)
    for i, weight in enumerate(weights):
        votes += weight * ((codes >> i) & 1)
    return votes


def vote_runs(
    runs: Sequence[Runs], weights: Sequence[float], min_votes: float, *, table: np.ndarray | None = None
) -> Runs:
    """Runs (starts, ends) of the pixels whose weighted vote sum(w_i * covered_i) >= min_votes.

    Strict majority is min_votes = the smallest float above half the total weight (see `blend_rule`).
    `min_votes` must be > 0, so uncovered pixels are never car. `table`: `vote_table(weights,
    min_votes)`, worth passing when voting many rows with up to TABLE_FILES files.
    """
    bounds, codes = run_coverage(runs)
    if bounds.size == 0:
        return bounds, bounds
    if table is None and len(weights) <= TABLE_FILES:
        table = vote_table(weights, min_votes)
    if table is not None:
        car = table[codes]
    else:  # too many files for a table of every code: vote only the codes that occur
        unique_codes, inverse = np.unique(codes, return_inverse=True)
        car = (_code_votes(unique_codes, weights) >= min_votes)[inverse]
    change = np.diff(car.view(np.int8), prepend=np.int8(0))
    return bounds[change == 1], bounds[change == -1]


def blend_rule(weights: Sequence[float], min_votes: float | None) -> tuple[float, str]:
    """The vote a pixel needs (`vote >= needed`) and a readable statement of the rule."""
    total = 0.0
    for weight in weights:
        total += weight
    if min_votes is None:
        return float(np.nextafter(total / 2, np.inf)), f"majority: weighted vote > {total / 2:g} (half of {total:g})"
    if not 0 < min_votes <= total:
        raise WorkbenchError(
            f"--min-votes {min_votes} is outside (0, {total:g}] (the total weight); fix: pass a value in that range"
        )
    return float(min_votes), f"min_votes: weighted vote >= {min_votes:g} of {total:g}"


def _check_weights(paths: Sequence[Path], weights: Sequence[float] | None) -> list[float]:
    if len(paths) < 2:
        raise WorkbenchError(f"blend needs at least 2 submission files, got {len(paths)}; fix: pass more files")
    if len(paths) > MAX_FILES:
        raise WorkbenchError(f"blend takes at most {MAX_FILES} files, got {len(paths)}; fix: blend in stages")
    if weights is None:
        return [1.0] * len(paths)
    weights = [float(w) for w in weights]
    if len(weights) != len(paths):
        raise WorkbenchError(f"{len(weights)} weights for {len(paths)} files; fix: pass one --weights value per file")
    if not all(np.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise WorkbenchError(f"weights {weights} must be >= 0 with a positive sum; fix: pass e.g. --weights 1 1 2")
    return weights


def _blended_rows(
    paths: Sequence[Path],
    weights: list[float],
    needed: float,
    table: np.ndarray | None,
    n_pixels: int,
    size_text: str,
) -> Iterator[tuple[str, str]]:
    """(img, blended RLE) per row, reading every file in lockstep; refuses differing ids and bad RLE."""
    readers = [iter_rows(path) for path in paths]
    row = 0
    while True:
        row += 1
        rows = [next(reader, None) for reader in readers]
        if all(r is None for r in rows):
            return
        present = [r for r in rows if r is not None]
        if len(present) < len(rows):
            ended = next(p for p, r in zip(paths, rows) if r is None)
            going = next(p for p, r in zip(paths, rows) if r is not None)
            raise WorkbenchError(
                f"{ended}: ends before row {row}, where {going} goes on; fix: blend submissions of the same ids"
            )
        img = present[0][1]
        runs = []
        for path, (_, other, rle) in zip(paths, present):
            if other != img:
                raise WorkbenchError(
                    f"{path}: row {row} has id {other} where {paths[0]} has {img}; "
                    "fix: blend submissions written for the same sample_submission.csv"
                )
            try:
                runs.append(parse_runs(rle, n_pixels))
            except ValueError as error:
                raise WorkbenchError(
                    f"{path}: row {row} ({img}): RLE {error}; fix: check the image size "
                    f"({size_text}) or re-write the file with carvana.rle_encode"
                ) from None
        yield img, runs_to_rle(*vote_runs(runs, weights, needed, table=table))


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_paths(paths: list[Path], out_path: Path, taken: Callable[[Path], str | None] | None) -> None:
    """Refuse an input listed twice (it would vote twice) and an output that is one of the inputs (or the
    record of one), or that `taken` names (a run folder's own file): the blend would overwrite what it reads."""
    seen: dict[Path, Path] = {}
    for path in paths:
        key = path.resolve()
        if key in seen:
            raise WorkbenchError(
                f"{path}: listed twice (as {seen[key]} too), it would vote twice; list each file "
                "once (use --weights to give a file more say)"
            )
        seen[key] = path
    inputs = set(seen) | {key.with_name(key.name + ".json") for key in seen}

    def role(path: Path) -> str | None:
        if path in inputs:
            return "one of the inputs (or its record)"
        return taken(path) if taken else None

    refuse_overwrite("--out", out_path, out_path.with_name(out_path.name + ".json"), role, "blend.csv.gz")
    if out_path.is_dir():
        raise WorkbenchError(f"--out {out_path}: is a folder; give a file path, e.g. {out_path / 'blend.csv.gz'}")


def blend_submissions(
    paths: Sequence[Path],
    out_path: Path,
    *,
    weights: Sequence[float] | None = None,
    min_votes: float | None = None,
    image_size: tuple[int, int] = KAGGLE_SIZE,
    taken: Callable[[Path], str | None] | None = None,
) -> Path:
    """Weighted per-pixel vote of submission files, written atomically to `out_path` (gzip if .gz).

    Default: equal weights, strict majority (car when the vote sum > half the total weight).
    `min_votes` K: car when the vote sum >= K. `image_size` is (W, H). Writes `<out_path>.json`
    naming the inputs (with sha256), the weights, the rule, the size and the time. Neither may replace an
    input, nor a path `taken` names (carvana.atomic.refuse_overwrite).
    """
    paths, out_path = [Path(p) for p in paths], Path(out_path)
    _check_paths(paths, out_path, taken)
    weights = _check_weights(paths, weights)
    needed, rule = blend_rule(weights, min_votes)
    table = vote_table(weights, needed) if len(weights) <= TABLE_FILES else None
    size_text = format_size(image_size)
    started = time.perf_counter()
    n_rows = 0
    with atomic_path(out_path) as tmp_path:
        with open(tmp_path, "wb") as raw, open_compressed(raw, out_path) as out:
            out.write(f"{HEADER}\n".encode())
            for img, rle in _blended_rows(paths, weights, needed, table, image_size[0] * image_size[1], size_text):
                out.write(f"{img},{rle}\n".encode())
                n_rows += 1
        record = {
            "output": out_path.name,
            "output_sha256": sha256_of(tmp_path),
            "inputs": [{"path": str(p.resolve()), "sha256": sha256_of(p), "weight": w} for p, w in zip(paths, weights)],
            "weights": weights,
            "min_votes": min_votes,
            "rule": rule,
            "image_size": size_text,
            "n_rows": n_rows,
            "seconds": round(time.perf_counter() - started, 3),
            "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        write_text_atomic(out_path.with_name(out_path.name + ".json"), json.dumps(record, indent=2) + "\n")
    return out_path
