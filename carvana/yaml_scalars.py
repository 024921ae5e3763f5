"""Config scalars from YAML: the one rule every config section (the workbench's, the zoo's) reads them by."""

from __future__ import annotations

import dataclasses
from typing import Any

SCALARS: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}


def yaml_scalar(kind: type, value: object, key: str) -> Any:
    """`value` from YAML as `kind` (int, float, str or bool): the one rule for every config section.

    Floats accept ints and numeric strings alike (YAML 1.1 reads `5e-2`, without a dot, as a string); ints
    must be whole numbers, not floats or booleans. TypeError naming `key` otherwise.
    """
    if kind is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"`{key}` must be {kind.__name__}, got {value!r}")
    return value


def check_field_types(obj: Any, where: str) -> None:
    """Validate (and normalise) the int / float / str / bool fields of a frozen dataclass from YAML by
    `yaml_scalar`'s rule; ValueError `where: ...` otherwise."""
    for f in dataclasses.fields(obj):
        kind = SCALARS.get(str(f.type))
        if kind is not None:
            try:
                object.__setattr__(obj, f.name, yaml_scalar(kind, getattr(obj, f.name), f.name))
            except TypeError as error:
                raise ValueError(f"{where}: {error}") from None
