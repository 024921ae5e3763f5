"""Car-grouped fold assignment and the `folds.csv` every later stage reads."""

from folds.assign import STRATIFY, assign_folds, car_strata
from folds.table import Folds, read_folds, write_folds

__all__ = ["STRATIFY", "Folds", "assign_folds", "car_strata", "read_folds", "write_folds"]
