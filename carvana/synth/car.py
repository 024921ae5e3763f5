"""Build a car's mesh from its spec: body, cabin with glass, wheels with spokes, mirrors, thin parts."""

from __future__ import annotations

import numpy as np

from carvana.synth.catalog import CarSpec, Dims
from carvana.synth.geometry import (
    THIN,
    Mesh,
    PackedMesh,
    arch,
    clip_box,
    extrude,
    lift,
    pack,
    sub_quad,
)
from carvana.synth.wheels import (
    N_ARCH,
    TYRE_INSET,
    add_wheel,
    add_wheel_well,
    arch_circle,
    tyre_width,
)


def build_car(spec: CarSpec) -> PackedMesh:
    """The complete mesh of one car, ready to render from any yaw."""
    mesh = Mesh()
    d = spec.dims
    body_quads, edge_tags, pieces = _body(mesh, spec)
    _body_decals(mesh, spec, body_quads, edge_tags, pieces)
    _cabin(mesh, spec)
    _mirrors(mesh, d)
    for x in d.x_wheels:
        for side in (1.0, -1.0):
            add_wheel(mesh, spec, x, side)
            add_wheel_well(mesh, d, x, side)
    _thin_parts(mesh, spec)
    return pack(mesh)


def _body_profile(spec: CarSpec) -> tuple[np.ndarray, list[str]]:
    """The body's side outline (K, 2), counter-clockwise, and a tag per edge (edge i: point i -> i+1)."""
    d = spec.dims
    xr, xf, c = -d.length / 2, d.length / 2, d.clearance
    pts: list[tuple[float, float]] = []
    tags: list[str] = []

    def go(p: tuple[float, float], tag: str) -> None:
        pts.append(p)
        tags.append(tag)

    go((xr + 0.14, c), "bottom")
    for xw in d.x_wheels:
        for p in arch(xw, *arch_circle(d), c, N_ARCH):
            go((float(p[0]), float(p[1])), "arch")
        tags[-1] = "bottom"
    go((xf - 0.16, c), "front_low")
    go((xf - 0.02, c + 0.17), "front")
    go((xf, d.z_nose - 0.09), "nose")
    go((xf - 0.09, d.z_nose), "hood")
    x_mid = xf - 0.09 + 0.45 * (d.x_cowl - xf + 0.09)
    go((x_mid, d.z_nose + 0.62 * (d.z_belt - d.z_nose) + 0.015), "hood")
    go((d.x_cowl, d.z_belt), "belt")
    if spec.body.bed:
        go((d.x_cabin_rear - 0.03, d.z_belt), "bed_wall")
        go((d.x_cabin_rear - 0.10, d.z_belt), "bed")
        go((xr + 0.05, d.z_belt), "tail")
        go((xr, d.z_belt - 0.04), "rear")
    elif d.x_cabin_rear > xr + 0.3:
        go((d.x_cabin_rear, d.z_belt), "deck")
        go((xr + 0.12, d.z_tail), "tail")
        go((xr, d.z_tail - 0.10), "rear")
    else:
        go((d.x_cabin_rear, d.z_belt), "tail")
        go((xr, d.z_belt - 0.08), "rear")
    go((xr, c + 0.16), "rear_low")
    return np.array(pts), tags


