"""Lazy package attributes (PEP 562): a package declares its public names in `__all__` and imports each
from its home module on first use, so importing a light module of a package (`zoo.spec`) does not
load the package's frameworks (PyTorch, TensorFlow, Optuna).

    _EXPORTS = {"zoo.registry": ["MEMBERS", "resolve_members"], ...}
    __all__ = public_names(_EXPORTS)
    __getattr__ = lazy_getattr(__name__, _EXPORTS)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_getattr", "public_names"]


def public_names(exports: Mapping[str, Sequence[str]]) -> list[str]:
    """Every name of `exports` ({home module: [names]}), in order."""
    return [name for names in exports.values() for name in names]


def lazy_getattr(package: str, exports: Mapping[str, Sequence[str]]) -> Callable[[str], Any]:
    """A module `__getattr__` that imports `name` from its home module; AttributeError for other names."""
    homes = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(homes[name]), name)

    return __getattr__
