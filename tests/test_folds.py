"""Folds are grouped by car, balanced, stratified, deterministic, and checked on every read."""
from __future__ import annotations

import csv
from collections import Counter

import pytest

from carvana.errors import WorkbenchError
from folds import assign_folds, read_folds
from tests.conftest import assert_user_error, run_cli
from workbench.config import load_config
from workbench.steps import make_folds

CARS = [f"{i:012x}" for i in range(23)]


def test_cars_are_grouped_balanced_and_deterministic():
    strata = {car: f"s{i % 3}" for i, car in enumerate(CARS)}
    fold_of = assign_folds(CARS, strata, n_folds=5, seed=1)
    assert fold_of == assign_folds(list(reversed(CARS)), strata, n_folds=5, seed=1)
    assert fold_of != assign_folds(CARS, strata, n_folds=5, seed=2)
    counts = Counter(fold_of.values())
    assert set(counts) == set(range(5)) and max(counts.values()) - min(counts.values()) <= 1


def test_each_stratum_is_spread_over_the_folds():
    strata = {car: ("big" if i < 10 else "small") for i, car in enumerate(CARS)}
    fold_of = assign_folds(CARS, strata, n_folds=5, seed=0)
    big_per_fold = Counter(fold_of[car] for car in CARS if strata[car] == "big")
    assert sorted(big_per_fold.values()) == [2, 2, 2, 2, 2]


def test_folds_csv_from_config_groups_every_car(tiny_config):
    config = load_config(tiny_config)
    folds = make_folds(config)
    rows = list(csv.DictReader(open(config.run_dir / "folds.csv")))
    assert list(rows[0]) == ["img", "car", "fold"]
    fold_of_car = {}
    for row in rows:
        assert fold_of_car.setdefault(row["car"], row["fold"]) == row["fold"]
    assert len(rows) == 96 and folds.n_folds == 3
    assert sorted(Counter(fold_of_car.values()).values()) == [2, 2, 2]
    assert (config.run_dir / "config.yaml").exists()
    assert make_folds(config).hash == folds.hash  # re-running is a no-op


def rewrite(path, change):
    rows = list(csv.reader(open(path)))
    change(rows)
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


def test_split_car_is_refused(tiny_config):
    config = load_config(tiny_config)
    folds = make_folds(config)
    path = config.run_dir / "folds.csv"
    rewrite(path, lambda rows: rows[1].__setitem__(2, str((int(rows[1][2]) + 1) % folds.n_folds)))
    with pytest.raises(WorkbenchError, match="split across folds"):
        read_folds(path)
    assert_user_error(run_cli("folds", "--config", str(tiny_config)), "folds.csv", "split across folds")


def test_folds_not_matching_the_data_are_refused(tiny_config):
    config = load_config(tiny_config)
    make_folds(config)
    path = config.run_dir / "folds.csv"
    rewrite(path, lambda rows: rows.pop())
    before = path.read_bytes()
    assert_user_error(run_cli("folds", "--config", str(tiny_config)), "folds.csv", "does not match the data")
    assert path.read_bytes() == before


def test_garbage_fold_is_refused(tiny_config, tmp_path):
    path = tmp_path / "folds.csv"
    path.write_text("img,car,fold\n000000000000_01,000000000000,x\n")
    with pytest.raises(WorkbenchError, match="line 2"):
        read_folds(path)
