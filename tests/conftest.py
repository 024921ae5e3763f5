"""Shared fixtures and helpers: a tiny synthetic dataset in the Kaggle layout (generated once per
session), a config on it, and running the `workbench` CLI as a user would."""
from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
    from stacking.evaluate import FoldedEvaluator

REPO = Path(__file__).resolve().parents[1]
TINY_SIZE = (96, 64)  # (W, H)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`workbench ARGS...` in a fresh process; stdout and stderr captured as text."""
    return subprocess.run([sys.executable, "-m", "workbench.cli", *args], capture_output=True, text=True)


def write_csv(path: Path, rows: list[tuple[str, str]], header: str = "img,rle_mask") -> Path:
    """A submission-format CSV of `rows` (gzipped when the name ends in .gz)."""
    text = header + "\n" + "".join(f"{img},{rle}\n" for img, rle in rows)
    path.write_bytes(gzip.compress(text.encode()) if path.name.endswith(".gz") else text.encode())
    return path


def read_csv(path: Path) -> list[tuple[str, str]]:
    """The (img, rle) rows of a submission-format CSV, plain or gzipped."""
    data = path.read_bytes()
    text = gzip.decompress(data).decode() if data[:2] == b"\x1f\x8b" else data.decode()
    lines = text.splitlines()
    assert lines[0] == "img,rle_mask"
    return [(img, rle) for img, rle in (line.split(",") for line in lines[1:])]


def random_mask(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool masks with runs of every length, incl. empty, full and first/last pixel runs."""
    kind = rng.integers(0, 8)
    if kind == 0:
        return np.zeros(shape, dtype=bool)
    if kind == 1:
        return np.ones(shape, dtype=bool)
    return rng.random(shape) < rng.uniform(0.05, 0.95)


TUNE_MEMBERS = ["a", "b", "c"]  # the members of `make_images`


def make_images(seed: int = 0, n_images: int = 12, shape: tuple[int, int] = (24, 32)) -> list:
    """(maps (3, H, W) uint8, truth, angle) per image: ellipse truths; members (TUNE_MEMBERS) are noisy
    logistic maps of the distance, biased low / none / high."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    images = []
    for i in range(n_images):
        cy, cx = shape[0] / 2 + rng.integers(-3, 4), shape[1] / 2 + rng.integers(-4, 5)
        d = ((yy - cy) / rng.integers(5, 9)) ** 2 + ((xx - cx) / rng.integers(7, 12)) ** 2
        logits = [4 * (1 - d) + bias + rng.normal(0, 0.8, d.shape) for bias in (-1.0, 0.0, 1.5)]
        maps = np.stack([np.rint(255 / (1 + np.exp(-x))) for x in logits]).astype(np.uint8)
        images.append((maps, (d < 1).astype(np.uint8), i % 16 + 1))
    return images


def make_evaluator(poison_fold: int | None = None, n_folds: int = 3) -> FoldedEvaluator:
    """Image i of `make_images` in fold i % n_folds; `poison_fold`'s truths are inverted."""
    from stacking.evaluate import DiceEvaluator, FoldedEvaluator

    evaluators = {k: DiceEvaluator(len(TUNE_MEMBERS)) for k in range(n_folds)}
    ids: dict[int, list[str]] = {k: [] for k in range(n_folds)}
    for i, (maps, truth, angle) in enumerate(make_images()):
        k = i % n_folds
        evaluators[k].add_image(maps, 1 - truth if k == poison_fold else truth, angle)
        ids[k].append(f"img{i:02d}")
    return FoldedEvaluator(evaluators, ids)


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Non-zero exit, one `error:` line on stderr naming the problem, no traceback."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="session")
def tiny_data_master(tmp_path_factory) -> Path:
    from carvana.synth import generate

    root = tmp_path_factory.mktemp("synthetic") / "data"
    generate(root, n_cars=6, n_test_cars=2, size=TINY_SIZE, seed=7, progress=False)
    return root


@pytest.fixture
def tiny_data(tiny_data_master, tmp_path) -> Path:
    """A private copy of the tiny dataset that a test may damage."""
    root = tmp_path / "data"
    shutil.copytree(tiny_data_master, root)
    return root


@pytest.fixture
def tiny_config(tiny_data, tmp_path) -> Path:
    """A config file pointing at the tiny data and a private run dir."""
    path = tmp_path / "tiny.yaml"
    path.write_text(
        f"data: {tiny_data}\nrun_dir: {tmp_path / 'run'}\nfolds:\n  n_folds: 3\n  stratify: area\n  seed: 0\n"
    )
    return path
