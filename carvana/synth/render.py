"""Render one car at one angle: shaded polygons behind a depth buffer, plus the true coverage layers.

Faces facing away from the camera are culled; the rest are drawn far to near (by centroid distance),
each followed by its decals, into a `raster.Canvas` whose depth test settles what the sort cannot.
Colours are flat per face: Lambert from the studio lights, Blinn-Phong specular, and a reflection
of the bright studio (floor below the horizon) with a Fresnel boost. The car is drawn without
anti-aliasing onto a copy of the studio, then blended in through an anti-aliased coverage map,
which avoids light seams between neighbouring faces.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from carvana.synth.camera import (
    AMBIENT,
    LIGHT_DIRS,
    LIGHT_POWER,
    Camera,
    to_fixed,
    yaw_matrix,
)
from carvana.synth.car import TYRE_INSET
from carvana.synth.catalog import CarSpec
from carvana.synth.geometry import FILL, SOLID, THIN, PackedMesh
from carvana.synth.raster import Canvas, face_boxes, face_planes, point
from carvana.synth.studio import apply_gain, finish, shadow_gain, studio_background


@dataclass(frozen=True)
class Material:
    """colour: RGB, or None for the car's paint; reflect: share of studio reflection; spec: highlight."""

    colour: tuple[int, int, int] | None
    reflect: float
    spec: float
    shine: float = 30.0
    tone: float = 1.0  # multiplies the colour (the paint's lower flank is a little darker)


MATERIALS: dict[str, Material] = {
    "paint": Material(None, 0.16, 0.55, 40.0),
    "paint_low": Material(None, 0.12, 0.4, 40.0, tone=0.9),
    "seam": Material(None, 0.06, 0.1, tone=0.7),
    "handle": Material(None, 0.3, 0.8, 50.0, tone=0.8),
    "glass": Material((30, 36, 46), 0.28, 0.9, 80.0),
    "tyre": Material((30, 30, 32), 0.02, 0.05),
    "rim": Material(None, 0.25, 0.6, 30.0),
    "hub": Material(None, 0.15, 0.3, 20.0, tone=0.65),
    "trim": Material((36, 36, 39), 0.05, 0.15),
    "grille": Material((28, 29, 32), 0.05, 0.2),
    "headlight": Material((205, 210, 218), 0.35, 0.9, 60.0),
    "taillight": Material((150, 22, 26), 0.2, 0.7, 50.0),
    "plate": Material((226, 226, 220), 0.05, 0.2),
    "well": Material((20, 20, 22), 0.0, 0.0),
    "bed": Material((48, 48, 52), 0.02, 0.05),
    "antenna": Material((22, 22, 24), 0.1, 0.3),
    "rail": Material((45, 45, 50), 0.15, 0.5),
    "none": Material((0, 0, 0), 0.0, 0.0),
}


@dataclass(frozen=True)
class Layers:
    """Boolean (H, W) coverage of the car's solid parts, thin parts and full wheel discs."""

    solid: np.ndarray
    thin: np.ndarray
    wheel_discs: np.ndarray


def base_colours(packed: PackedMesh, spec: CarSpec) -> np.ndarray:
    """(F, 3) float64 unshaded colour of every face (paint and rims come from the spec)."""
    out = np.empty((len(packed.materials), 3))
    for name in np.unique(packed.materials):
        m = MATERIALS[name]
        colour = m.colour if m.colour is not None else spec.rim if name in ("rim", "hub") else spec.paint
        out[packed.materials == name] = np.array(colour, dtype=np.float64) * m.tone
    return out


def shade(packed: PackedMesh, spec: CarSpec, normals: np.ndarray, to_eye: np.ndarray) -> np.ndarray:
    """(F, 3) float64 shaded colours from world normals (F, 3) and unit vectors to the camera (F, 3)."""
    reflect = np.array([MATERIALS[m].reflect for m in packed.materials])
    spec_k = np.array([MATERIALS[m].spec for m in packed.materials])
    shine = np.array([MATERIALS[m].shine for m in packed.materials])
    n_dot_l = normals @ LIGHT_DIRS.T  # (F, lights)
    diffuse = AMBIENT + np.clip(n_dot_l, 0, None) @ LIGHT_POWER
    halves = LIGHT_DIRS[None, :, :] + to_eye[:, None, :]
    halves /= np.linalg.norm(halves, axis=2, keepdims=True)
    n_dot_h = np.clip(np.einsum("fd,fld->fl", normals, halves), 0, None)
    specular = (n_dot_h ** shine[:, None]) @ LIGHT_POWER * spec_k
    n_dot_v = np.clip(np.sum(normals * to_eye, axis=1), 0, 1)
    mirrored = 2 * n_dot_v[:, None] * normals - to_eye
    # The studio seen in the paint: white wall and softbox above the horizon, greyer floor below.
    env = 0.66 + 0.30 * np.clip((mirrored[:, 2] + 0.12) / 0.25, 0, 1) + 0.06 * (mirrored[:, 2] > 0.6)
    fresnel = reflect + (1 - reflect) * 0.5 * (1 - n_dot_v) ** 4 * (reflect > 0)
    base = base_colours(packed, spec)
    colour = base * diffuse[:, None] * (1 - fresnel[:, None]) + 255 * (fresnel * env + specular)[:, None]
    return np.clip(colour, 0, 255)


