"""Shared fixtures and helpers: a tiny synthetic dataset in the Kaggle layout (generated once per
session), a config on it, and running the `workbench` CLI as a user would."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_SIZE = (96, 64)  # (W, H)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`workbench ARGS...` in a fresh process; stdout and stderr captured as text."""
    return subprocess.run([sys.executable, "-m", "workbench.cli", *args], capture_output=True, text=True)


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
