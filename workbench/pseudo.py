"""`workbench pseudo-label`: every fold of every pseudo-label set of the config (`zoo.pseudo`), one job per
set x fold on the compute engine; sets already current (same source models, folds and settings) are skipped,
so a killed run resumes where it stopped.

The flow of a pseudo-label round: `workbench fold-train` (round one; members that train on a set not made
yet wait), `workbench pseudo-label`, `workbench fold-train` again (the pseudo-labelled members).
"""

from __future__ import annotations

import contextlib
import time

from carvana.errors import WorkbenchError
from workbench.compute import make_engine
from workbench.config import ExperimentConfig
from workbench.fold_train import report_outcome, resolve_compute
from workbench.jobs import PSEUDO, Job, run_job
from workbench.run import Run
from workbench.runlock import run_lock
from zoo.pseudo import set_current

__all__ = ["pseudo_label"]


def pseudo_label(config: ExperimentConfig, progress: bool = True) -> None:
    """Make every fold of every set in `config.pseudo` that is not current."""
    if not config.pseudo:
        raise WorkbenchError(
            "the config has no `pseudo:` section; add a set (source members, photos; see configs/smoke_pseudo.yaml)"
        )
    run = Run.open(config)
    folds, specs = run.folds, {spec.name: spec for spec in config.zoo}
    start = time.time()
    engine = make_engine(config.compute, run_job)
    failures = []
    with contextlib.ExitStack() as held:
        # shared, like fold-train: not beside a `--retrain` (which replaces the source models) or a `stack`
        held.enter_context(run_lock(config.run_dir, "pseudo-label", shared=True))
        held.callback(engine.close)
        resolved = resolve_compute(config, engine)
        compute = resolved.compute
        for cfg in config.pseudo:
            for k in range(folds.n_folds):
                if set_current(cfg, k, config.run_dir, folds, specs):
                    print(f"{cfg.name}/fold{k}: current, skipped")
                    continue
                engine.submit(
                    Job(resolved, PSEUDO, cfg.name, k, 1, progress, run.checked),
                    compute.gpus_per_job or 0,
                    compute.cpus_per_job or 1,
                )
        while engine.pending():
            outcome = engine.wait()
            if report_outcome(outcome):
                failures.append(str(outcome.job))
    if failures:
        raise WorkbenchError(
            f"{len(failures)} pseudo-label job(s) failed ({', '.join(failures)}); the others finished: "
            "fix the cause and re-run the same command (current folds are skipped)"
        )
    for cfg in config.pseudo:
        if cfg.leaky:
            print(
                f"WARNING: pseudo-label set {cfg.name} is leaky (labels from models that saw every fold): the OOF "
                "scores of members trained on it are optimistic; it exists to measure that, not to submit"
            )
    print(f"pseudo-labels took {time.time() - start:.0f} s")
