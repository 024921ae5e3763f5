"""Polygon meshes: faces, profile extrusion, decals, and the packed form the renderer projects.

Car coordinates (metres): x rear -> front, y right -> left, z up. A face is a list of 3-D contours
filled together (even-odd, so a second contour is a hole) with outward winding: its Newell normal
points out of the part, which is what back-face culling relies on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Mask layers: SOLID is always car; THIN is car only for annotators who include thin parts;
# FILL is never drawn, it is the wheel disc an annotator who fills spoke gaps covers.
SOLID, THIN, FILL = 0, 1, 2


@dataclass
class Face:
    """One polygon (or a line when `radius` > 0) of a part, in car coordinates."""

    contours: list[np.ndarray]  # each (K, 3) float64; K = 2 for a line
    material: str
    layer: int = SOLID
    parent: int = -1  # index of the face a decal lies on (drawn right after it); -1: sorted by depth
    radius: float = 0.0  # lines only: the part's radius in metres


@dataclass
class Mesh:
    """A growing list of faces; `add` returns the new face's index so decals can name a parent."""

    faces: list[Face] = field(default_factory=list)

    def add(self, contours: list[np.ndarray], material: str, **kw: Any) -> int:
        self.faces.append(Face([np.asarray(c, dtype=np.float64) for c in contours], material, **kw))
        return len(self.faces) - 1

    def line(
        self,
        a: tuple[float, float, float],
        b: tuple[float, float, float],
        radius: float,
        material: str,
        layer: int = THIN,
    ) -> int:
        return self.add([np.array([a, b])], material, layer=layer, radius=radius)


@dataclass(frozen=True)
class PackedMesh:
    """All faces' points in one array, so a view transforms and projects them in one matmul.

    points: (V, 3) float64; normals, centroids: (F, 3) float64 (lines have a zero normal);
    bounds[f]: the (start, stop) rows of each contour of face f (a face's rows are contiguous and
    faces follow each other, so starts: (F,) int64 suits np.ufunc.reduceat); materials: (F,) str;
    layers, parents: (F,) int64; radius: (F,) float64.
    """

    points: np.ndarray
    bounds: list[list[tuple[int, int]]]
    starts: np.ndarray
    normals: np.ndarray
    centroids: np.ndarray
    materials: np.ndarray
    layers: np.ndarray
    parents: np.ndarray
    radius: np.ndarray


def newell_normal(poly: np.ndarray) -> np.ndarray:
    """Unit normal (3,) of a (K, 3) polygon by Newell's method (robust for non-planar polygons)."""
    nxt = np.roll(poly, -1, axis=0)
    n = np.array(
        [
            np.sum((poly[:, 1] - nxt[:, 1]) * (poly[:, 2] + nxt[:, 2])),
            np.sum((poly[:, 2] - nxt[:, 2]) * (poly[:, 0] + nxt[:, 0])),
            np.sum((poly[:, 0] - nxt[:, 0]) * (poly[:, 1] + nxt[:, 1])),
        ]
    )
    norm = np.linalg.norm(n)
    return n / norm if norm > 0 else n


def pack(mesh: Mesh) -> PackedMesh:
    """Freeze a mesh into arrays; a decal takes its parent's normal (it lies on the parent)."""
    points, bounds, normals, centroids = [], [], [], []
    start = 0
    for face in mesh.faces:
        spans = []
        for contour in face.contours:
            points.append(contour)
            spans.append((start, start + len(contour)))
            start += len(contour)
        bounds.append(spans)
        outer = face.contours[0]
        normals.append(np.zeros(3) if face.radius > 0 else newell_normal(outer))
        centroids.append(outer.mean(axis=0))
    normals_arr = np.array(normals)
    parents = np.array([f.parent for f in mesh.faces], dtype=np.int64)
    is_decal = parents >= 0
    normals_arr[is_decal] = normals_arr[parents[is_decal]]
    return PackedMesh(
        points=np.concatenate(points),
        bounds=bounds,
        starts=np.array([b[0][0] for b in bounds]),
        normals=normals_arr,
        centroids=np.array(centroids),
        materials=np.array([f.material for f in mesh.faces]),
        layers=np.array([f.layer for f in mesh.faces]),
        parents=parents,
        radius=np.array([f.radius for f in mesh.faces]),
    )


