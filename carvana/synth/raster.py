"""Rasterising planar faces with cv2.fillPoly into an RGB image guarded by an inverse-depth buffer.

A plain painter's algorithm (sort faces by distance, draw far to near) was tried first: large faces
such as the flanks and the wheel-arch linings overlap in ways no single sort order resolves, and
the arch linings painted black over the bodywork at three-quarter angles. So polygons are still
rasterised by cv2.fillPoly (over their bounding box only), but each pixel keeps the nearest face.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def face_planes(
    cam_normals: np.ndarray,
    cam_centroids: np.ndarray,
    inv_depth: np.ndarray,
    starts: np.ndarray,
    focal: float,
    centre: tuple[float, float],
) -> np.ndarray:
    """(F, 5) rows (a, b, c, lo, hi): a face's 1/depth = clip(a*u + b*v + c, lo, hi) at pixel (u, v).

    cam_normals, cam_centroids: (F, 3) in camera coordinates (x right, y up, z depth);
    inv_depth: (V, 3) -> (V,) 1/depth of every mesh point; starts: (F,) first point of each face.
    On a plane n.X = d, a pixel's ray X = z * ((u - cx)/f, -(v - cy)/f, 1) gives 1/z = n.ray / d,
    affine in (u, v). The clip to the face's own range of 1/depth keeps faces seen nearly edge-on
    (d ~ 0, a very steep plane) from winning pixels just outside their outline.
    """
    cx, cy = centre
    d = np.sum(cam_normals * cam_centroids, axis=1)
    d = np.where(np.abs(d) < 1e-9, 1e-9, d)
    n_x, n_y, n_z = cam_normals.T
    a = n_x / (focal * d)
    b = -n_y / (focal * d)
    c = (n_z - n_x * cx / focal + n_y * cy / focal) / d
    lo = np.minimum.reduceat(inv_depth, starts)
    hi = np.maximum.reduceat(inv_depth, starts)
    return np.column_stack([a, b, c, lo, hi])


def face_boxes(fixed: np.ndarray, starts: np.ndarray, size: tuple[int, int], pad: np.ndarray) -> np.ndarray:
    """(F, 4) int pixel boxes (x0, y0, x1, y1), end-exclusive and clipped to the image, of each face.

    fixed: (V, 2) int32 coordinates with 4 fractional bits; pad: (F,) extra pixels (line thickness).
    """
    width, height = size
    lo = np.minimum.reduceat(fixed, starts, axis=0) // 16 - pad[:, None] - 1
    hi = np.maximum.reduceat(fixed, starts, axis=0) // 16 + pad[:, None] + 2
    return np.column_stack(
        [
            np.clip(lo[:, 0], 0, width),
            np.clip(lo[:, 1], 0, height),
            np.clip(hi[:, 0], 0, width),
            np.clip(hi[:, 1], 0, height),
        ]
    )


@dataclass
class Canvas:
    """An (H, W, 3) uint8 RGB image with an (H, W) float32 buffer of 1/depth (0 = empty, larger = nearer).

    A decal passes its parent's plane and wins ties, so it shows exactly where its parent does,
    and in its parent's holes where nothing nearer is drawn.
    """

    image: np.ndarray
    inv_depth: np.ndarray

    def polygon(
        self, contours: list[np.ndarray], box: np.ndarray, plane: np.ndarray, colour: np.ndarray, decal: bool
    ) -> None:
        """Fill (K, 2) fixed-point contours (even-odd: a second contour is a hole)."""
        x0, y0, x1, y1 = (int(v) for v in box)
        if x1 <= x0 or y1 <= y0:
            return
        scratch = np.zeros((y1 - y0, x1 - x0), np.uint8)
        offset = np.array([x0 * 16, y0 * 16], np.int32)
        # Anti-aliased fill thresholded at half coverage samples pixel centres; a LINE_8 fill also
        # takes every pixel an edge touches, which turns edge-on slivers into spikes.
        cv2.fillPoly(scratch, [c - offset for c in contours], 255, cv2.LINE_AA, 4)
        self._write(scratch >= 128, (x0, y0, x1, y1), plane, colour, decal)

    def line(
        self, p: np.ndarray, q: np.ndarray, thickness: int, box: np.ndarray, inv_depth: float, colour: np.ndarray
    ) -> None:
        """A thick segment between fixed-point points p and q at one depth (thin parts are short)."""
        x0, y0, x1, y1 = (int(v) for v in box)
        if x1 <= x0 or y1 <= y0:
            return
        scratch = np.zeros((y1 - y0, x1 - x0), np.uint8)
        offset = np.array([x0 * 16, y0 * 16], np.int32)
        cv2.line(scratch, point(p - offset), point(q - offset), 1, thickness, cv2.LINE_8, 4)
        self._write(scratch > 0, (x0, y0, x1, y1), np.array([0.0, 0.0, inv_depth, inv_depth, inv_depth]), colour, False)

    def _write(
        self, inside: np.ndarray, box: tuple[int, int, int, int], plane: np.ndarray, colour: np.ndarray, decal: bool
    ) -> None:
        x0, y0, x1, y1 = box
        a, b, c, lo, hi = (np.float32(v) for v in plane)
        u = np.arange(x0, x1, dtype=np.float32)[None, :]
        v = np.arange(y0, y1, dtype=np.float32)[:, None]
        inv = np.clip(a * u + (b * v + c), lo, hi)
        zbuf = self.inv_depth[y0:y1, x0:x1]
        win = inside & ((inv >= zbuf) if decal else (inv > zbuf))
        zbuf[win] = inv[win]
        self.image[y0:y1, x0:x1][win] = colour


def point(p: np.ndarray) -> tuple[int, int]:
    """A (2,) int array as the tuple OpenCV's drawing functions want."""
    return int(p[0]), int(p[1])
