"""`workbench tune`: nested Optuna tuning of the blend's threshold(s) and member weights on honest OOF maps.

Reads RUN/folds.csv and the OOF store, scores trials with the exact fast Dice evaluator at the store's
resolution, and writes RUN/tune.json (honest and tuned-on scores, the params for the test set). Several
`workbench tune` processes on one storage share the work; see stacking/tune.py.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import numpy as np

from carvana.atomic import write_json_atomic
from carvana.errors import WorkbenchError
from carvana.interrupts import quiet_optuna_interrupts
from folds import Folds
from oof import Store
from stacking.storage import sqlite_url
from workbench.config import ExperimentConfig, config_to_dict
from workbench.imports import imported_members
from workbench.run import Run
from workbench.runfolder import RunPaths
from workbench.runlock import run_lock

if TYPE_CHECKING:
    from stacking.tune import TuneSpace
    from stacking.tuned import NestedResult, TunedBlend

TUNED_ENTRY = "tuned"


def storage_url(config: ExperimentConfig) -> str:
    """`tune.storage` as given, or SQLite in RUN/optuna.db (absolute, so any working directory finds it, and
    escaped, so any folder name works); SQLite is refused on a network file system or with a non-local engine
    (stacking.storage)."""
    from stacking.storage import check_storage

    url = config.tune.storage or sqlite_url(RunPaths(config.run_dir).optuna_db)
    return check_storage(url, config.compute.engine)


def complete_members(store: Store, fold_of: dict[str, int]) -> list[str]:
    """Members that have an OOF map of every image in folds.csv (unfinished ones are skipped)."""
    return [m for m in store.members() if set(fold_of) <= set(store.train_folds(m))]


def tune_members(config: ExperimentConfig, store: Store, folds: Folds) -> list[str]:
    """`tune.members`, else the complete members of the zoo and the imported ones (of the whole store when the
    config has no zoo, e.g. maps written by other tools), each checked honest for these folds."""
    complete = complete_members(store, folds.fold_of)
    allowed = {spec.name for spec in config.zoo} | set(imported_members(store)) if config.zoo else set(complete)
    members = list(config.tune.members or [m for m in complete if m in allowed])
    for member in members:
        if member not in allowed:
            raise WorkbenchError(
                f"tune.members names {member!r}, which is neither in this config's zoo nor imported; "
                f"valid: {', '.join(sorted(allowed))}"
            )
    if not members:
        raise WorkbenchError(
            f"{store.path}: no member has OOF maps of every train image yet; "
            "run `workbench fold-train --config ...` first"
        )
    for member in members:
        store.check_coverage(member, folds.fold_of, folds.hash)
    return members


def study_name(config: ExperimentConfig, context: dict, members: list[str]) -> str:
    """`tune.study` plus a short hash of what the trials depend on (members and their maps, folds,
    search space): a changed zoo starts fresh studies instead of refusing the old ones."""
    text = json.dumps([context, members, config_to_dict(config.tune)], sort_keys=True, default=str)
    return f"{config.tune.study}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def tune_space(config: ExperimentConfig) -> TuneSpace:
    from stacking.tune import TuneSpace

    tune = config.tune
    return TuneSpace(per_angle=tune.per_angle, tune_weights=tune.tune_weights, threshold_range=tune.threshold_range)


def study_context(run: Run, members: list[str]) -> dict:
    """What the tuned blend's trials depend on besides the config: the folds and the members' maps."""
    return {
        "folds_hash": run.folds.hash,
        "generations": {m: run.members_store.metadata(m)["generation"] for m in members},
    }


def tuned_blend(config: ExperimentConfig, members: list[str], context: dict, progress: bool) -> TunedBlend:
    """The run's TunedBlend: its studies are named from what the trials depend on (`context`, the members, the
    config's `tune`), so `workbench tune` and `workbench stack` (any number of processes) share them."""
    import optuna

    from stacking.tuned import TunedBlend

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial would bury the summary
    quiet_optuna_interrupts()
    labels = {"run": str(config.run_dir), "entry": TUNED_ENTRY, "members": ", ".join(members)}
    return TunedBlend(
        storage=storage_url(config),
        study=study_name(config, context, members),
        n_trials=config.tune.n_trials,
        seed=config.tune.seed,
        space=tune_space(config),
        context=context,
        user_attrs=labels,
        progress=progress,
    )


def tune_run(config: ExperimentConfig, progress: bool = True) -> NestedResult:
    """Nested tuning over the run's folds; prints the summary, writes RUN/tune.json, returns the NestedResult."""
    run = Run.open(config)
    run.folds  # noqa: B018 (a folder that is no run is refused before the lock file is made)
    with run_lock(config.run_dir, "tune", shared=True):  # tune processes share studies, never with a stack
        return _tune_run(run, progress)


def _tune_run(run: Run, progress: bool) -> NestedResult:

    from stacking.tuned import nested_tune

    config, folds, store = run.config, run.folds, run.members_store
    members = tune_members(config, store, folds)
    run.check_resolution(members)
    blend = tuned_blend(config, members, study_context(run, members), progress)
    evaluator = run.train_maps(members).evaluator().folded
    result = nested_tune(evaluator, blend, members=members, n_folds=folds.n_folds)
    path = RunPaths(config.run_dir).tune_json
    write_json_atomic(
        path,
        {
            "storage": blend.storage,
            "study": blend.study,
            "members": members,
            **result.to_dict(),
            "honest_per_image": result.honest_per_image,
        },
    )
    print(summary(result, folds, blend.study, blend.storage))
    print(f"wrote {path}")
    return result


def summary(result: NestedResult, folds: Folds, study: str, url: str) -> str:
    """A few lines: baseline, tuned-on and honest mean Dice, the per-fold honest scores and the params."""
    params = result.params
    per_fold = "  ".join(
        f"fold{k} {np.mean([d for img, d in result.honest_per_image.items() if folds.fold_of[img] == k]):.6f}"
        for k in range(folds.n_folds)
    )
    weights = ", ".join(f"{m} {w:.3f}" for m, w in zip(params.members, params.weights))
    thresholds = (
        f"{params.threshold[0]:.4f}"
        if np.all(params.threshold == params.threshold[0])
        else f"{params.threshold.min():.4f}..{params.threshold.max():.4f} by angle"
    )
    return "\n".join(
        [
            f"tuned blend: study {study!r} and {folds.n_folds} outer studies, {params.n_trials} trials in the full one",
            f"  storage {url}",
            f"  baseline (threshold 0.5, equal weights)   {result.baseline:.6f}",
            f"  tuned-on (tuned and scored on all folds) {result.tuned_on:.6f}",
            f"  honest (fold k scored with params tuned without it) {result.honest_mean:.6f}   {per_fold}",
            f"  test-set params: threshold {thresholds}; weights {weights}",
        ]
    )
