"""Shared fixtures: a tiny synthetic dataset in the Kaggle layout, generated once per session."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

TINY_SIZE = (96, 64)  # (W, H)


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
