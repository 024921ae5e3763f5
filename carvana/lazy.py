"""Lazy package attributes (PEP 562): a package declares its public names in `__all__` and imports each
from its home module on first use, so importing a light module of a package (`zoo.spec`) does not
load the package's frameworks (PyTorch, TensorFlow, Optuna).
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

__all__ = ["lazy_attribute"]


def lazy_attribute(package: str, homes: Mapping[str, str], name: str) -> Any:
    """`homes[name]`'s attribute `name` (for a package's `__getattr__`); AttributeError for other names."""
    home = homes.get(name)
    if home is None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
