"""The studio's fixed camera and turntable: yaw per angle, world -> image projection, lights.

World coordinates (metres): X to the image's right, Y away from the camera, Z up; the turntable is
centred at the origin. Angle 01 shows the car's front; each next angle turns it 22.5 degrees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from carvana.dataset import N_ANGLES

CAMERA_DISTANCE = 9.0  # m from the turntable's centre
CAMERA_HEIGHT = 1.55  # m: a slight elevation, the roof is just visible
TARGET_HEIGHT = 0.95  # m: the point projected to the image centre (car sits a little below centre)
FOCAL_PER_WIDTH = 1.35  # focal length in units of the image width: a 4.7 m car's side fills ~75%, as at Carvana
WALL_DISTANCE = 7.0  # m behind the turntable: where wall meets floor (the horizon line)

# Studio lights: unit directions toward each light, and their strengths. An overhead softbox
# dominates, which is why roofs and bonnets come out bright.
LIGHT_DIRS = np.array([[0.0, -0.25, 1.0], [-0.55, -0.75, 0.45], [0.7, -0.55, 0.3]])
LIGHT_DIRS = LIGHT_DIRS / np.linalg.norm(LIGHT_DIRS, axis=1, keepdims=True)
LIGHT_POWER = np.array([0.42, 0.38, 0.18])
AMBIENT = 0.38


@dataclass(frozen=True)
class Camera:
    """A pinhole camera for an image of `size` (W, H) pixels; `zoom` scales the focal length (a studio variant's)."""

    size: tuple[int, int]
    zoom: float = 1.0

    @property
    def position(self) -> np.ndarray:
        return np.array([0.0, -CAMERA_DISTANCE, CAMERA_HEIGHT])

    @property
    def focal(self) -> float:
        return FOCAL_PER_WIDTH * self.zoom * self.size[0]

    def basis(self) -> np.ndarray:
        """(3, 3) rows: right, up, forward unit vectors in world coordinates."""
        forward = np.array([0.0, 0.0, TARGET_HEIGHT]) - self.position
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, forward)
        return np.stack([right, up, forward])

    def to_camera(self, world: np.ndarray) -> np.ndarray:
        """(N, 3) world points -> (N, 3) camera coordinates (x right, y up, z depth)."""
        return (world - self.position) @ self.basis().T

    def image_coords(self, cam: np.ndarray) -> np.ndarray:
        """(N, 3) camera coordinates -> (N, 2) float pixel coordinates (u right, v down)."""
        width, height = self.size
        u = width / 2 + self.focal * cam[:, 0] / cam[:, 2]
        v = height / 2 - self.focal * cam[:, 1] / cam[:, 2]
        return np.column_stack([u, v])

    def project(self, world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) world points -> (N, 2) float pixel coordinates (u right, v down) and (N,) depths."""
        cam = self.to_camera(world)
        return self.image_coords(cam), cam[:, 2]

    def horizon_v(self) -> float:
        """Image row (float) of the line where the back wall meets the floor."""
        uv, _ = self.project(np.array([[0.0, WALL_DISTANCE, 0.0]]))
        return float(uv[0, 1])


def yaw(angle: int) -> float:
    """Heading (radians) of the car's nose for angle 1..16: angle 1 faces the camera (-Y)."""
    if not 1 <= angle <= N_ANGLES:
        raise ValueError(f"angle must be 1..{N_ANGLES}, got {angle}")
    return -np.pi / 2 + (angle - 1) * 2 * np.pi / N_ANGLES


def yaw_matrix(angle: int) -> np.ndarray:
    """(3, 3) rotation taking car coordinates to world coordinates for angle 1..16."""
    c, s = np.cos(yaw(angle)), np.sin(yaw(angle))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def to_fixed(uv: np.ndarray) -> np.ndarray:
    """(K, 2) float pixel coordinates -> int32 with 4 fractional bits (OpenCV's `shift=4`)."""
    return np.round(uv * 16).astype(np.int32)