def lift(profile: np.ndarray, y: float | tuple[float, float]) -> np.ndarray:
    """(K, 2) (x, z) points -> (K, 3) on the plane y = a + b*z (`y` = a, or (a, b))."""
    a, b = y if isinstance(y, tuple) else (y, 0.0)
    return np.column_stack([profile[:, 0], a + b * profile[:, 1], profile[:, 1]])


def extrude(
    mesh: Mesh,
    profile: np.ndarray,
    y_hi: float | tuple[float, float],
    y_lo: float | tuple[float, float],
    edge_materials: list[str],
    cap_material: str,
    **kw: object,
) -> tuple[list[int], int, int]:
    """Extrude a counter-clockwise (x, z) profile (K, 2) between two planes y = a + b*z.

    Edge i joins profile[i] and profile[i+1] and gets edge_materials[i]. Returns the indices of the
    K side quads, the +y cap (on y_hi) and the -y cap (on y_lo).
    """
    hi, lo = lift(profile, y_hi), lift(profile, y_lo)
    quads = []
    for i in range(len(profile)):
        j = (i + 1) % len(profile)
        quads.append(mesh.add([np.array([hi[i], hi[j], lo[j], lo[i]])], edge_materials[i], **kw))
    # A counter-clockwise (x, z) outline seen from +y winds clockwise, so the +y cap is reversed.
    cap_hi = mesh.add([hi[::-1]], cap_material, **kw)
    cap_lo = mesh.add([lo], cap_material, **kw)
    return quads, cap_hi, cap_lo


def sub_quad(quad: np.ndarray, u: tuple[float, float], v: tuple[float, float]) -> np.ndarray:
    """The part of a (4, 3) quad [a, b, c, d] between fractions u (a -> b) and v (a -> d), same winding."""
    a, b, c, d = quad

    def at(uu: float, vv: float) -> np.ndarray:
        return (1 - vv) * ((1 - uu) * a + uu * b) + vv * ((1 - uu) * d + uu * c)

    return np.array([at(u[0], v[0]), at(u[1], v[0]), at(u[1], v[1]), at(u[0], v[1])])


def clip_half_plane(poly: np.ndarray, normal: tuple[float, float], value: float) -> np.ndarray:
    """Sutherland-Hodgman: the part of a (K, 2) polygon where normal . p >= value.

    Correct for concave polygons against one half-plane (it may leave zero-width bridges, which
    fill to nothing).
    """
    if len(poly) == 0:
        return poly
    side = poly @ np.asarray(normal, dtype=np.float64) - value
    out = []
    for i in range(len(poly)):
        j = (i + 1) % len(poly)
        if side[i] >= 0:
            out.append(poly[i])
        if (side[i] >= 0) != (side[j] >= 0):
            out.append(poly[i] + side[i] / (side[i] - side[j]) * (poly[j] - poly[i]))
    return np.array(out).reshape(-1, 2)


def clip_box(
    poly: np.ndarray, x: tuple[float, float] = (-np.inf, np.inf), z: tuple[float, float] = (-np.inf, np.inf)
) -> np.ndarray:
    """The part of a (K, 2) (x, z) polygon inside x[0] <= x <= x[1], z[0] <= z <= z[1]."""
    for axis, (low, high) in ((0, x), (1, z)):
        unit = (1.0, 0.0) if axis == 0 else (0.0, 1.0)
        if np.isfinite(low):
            poly = clip_half_plane(poly, unit, low)
        if np.isfinite(high):
            poly = clip_half_plane(poly, (-unit[0], -unit[1]), -high)
    return poly


def circle(centre: tuple[float, float], radius: float, n: int, start: float = 0.0) -> np.ndarray:
    """(n, 2) counter-clockwise points of a circle in the (x, z) plane."""
    t = start + np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    return np.column_stack([centre[0] + radius * np.cos(t), centre[1] + radius * np.sin(t)])


def arch(x_centre: float, z_centre: float, radius: float, z_cut: float, n: int) -> np.ndarray:
    """(n, 2) points of the arc of a circle above the line z = z_cut, left (rear) to right (front)."""
    t0 = np.arcsin(np.clip((z_cut - z_centre) / radius, -1.0, 1.0))
    t = np.linspace(np.pi - t0, t0, n)
    return np.column_stack([x_centre + radius * np.cos(t), z_centre + radius * np.sin(t)])