def half_width(d: Dims, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Body half-width at (x, z): chamfered plan-view corners and a bevelled shoulder.

    Piecewise affine in x (rear corner, middle, front corner) and z (flank, shoulder), so every
    piece of the flank is a plane.
    """
    (run_f, in_f), (run_r, in_r), (drop, bevel) = d.corner_front, d.corner_rear, d.shoulder
    x, z = np.asarray(x, dtype=np.float64), np.asarray(z, dtype=np.float64)
    front = in_f * np.clip((x - (d.length / 2 - run_f)) / run_f, 0, 1)
    rear = in_r * np.clip((-d.length / 2 + run_r - x) / run_r, 0, 1)
    shoulder = bevel * np.clip((z - (d.z_belt - drop)) / drop, 0, None)
    return d.width / 2 - front - rear - shoulder


def _body_breaks(d: Dims) -> tuple[list[float], list[float]]:
    """x and z where `half_width` changes slope."""
    return [-d.length / 2 + d.corner_rear[0], d.length / 2 - d.corner_front[0]], [d.z_belt - d.shoulder[0]]


def _insert_breaks(profile: np.ndarray, tags: list[str], axis: int, value: float) -> tuple[np.ndarray, list[str]]:
    """Split every edge of a (K, 2) closed outline that crosses profile[:, axis] == value."""
    pts, out_tags = [], []
    for i in range(len(profile)):
        p, q = profile[i], profile[(i + 1) % len(profile)]
        pts.append(p)
        out_tags.append(tags[i])
        if (p[axis] - value) * (q[axis] - value) < 0:
            pts.append(p + (value - p[axis]) / (q[axis] - p[axis]) * (q - p))
            out_tags.append(tags[i])
    return np.array(pts), out_tags


def _lift_body(d: Dims, poly: np.ndarray, side: float) -> np.ndarray:
    return np.column_stack([poly[:, 0], side * half_width(d, poly[:, 0], poly[:, 1]), poly[:, 1]])


def _body(mesh: Mesh, spec: CarSpec) -> tuple[list[int], list[str], list[tuple[int, np.ndarray, float]]]:
    """The body shell. Returns its edge quads, their tags, and the flank pieces as (face, outline, side)."""
    d = spec.dims
    profile, tags = _body_profile(spec)
    x_breaks, z_breaks = _body_breaks(d)
    for axis, values in ((0, x_breaks), (1, z_breaks)):
        for value in values:
            profile, tags = _insert_breaks(profile, tags, axis, value)
    hi, lo = _lift_body(d, profile, 1.0), _lift_body(d, profile, -1.0)
    quads = []
    # The arch lining runs from the flank in to the wheel-well panel only, not across the car.
    lining = (TYRE_INSET + tyre_width(d) + 0.02) / d.width
    for i, tag in enumerate(tags):
        j = (i + 1) % len(profile)
        quad = np.array([hi[i], hi[j], lo[j], lo[i]])
        if tag == "arch":
            mesh.add([sub_quad(quad, (0.0, 1.0), (0.0, lining))], "well")
            quads.append(mesh.add([sub_quad(quad, (0.0, 1.0), (1.0 - lining, 1.0))], "well"))
        else:
            quads.append(mesh.add([quad], "trim" if tag == "bottom" else "paint"))
    pieces = []
    xs, zs = [-np.inf, *x_breaks, np.inf], [-np.inf, *z_breaks, np.inf]
    for x_range in zip(xs[:-1], xs[1:]):
        for z_range in zip(zs[:-1], zs[1:]):
            piece = clip_box(profile, x=x_range, z=z_range)
            if len(piece) < 3:
                continue
            for side in (1.0, -1.0):
                lifted = _lift_body(d, piece, side)
                pieces.append((mesh.add([lifted[::-1] if side > 0 else lifted], "paint"), piece, side))
    return quads, tags, pieces


def _body_decals(
    mesh: Mesh, spec: CarSpec, quads: list[int], tags: list[str], pieces: list[tuple[int, np.ndarray, float]]
) -> None:
    """Lamps, grille, plates, the pickup's bed, the darker lower flank (it mirrors the floor), shut
    lines and door handles."""
    d = spec.dims
    for q, tag in zip(quads, tags):
        quad = mesh.faces[q].contours[0]
        if tag == "front":  # runs bottom -> top across the full width (v: +y -> -y)
            mesh.add([sub_quad(quad, (0.08, 0.38), (0.40, 0.60))], "plate", parent=q)
            mesh.add([sub_quad(quad, (0.45, 0.95), (0.28, 0.72))], "grille", parent=q)
            for v in ((0.03, 0.22), (0.78, 0.97)):
                mesh.add([sub_quad(quad, (0.62, 1.0), v)], "headlight", parent=q)
        elif tag == "rear":  # runs top -> bottom
            for v in ((0.02, 0.22), (0.78, 0.98)):
                mesh.add([sub_quad(quad, (0.0, 0.40), v)], "taillight", parent=q)
            mesh.add([sub_quad(quad, (0.45, 0.85), (0.40, 0.60))], "plate", parent=q)
        elif tag == "bed":
            mesh.add([sub_quad(quad, (0.0, 0.97), (0.05, 0.95))], "bed", parent=q)
    z_centre, radius = arch_circle(d)
    z_low = min(z_centre + radius + 0.04, d.z_belt - d.shoulder[0] - 0.03)
    edges = _door_edges(spec)
    for face, piece, side in pieces:
        _flank_decal(mesh, d, face, piece, side, (-np.inf, np.inf), (-np.inf, z_low), "paint_low")
        for x in edges:
            _flank_decal(mesh, d, face, piece, side, (x - 0.008, x + 0.008), (d.clearance + 0.06, d.z_belt), "seam")
        for x in edges[1:]:  # a handle ahead of each door's rear shut line
            _flank_decal(mesh, d, face, piece, side, (x - 0.22, x - 0.08), (d.z_belt - 0.10, d.z_belt - 0.07), "handle")


def _flank_decal(
    mesh: Mesh,
    d: Dims,
    face: int,
    piece: np.ndarray,
    side: float,
    x: tuple[float, float],
    z: tuple[float, float],
    material: str,
) -> None:
    """The part of the box x, z that lies on one flank piece, as a decal of that piece."""
    part = clip_box(piece, x=x, z=z)
    if len(part) >= 3:
        lifted = _lift_body(d, part, side)
        mesh.add([lifted[::-1] if side > 0 else lifted], material, parent=face)


def _cabin_profile(d: Dims) -> np.ndarray:
    """(6, 2) counter-clockwise (x, z) outline of the greenhouse: floor, windshield, roof, rear window."""
    z_roof = d.height
    return np.array(
        [
            (d.x_cabin_rear, d.z_belt),
            (d.x_cowl, d.z_belt),
            (d.x_roof_front, z_roof - 0.04),
            (d.x_roof_front - 0.12, z_roof),
            (d.x_roof_rear + 0.10, z_roof),
            (d.x_roof_rear, z_roof - 0.03),
        ]
    )


def _cabin(mesh: Mesh, spec: CarSpec) -> None:
    """Greenhouse: a tapered extrusion; windshield and rear window are glass insets, side windows decals."""
    d = spec.dims
    z_roof = d.height
    profile = _cabin_profile(d)
    tags = ["floor", "windshield", "roof", "roof", "roof", "backlight"]
    half_belt, half_roof = d.width / 2 - d.shoulder[1] - 0.01, d.width / 2 * 0.80
    slope = (half_roof - half_belt) / (z_roof - d.z_belt)
    y_hi = (half_belt - slope * d.z_belt, slope)
    y_lo = (-y_hi[0], -slope)
    quads, cap_hi, cap_lo = extrude(mesh, profile, y_hi, y_lo, ["paint"] * len(profile), "paint")
    for q, tag in zip(quads, tags):
        quad = mesh.faces[q].contours[0]
        if tag == "windshield":
            mesh.add([sub_quad(quad, (0.04, 0.96), (0.06, 0.94))], "glass", parent=q)
        elif tag == "backlight":
            low = 0.45 if spec.body.name in ("suv", "van", "wagon", "hatchback") else 0.04
            low = 0.55 if spec.body.bed else low
            mesh.add([sub_quad(quad, (0.06, 0.96 - low), (0.08, 0.92))], "glass", parent=q)
    for window in _side_windows(spec):
        mesh.add([lift(window, (y_hi[0] + 1e-3, y_hi[1]))[::-1]], "glass", parent=cap_hi)
        mesh.add([lift(window, (y_lo[0] - 1e-3, y_lo[1]))], "glass", parent=cap_lo)


def _window_layout(spec: CarSpec) -> tuple[np.ndarray, np.ndarray]:
    """The glass area on a flank as a (4, 2) (x, z) outline, and the n + 1 ascending x where the
    n side windows start and end (pillars sit on the inner cuts)."""
    d = spec.dims
    profile = _cabin_profile(d)
    z_lo, z_hi = d.z_belt + 0.035, d.height - 0.06
    a_pillar = 0.09
    c_pillar = {"hatchback": 0.22, "coupe": 0.16, "sedan": 0.13}.get(spec.body.name, 0.09)

    def along(p: np.ndarray, q: np.ndarray, z: float) -> float:
        return float(p[0] + (q[0] - p[0]) * (z - p[1]) / (q[1] - p[1]))

    xa = [along(profile[1], profile[2], z) - a_pillar for z in (z_lo, z_hi)]
    xc = [along(profile[0], profile[5], z) + c_pillar for z in (z_lo, z_hi)]
    glass = np.array([(xc[0], z_lo), (xa[0], z_lo), (xa[1], z_hi), (xc[1], z_hi)])
    n = spec.body.n_side_windows
    x_lo, x_hi = min(xc), max(xa)
    shares = np.array([0.0, 0.22, 0.58, 1.0]) if n == 3 else np.linspace(0.0, 1.0, n + 1)  # short last window
    return glass, x_lo + (x_hi - x_lo) * shares


def _side_windows(spec: CarSpec) -> list[np.ndarray]:
    """(K, 2) (x, z) outlines of the side windows: the glass area split by pillars."""
    glass, cuts = _window_layout(spec)
    b_pillar = 0.08
    n = len(cuts) - 1
    windows = []
    for i in range(n):
        lo = cuts[i] + (b_pillar / 2 if i > 0 else 0.0)
        hi = cuts[i + 1] - (b_pillar / 2 if i < n - 1 else 0.0)
        window = clip_box(glass, x=(lo, hi))
        if len(window) >= 3:
            windows.append(window)
    return windows


def _door_edges(spec: CarSpec) -> list[float]:
    """x of the door shut lines: behind the front wheel, at the inner pillars, and behind the last door."""
    _, cuts = _window_layout(spec)
    edges = {spec.dims.x_cowl + 0.03, *cuts[1:-1]}
    if len(cuts) <= 3:
        edges.add(cuts[0] + 0.05)
    return sorted(edges)


def _mirrors(mesh: Mesh, d: Dims) -> None:
    x0 = d.x_cowl - 0.08
    profile = np.array(
        [
            (x0 - 0.20, d.z_belt + 0.03),
            (x0, d.z_belt + 0.05),
            (x0 - 0.02, d.z_belt + 0.17),
            (x0 - 0.19, d.z_belt + 0.15),
        ]
    )
    half = d.width / 2
    for side in (1.0, -1.0):
        inner, outer = side * (half - 0.06), side * (half + 0.17)
        extrude(mesh, profile, max(inner, outer), min(inner, outer), ["paint"] * 4, "paint")


def _thin_parts(mesh: Mesh, spec: CarSpec) -> None:
    """Whip antenna, roof rails and rear spoiler: the parts annotators disagree about."""
    d = spec.dims
    z_roof = d.height
    if spec.antenna:
        x0 = d.x_roof_rear + 0.2
        mesh.line((x0, 0.0, z_roof - 0.01), (x0 - 0.22, 0.0, z_roof + 0.55), 0.004, "antenna")
    if spec.roof_rails:
        y = d.width / 2 * 0.80 - 0.12
        xa, xb = d.x_roof_front - 0.10, d.x_roof_rear + 0.12
        for s in (1.0, -1.0):
            mesh.line((xa, s * y, z_roof + 0.07), (xb, s * y, z_roof + 0.07), 0.016, "rail")
            for xp in (xa + 0.05, xb - 0.05):
                mesh.line((xp, s * y, z_roof), (xp, s * y, z_roof + 0.07), 0.014, "rail")
    if spec.spoiler:
        xr = -d.length / 2
        if d.x_cabin_rear > xr + 0.3:  # boot-lid wing on two posts
            z, x0, x1 = d.z_tail + 0.07, xr + 0.06, xr + 0.26
        else:  # roof spoiler over the hatch
            z, x0, x1 = z_roof - 0.02, d.x_roof_rear - 0.22, d.x_roof_rear + 0.02
        wing = np.array([(x0, z), (x1, z + 0.005), (x1 - 0.02, z + 0.035), (x0, z + 0.03)])
        half = d.width / 2 - 0.10
        extrude(mesh, wing, half, -half, ["paint"] * 4, "paint", layer=THIN)
        if z < z_roof - 0.05:
            for s in (1.0, -1.0):
                y = s * (half - 0.3)
                mesh.line((x0 + 0.10, y, d.z_tail - 0.01), (x0 + 0.08, y, z), 0.015, "trim")
