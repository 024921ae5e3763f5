"""Studio variants: differently generated datasets, so that a default is never tuned to one of them.

A competitor's data differs from ours in ways that change which ensemble wins: how much of the
frame the car fills, how close its paint is to the background, how carefully the masks were
drawn. Each `Variant` moves one of those dials away from the default studio; the robustness bench
(`make bench-robust`) runs the whole pipeline on several of them and reports the spread.

The default variant draws exactly what the studio drew before variants existed (same random
stream, same files), so seeds stay reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from carvana.errors import WorkbenchError
from carvana.synth.catalog import (
    JITTER_PX_AT_FULL_SIZE,
    P_BOUNDARY_JITTER,
    P_FILL_SPOKE_GAPS,
    P_INCLUDE_THIN_PARTS,
    PAINTS,
    PLACEMENT_X_M,
    PLACEMENT_Y_M,
)


@dataclass(frozen=True)
class Variant:
    """One way of generating the studio. Shares are relative weights; lengths in metres."""

    name: str
    about: str
    paint_shares: dict[str, float] = field(default_factory=lambda: {n: p[0] for n, p in PAINTS.items()})
    p_include_thin_parts: float = P_INCLUDE_THIN_PARTS
    p_fill_spoke_gaps: float = P_FILL_SPOKE_GAPS
    p_boundary_jitter: float = P_BOUNDARY_JITTER
    jitter_px: tuple[float, float] = JITTER_PX_AT_FULL_SIZE  # wobble scale at 1918 px width
    zoom: float = 1.0  # focal length relative to the default camera: < 1 makes cars smaller in the frame
    placement_x_m: tuple[float, float] = PLACEMENT_X_M  # where the car stands on the turntable
    placement_y_m: tuple[float, float] = PLACEMENT_Y_M

    def __post_init__(self) -> None:
        unknown = set(self.paint_shares) - set(PAINTS)
        if unknown or not self.paint_shares or min(self.paint_shares.values()) < 0:
            raise ValueError(f"variant {self.name}: paint shares must be >= 0 over {sorted(PAINTS)}")
        if not 0.3 <= self.zoom <= 2.0:
            raise ValueError(f"variant {self.name}: zoom {self.zoom} is outside 0.3..2.0")


def _shares(**overrides: float) -> dict[str, float]:
    """Paint shares summing to 1: the colours named get these shares, the rest keep their default proportions."""
    rest = {name: share for name, (share, _) in PAINTS.items() if name not in overrides}
    scale = (1.0 - sum(overrides.values())) / sum(rest.values())
    return {name: overrides.get(name, rest.get(name, 0.0) * scale) for name in PAINTS}


VARIANTS: dict[str, Variant] = {}
for _variant in [
    Variant("default", "the studio as documented in carvana.synth: cars fill ~75% of the frame, 44% white/silver"),
    Variant(
        "small-cars",
        "a wider lens and cars parked further off the turntable's centre: cars fill ~50% of "
        "the frame and drift more between angles",
        zoom=0.68,
        placement_x_m=(-0.9, 0.9),
        placement_y_m=(-0.6, 0.6),
    ),
    Variant(
        "pale-fleet",
        "three cars in four white or silver, close to the studio background",
        paint_shares=_shares(white=0.45, silver=0.30),
    ),
    Variant(
        "sloppy-annotators",
        "masks drawn less carefully: thin parts mostly left out, spoke gaps mostly "
        "filled, most outlines wobbling by 2-5 px",
        p_include_thin_parts=0.25,
        p_fill_spoke_gaps=0.8,
        p_boundary_jitter=0.7,
        jitter_px=(2.0, 5.0),
    ),
    Variant(
        "dark-fleet",
        "mostly black, grey and dark blue cars: strong contrast, dark wheels and glass merge with the body",
        paint_shares=_shares(white=0.05, silver=0.05, black=0.35, grey=0.25, dark_blue=0.15),
    ),
    Variant("close-up", "a longer lens: cars fill the frame and their ends leave it at side views", zoom=1.3),
]:
    if _variant.name in VARIANTS:
        raise ValueError(f"duplicate studio variant {_variant.name}")
    VARIANTS[_variant.name] = _variant
DEFAULT = VARIANTS["default"]


def get_variant(name: str) -> Variant:
    """The variant called `name`; a user error listing the valid names otherwise."""
    if name not in VARIANTS:
        raise WorkbenchError(f"unknown studio variant {name!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[name]
