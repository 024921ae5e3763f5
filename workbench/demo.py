"""`workbench demo` / `make demo`: the whole pipeline on the config's data (synthetic when missing):
data, folds, fold-train, stack (blends, stackers, tuning, report, submission), local score, summary."""

from __future__ import annotations

import time

from stacking.choice import chosen_row
from workbench.config import ExperimentConfig
from workbench.fold_train import fold_train
from workbench.runfolder import RunPaths, open_run_dir
from workbench.stack import stack
from workbench.steps import FOLDS_CSV, describe_folds, ensure_data, make_folds
from workbench.submit import local_score


def run_demo(config: ExperimentConfig) -> None:
    start = time.time()
    open_run_dir(config.run_dir)  # a folder that is not a run is refused before the data is generated
    print(ensure_data(config))
    folds = make_folds(config)
    print(f"\n{config.run_dir / FOLDS_CSV}: {folds.n_folds} car-grouped folds\n{describe_folds(folds)}\n")
    fold_train(config)
    rows = stack(config)
    submission = RunPaths(config.run_dir).submission
    score = local_score(config, submission)
    print("\n== demo summary ==")
    print(f"best entry by honest OOF mean Dice: {rows[0]['entry']} ({float(rows[0]['oof_mean_dice']):.6f})")
    print(f"submission: {submission} (from {chosen_row(rows)['entry']}: see the `chosen:` line above)")
    if score is not None:
        print(f"local score (synthetic test truth): {score.mean_dice:.6f}")
    print(f"report: {RunPaths(config.run_dir).report / 'report.md'}")
    print(f"Optuna dashboard: make dashboard  (or: workbench dashboard --config {config_path_hint(config)})")
    print(f"blend the top submissions: make blend  -> {RunPaths(config.run_dir).blend}")
    print(f"demo finished in {(time.time() - start) / 60:.1f} min")


def config_path_hint(config: ExperimentConfig) -> str:
    return f"configs/{config.name}.yaml"
