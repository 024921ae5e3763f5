"""Wheels: hollow tyres with spoked rims, and the dark lining of the wheel arches."""

from __future__ import annotations

import numpy as np

from carvana.synth.catalog import CarSpec, Dims
from carvana.synth.geometry import FILL, Mesh, arch, circle, clip_box, extrude, lift

N_ARCH = 9  # points per wheel arch
N_WHEEL = 28  # points per tyre circle
TYRE_INSET = 0.03  # tyre face inside the body side (m)


def tyre_width(d: Dims) -> float:
    """Tread width (m)."""
    return 0.62 * d.wheel_radius


def arch_circle(d: Dims) -> tuple[float, float]:
    """(z of the centre, radius) of the wheel arches: a gap above the tyre, little at its sides."""
    return d.wheel_radius + 0.03, d.wheel_radius + 0.05


def add_wheel(mesh: Mesh, spec: CarSpec, x: float, side: float) -> None:
    """A tyre (tread and two sidewall rings) with a spoked rim on its outer side.

    The wheel is hollow: the inner side is only the tyre's ring, so the gaps between the spokes
    show whatever is behind the wheel (the arch lining above the sill, the floor below it).
    """
    d = spec.dims
    r = d.wheel_radius
    centre = (x, r)
    outer_y = side * (d.width / 2 - TYRE_INSET)
    inner_y = outer_y - side * tyre_width(d)
    y_hi, y_lo = max(outer_y, inner_y), min(outer_y, inner_y)
    _, cap_hi, cap_lo = extrude(mesh, circle(centre, r, N_WHEEL), y_hi, y_lo, ["tyre"] * N_WHEEL, "tyre")
    r_rim = 0.66 * r
    for cap, y in ((cap_hi, y_hi + 1e-3), (cap_lo, y_lo - 1e-3)):
        flip = (lambda p: p[::-1]) if cap == cap_hi else (lambda p: p)
        outline = mesh.faces[cap].contours[0]
        mesh.faces[cap].contours.append(lift(circle(centre, r_rim, N_WHEEL), y))  # a hole: the rim's place
        mesh.add([outline], "none", layer=FILL, parent=cap)
        if y * side < abs(outer_y):  # the inner side: no rim
            continue
        rim = [flip(lift(circle(centre, r_rim, N_WHEEL), y)), lift(circle(centre, 0.88 * r_rim, N_WHEEL), y)]
        mesh.add(rim, "rim", parent=cap)
        for spoke in _spokes(centre, 0.2 * r_rim, 0.9 * r_rim, spec.n_spokes, spec.spoke_fill):
            mesh.add([flip(lift(spoke, y))], "rim", parent=cap)
        mesh.add([flip(lift(circle(centre, 0.24 * r_rim, 12), y))], "hub", parent=cap)


def _spokes(centre: tuple[float, float], r_in: float, r_out: float, n: int, fill: float) -> list[np.ndarray]:
    """n (4, 2) spoke quads from r_in to r_out covering `fill` of the annulus, tapering outward."""
    pitch = 2 * np.pi / n
    spokes = []
    for k in range(n):
        t = np.pi / 2 + k * pitch
        w_in, w_out = 0.5 * pitch * min(1.0, fill * 1.6), 0.5 * pitch * fill
        ang = np.array([t - w_in, t - w_out, t + w_out, t + w_in])
        rad = np.array([r_in, r_out * 1.03, r_out * 1.03, r_in])
        spokes.append(np.column_stack([centre[0] + rad * np.cos(ang), centre[1] + rad * np.sin(ang)]))
    return spokes


def add_wheel_well(mesh: Mesh, d: Dims, x: float, side: float) -> None:
    """A dark lining behind the tyre's upper half, so the arch is not a tunnel through the car.

    Below the axle it is left open: through the lower spoke gaps one sees under the car.
    """
    outline = clip_box(arch(x, *arch_circle(d), d.clearance, N_ARCH)[::-1], z=(d.wheel_radius, np.inf))
    y = side * (d.width / 2 - TYRE_INSET - tyre_width(d) - 0.02)
    poly = lift(outline, y)
    mesh.add([poly if side < 0 else poly[::-1]], "well")
