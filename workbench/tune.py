"""`workbench tune`: nested Optuna tuning of the blend's threshold(s) and member weights on honest OOF maps.

Reads RUN/folds.csv and the OOF store, scores trials with the exact fast Dice evaluator at the store's
resolution, and writes RUN/tune.json (honest and tuned-on scores, the params for the test set). Several
`workbench tune` processes on one storage share the work; see stacking/tune.py.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from carvana.atomic import write_json_atomic
from carvana.dataset import CarvanaData
from carvana.errors import WorkbenchError
from carvana.validate import check_data
from folds import Folds
from oof import Store
from stacking.oof_table import truth_at
from workbench.config import ExperimentConfig, config_to_dict
from workbench.steps import load_folds

if TYPE_CHECKING:
    from stacking.tune import NestedResult

TUNE_JSON = "tune.json"
OPTUNA_DB = "optuna.db"


def storage_url(config: ExperimentConfig) -> str:
    """`tune.storage` as given, or SQLite in RUN/optuna.db (absolute, so any working directory finds it)."""
    if config.tune.storage:
        return config.tune.storage
    return f"sqlite:///{(config.run_dir / OPTUNA_DB).resolve()}"


def complete_members(store: Store, fold_of: dict[str, int]) -> list[str]:
    """Members that have an OOF map of every image in folds.csv (unfinished ones are skipped)."""
    return [m for m in store.members() if set(fold_of) <= set(store.train_folds(m))]


def tune_members(config: ExperimentConfig, store: Store, folds: Folds) -> list[str]:
    """`tune.members`, else the complete members of the zoo (of the whole store when the config has no
    zoo, e.g. maps written by other tools), each checked honest for these folds."""
    complete = complete_members(store, folds.fold_of)
    allowed = {spec.name for spec in config.zoo} or set(complete)
    members = list(config.tune.members or [m for m in complete if m in allowed])
    for member in members:
        if member not in allowed:
            raise WorkbenchError(f"tune.members names {member!r}, which is not in this config's zoo; "
                                 f"valid: {', '.join(sorted(allowed))}")
    if not members:
        raise WorkbenchError(f"{store.path}: no member has OOF maps of every train image yet; "
                             "run `workbench fold-train --config ...` first")
    for member in members:
        store.check_coverage(member, folds.fold_of, folds.hash)
    return members


def truth_reader(data: CarvanaData, native_hw: tuple[int, int], shape: tuple[int, int]) -> Callable[[str], np.ndarray]:
    """img -> (H, W) uint8 0/1 truth at the store's `shape`: decoded at `native_hw`, area-averaged, majority."""
    rles = data.train_rles
    return lambda img: truth_at(rles[img], native_hw, shape)


def study_name(config: ExperimentConfig, context: dict, members: list[str]) -> str:
    """`tune.study` plus a short hash of what the trials depend on (members and their maps, folds,
    search space): a changed zoo starts fresh studies instead of refusing the old ones."""
    text = json.dumps([context, members, config_to_dict(config.tune)], sort_keys=True, default=str)
    return f"{config.tune.study}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def tune_run(config: ExperimentConfig, progress: bool = True, members: list[str] | None = None) -> NestedResult:
    """Nested tuning over the run's folds; prints the summary, writes RUN/tune.json, returns the NestedResult.

    `members` (already checked by the caller, e.g. `workbench stack`) overrides `tune.members`."""
    import optuna

    from stacking.tune import TuneSpace, build_folded_evaluator, nested_tune

    folds = load_folds(config)
    width, height = check_data(config.data).size
    store = Store(config.run_dir / "oof")
    members = tune_members(config, store, folds) if members is None else members
    truth = truth_reader(CarvanaData(config.data), (height, width), store.resolution(members[0]))
    evaluator = build_folded_evaluator(store, members, folds.fold_of, truth, progress=progress)
    tune = config.tune
    space = TuneSpace(per_angle=tune.per_angle, tune_weights=tune.tune_weights, threshold_range=tune.threshold_range)
    context = {"folds_hash": folds.hash, "generations": {m: store.metadata(m)["generation"] for m in members}}
    url = storage_url(config)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial would bury the summary
    name = study_name(config, context, members)
    result = nested_tune(evaluator, folds.n_folds, members, space, url, name, tune.n_trials, tune.seed,
                         context=context, progress=progress)
    path = config.run_dir / TUNE_JSON
    write_json_atomic(path, {"storage": url, "study": name, "members": members, **result.to_dict(),
                             "honest_per_image": result.honest_per_image})
    print(summary(result, folds, name, url))
    print(f"wrote {path}")
    return result


def summary(result: NestedResult, folds: Folds, study: str, url: str) -> str:
    """A few lines: baseline, tuned-on and honest mean Dice, the per-fold honest scores and the params."""
    params = result.params
    per_fold = "  ".join(
        f"fold{k} {np.mean([d for img, d in result.honest_per_image.items() if folds.fold_of[img] == k]):.6f}"
        for k in range(folds.n_folds))
    weights = ", ".join(f"{m} {w:.3f}" for m, w in zip(params.members, params.weights))
    thresholds = (f"{params.threshold[0]:.4f}" if np.all(params.threshold == params.threshold[0])
                  else f"{params.threshold.min():.4f}..{params.threshold.max():.4f} by angle")
    return "\n".join([
        f"tuned blend: study {study!r} and {folds.n_folds} outer studies, {params.n_trials} trials in the full one",
        f"  storage {url}",
        f"  baseline (threshold 0.5, equal weights)   {result.baseline:.6f}",
        f"  tuned-on (tuned and scored on all folds) {result.tuned_on:.6f}",
        f"  honest (fold k scored with params tuned without it) {result.honest_mean:.6f}   {per_fold}",
        f"  test-set params: threshold {thresholds}; weights {weights}",
    ])
