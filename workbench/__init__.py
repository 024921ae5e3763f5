"""The workbench CLI, experiment config, run-dir layout and orchestration.

Names are imported from their modules on first use, so `workbench --help` starts fast.
"""
from typing import Any

from carvana.lazy import lazy_attribute

_HOMES = {
    "main": "workbench.cli",
    "ExperimentConfig": "workbench.config",
    "load_config": "workbench.config",
    "Run": "workbench.run",
    "make_folds": "workbench.steps",
    "fold_train": "workbench.fold_train",
    "stack": "workbench.stack",
    "tune_run": "workbench.tune",
    "submit": "workbench.submit",
    "local_score": "workbench.submit",
    "serve_dashboard": "workbench.dashboard",
    "run_demo": "workbench.demo",
}
__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _HOMES, name)
