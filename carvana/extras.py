"""Optional dependency groups: the core install (`pip install carvana-workbench`) stacks, tunes, submits, blends,
scores and serves the dashboard; training members and the CNN stacker need the frameworks' extras (pyproject.toml).
A feature whose extra is missing fails with one line that names the extra to install, not a traceback."""

from __future__ import annotations

import importlib.util

from carvana.errors import WorkbenchError

__all__ = ["PROJECT", "require_extra"]

PROJECT = "carvana-workbench"  # the distribution name in pyproject.toml


def require_extra(module: str, extra: str, needed_for: str) -> None:
    """WorkbenchError when `module` (a top-level name, e.g. "torch") is not installed: `needed_for` (a config key
    or a verb) needs the project's `extra`. Nothing is imported, so the check costs no framework start-up."""
    if importlib.util.find_spec(module) is None:
        raise WorkbenchError(
            f"{needed_for} needs {module}, which this install lacks (the core install leaves it out): "
            f"pip install '{PROJECT}[{extra}]' (or `make setup`, which installs every extra)"
        )