def draw_order(packed: PackedMesh, visible: np.ndarray, distance: np.ndarray) -> list[int]:
    """Face indices far to near; each visible primary face is followed by its decals in build order."""
    primary = np.flatnonzero((packed.parents < 0) & visible)
    decals: dict[int, list[int]] = {}
    for f in np.flatnonzero(packed.parents >= 0):
        decals.setdefault(int(packed.parents[f]), []).append(int(f))
    order = []
    for f in primary[np.argsort(-distance[primary], kind="stable")]:
        order.append(int(f))
        order.extend(decals.get(int(f), []))
    return order


def render_view(
    packed: PackedMesh, spec: CarSpec, angle: int, size: tuple[int, int], rng: np.random.Generator, zoom: float = 1.0
) -> tuple[np.ndarray, Layers]:
    """Photograph one car at angle 1..16 (camera `zoom`): an (H, W, 3) uint8 RGB image and its coverage layers."""
    camera = Camera(size, zoom)
    rot = yaw_matrix(angle)
    cam_points = camera.to_camera((packed.points + spec.offset) @ rot.T)
    uv = camera.image_coords(cam_points)
    fixed = to_fixed(uv)
    normals, centroids = packed.normals @ rot.T, (packed.centroids + spec.offset) @ rot.T
    to_eye = camera.position - centroids
    distance = np.linalg.norm(to_eye, axis=1)
    to_eye /= distance[:, None]
    visible = (np.sum(normals * to_eye, axis=1) > 1e-6) | (packed.radius > 0)
    visible = np.where(packed.parents >= 0, visible[np.maximum(packed.parents, 0)], visible)
    colours = shade(packed, spec, normals, to_eye).round().astype(np.uint8)
    basis = camera.basis()
    inv_depth = 1.0 / cam_points[:, 2]
    planes = face_planes(
        normals @ basis.T,
        camera.to_camera(centroids),
        inv_depth,
        packed.starts,
        camera.focal,
        (size[0] / 2, size[1] / 2),
    )
    # Lines (thin parts) get their projected width, at least 1 px; polygons get 0 (no box padding).
    nearest = np.maximum.reduceat(inv_depth, packed.starts)
    thickness = np.maximum(1, np.round(2 * packed.radius * camera.focal * nearest)).astype(np.int64)
    thickness *= packed.radius > 0
    boxes = face_boxes(fixed, packed.starts, size, thickness)

    background = apply_gain(studio_background(size, zoom), _shadow(camera, spec, rot))
    canvas = Canvas(background.copy(), np.zeros(size[::-1], np.float32))
    solid, thin, discs = (np.zeros(size[::-1], np.uint8) for _ in range(3))
    for f in draw_order(packed, visible, distance):
        contours = [fixed[a:b] for a, b in packed.bounds[f]]
        layer = packed.layers[f]
        if layer == FILL:
            cv2.fillPoly(discs, contours, 1, cv2.LINE_8, 4)
        elif packed.radius[f] > 0:
            p, q = contours[0][0], contours[0][-1]
            canvas.line(p, q, int(thickness[f]), boxes[f], float(planes[f, 4]), colours[f])
            cv2.line(thin if layer == THIN else solid, point(p), point(q), 255, int(thickness[f]), cv2.LINE_8, 4)
        else:
            owner = packed.parents[f] if packed.parents[f] >= 0 else f
            canvas.polygon(contours, boxes[f], planes[owner], colours[f], decal=owner != f)
            aa = cv2.LINE_AA if layer == SOLID else cv2.LINE_8
            cv2.fillPoly(solid if layer == SOLID else thin, contours, 255, aa, 4)
    image = _blend(background, canvas.image, np.maximum(solid, thin))
    return finish(image, rng), Layers(solid >= 128, thin > 0, discs > 0)


def _blend(background: np.ndarray, car: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """background * (1 - alpha/255) + car * alpha/255, computed only inside the car's bounding box."""
    rows, cols = np.nonzero(alpha)
    out = background.copy()
    if rows.size == 0:
        return out
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    w = alpha[r0:r1, c0:c1].astype(np.float32) / 255
    out[r0:r1, c0:c1] = cv2.blendLinear(car[r0:r1, c0:c1], background[r0:r1, c0:c1], w, 1 - w)
    return out


def _shadow(camera: Camera, spec: CarSpec, rot: np.ndarray) -> np.ndarray:
    """(H, W) float32 floor gain: a soft shadow under the body and darker patches under the tyres."""
    d = spec.dims
    hl, hw = d.length / 2 + 0.05, d.width / 2 + 0.02
    footprint = (np.array([[-hl, -hw, 0], [hl, -hw, 0], [hl, hw, 0], [-hl, hw, 0]]) + spec.offset) @ rot.T
    contacts = []
    y_tyre = d.width / 2 - TYRE_INSET - 0.31 * d.wheel_radius
    for x in d.x_wheels:
        for s in (1.0, -1.0):
            cx, cy, ex, ey = x, s * y_tyre, 0.45 * d.wheel_radius, 0.45 * d.wheel_radius
            patch = [[cx - ex, cy - ey, 0], [cx + ex, cy - ey, 0], [cx + ex, cy + ey, 0], [cx - ex, cy + ey, 0]]
            contacts.append((np.array(patch) + spec.offset) @ rot.T)
    return shadow_gain(camera, footprint, contacts)
