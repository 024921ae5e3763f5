"""The workbench CLI, experiment config, run-dir layout and orchestration.

Names are imported from their modules on first use, so `workbench --help` starts fast.
"""

from carvana.lazy import lazy_getattr, public_names

_EXPORTS = {
    "workbench.cli": ["main"],
    "workbench.config": ["ExperimentConfig", "load_config"],
    "workbench.run": ["Run"],
    "workbench.steps": ["make_folds", "export_folds"],
    "workbench.imports": ["import_member", "open_member"],
    "workbench.fold_train": ["fold_train"],
    "workbench.stack": ["stack"],
    "workbench.tune": ["tune_run"],
    "workbench.submit": ["submit", "local_score"],
    "workbench.dashboard": ["serve_dashboard"],
    "workbench.demo": ["run_demo"],
}
__all__ = public_names(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
