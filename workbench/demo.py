"""`workbench demo` / `make demo`: the whole pipeline on the config's data (synthetic when missing)."""
from __future__ import annotations

import time

from workbench.config import ExperimentConfig
from workbench.fold_train import fold_train
from workbench.steps import FOLDS_CSV, describe_folds, ensure_data, make_folds


def run_demo(config: ExperimentConfig) -> None:
    start = time.time()
    print(ensure_data(config))
    folds = make_folds(config)
    print(f"\n{config.run_dir / FOLDS_CSV}: {folds.n_folds} car-grouped folds\n{describe_folds(folds)}\n")
    fold_train(config)
    print(f"\ndemo finished in {(time.time() - start) / 60:.1f} min; run folder: {config.run_dir}")
