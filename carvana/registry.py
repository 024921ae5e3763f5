"""The house rule for registries, in one place: a plain dict built from a list of things with a `name`, where
a duplicate name fails at import (an unknown name is refused by each registry's maker, listing the valid ones)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

__all__ = ["by_name"]

T = TypeVar("T")


def by_name(items: Iterable[T], what: str) -> dict[str, T]:
    """{item.name: item} in order; ValueError naming `what` (e.g. "blender") when two items share a name."""
    registry: dict[str, T] = {}
    for item in items:
        name = item.name  # type: ignore[attr-defined]  # every registered thing has a name
        if name in registry:
            raise ValueError(f"duplicate {what} name {name!r}")
        registry[name] = item
    return registry
