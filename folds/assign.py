"""Car-grouped, stratified K-fold assignment.

Every photo of a car goes to the same fold (an image-level split leaks: the 16 photos of a car are
near duplicates). Cars are stratified by make or by bins of mean mask area, as the winners did, and
dealt round-robin over the folds in a seeded order, so car counts per fold differ by at most one.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from carvana.dataset import CarvanaData, car_of
from carvana.errors import WorkbenchError

STRATIFY = ("area", "make", "none")
N_AREA_BINS = 4


def assign_folds(cars: list[str], strata: dict[str, str], *, n_folds: int, seed: int) -> dict[str, int]:
    """{car: fold in 0..n_folds-1}: strata dealt one after another, round-robin, seeded shuffles.

    The deal continues across strata (it does not restart at fold 0), which keeps every fold's car
    count within one of the others and each stratum spread as evenly as its size allows.
    """
    if n_folds < 2:
        raise WorkbenchError(f"folds.n_folds is {n_folds}; use 2 or more")
    if len(cars) < n_folds:
        raise WorkbenchError(f"{len(cars)} cars cannot fill {n_folds} folds; lower folds.n_folds or add cars")
    rng = np.random.default_rng(seed)
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for car in sorted(cars):
        by_stratum[strata[car]].append(car)
    fold_order = rng.permutation(n_folds)
    fold_of, position = {}, 0
    for stratum in sorted(by_stratum):
        members = by_stratum[stratum]
        for index in rng.permutation(len(members)):
            fold_of[members[index]] = int(fold_order[position % n_folds])
            position += 1
    return fold_of


def car_strata(data: CarvanaData, cars: list[str], stratify: str) -> dict[str, str]:
    """{car: stratum label} by make, by mean mask-area quartile (from train_masks.csv), or one stratum."""
    if stratify == "none":
        return {car: "all" for car in cars}
    if stratify == "make":
        return {car: data.metadata[car]["make"] for car in cars}
    if stratify == "area":
        area = defaultdict(list)
        for img, rle in data.train_rles.items():
            area[car_of(img)].append(sum(int(n) for n in rle.split()[1::2]))
        mean_area = np.array([np.mean(area[car]) for car in cars])
        edges = np.quantile(mean_area, np.linspace(0, 1, N_AREA_BINS + 1)[1:-1])
        bins = np.searchsorted(edges, mean_area, side="right")
        return {car: f"area{b}" for car, b in zip(cars, bins)}
    raise WorkbenchError(f"folds.stratify is {stratify!r}; valid values: {', '.join(STRATIFY)}")
