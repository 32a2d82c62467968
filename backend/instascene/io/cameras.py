"""The camera every stage uses: pinhole intrinsics and an OpenCV world-to-camera pose.

Readers for COLMAP, cameras.json and transforms.json all produce `Camera`s; they
convert axes and conventions once, at the file boundary (see formats.md §6).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .rotations import quat_to_rotmat, rotmat_to_quat


@dataclass
class Camera:
    name: str  # image stem, the key that links images, masks and cameras
    width: int
    height: int
    K: np.ndarray  # [3, 3] float64 pixel intrinsics; pixel centres at (j + 0.5, i + 0.5)
    world_to_camera: np.ndarray  # [4, 4] float64, OpenCV axes (x right, y down, z forward)
    image_name: str | None = None  # file name in images/ when known (with extension)

    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    @property
    def cx(self) -> float:
        return float(self.K[0, 2])

    @property
    def cy(self) -> float:
        return float(self.K[1, 2])

    @property
    def camera_to_world(self) -> np.ndarray:
        return np.linalg.inv(self.world_to_camera)

    @property
    def center(self) -> np.ndarray:
        R, t = self.world_to_camera[:3, :3], self.world_to_camera[:3, 3]
        return -R.T @ t

    def resized(self, width: int, height: int) -> "Camera":
        """The same camera at another resolution (intrinsics scaled per axis)."""
        K = self.K.copy()
        K[0] *= width / self.width
        K[1] *= height / self.height
        return Camera(self.name, int(width), int(height), K, self.world_to_camera.copy(), self.image_name)


def intrinsics(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def pose_from_rotation_translation(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """4x4 world-to-camera matrix from X_cam = R X_world + t."""
    M = np.eye(4)
    M[:3, :3] = R
    M[:3, 3] = t
    return M


def rotation_from_quaternion(q) -> np.ndarray:
    """3x3 rotation from one Hamilton quaternion (w, x, y, z), as COLMAP stores it;
    normalised first (files hold rounded values; COLMAP normalises on load too)."""
    q = np.asarray(q, dtype=np.float64)
    n = np.linalg.norm(q)
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"not a rotation quaternion: {q.tolist()}")
    return quat_to_rotmat(q[None])[0]


def quaternion_from_rotation(R: np.ndarray) -> np.ndarray:
    """Unit Hamilton quaternion (w, x, y, z) with w >= 0 for one 3x3 rotation."""
    return rotmat_to_quat(np.asarray(R, dtype=np.float64)[None])[0]


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenCV world-to-camera matrix of a camera at `eye` looking at `target`, image
    'up' (−y) towards `up`."""
    eye, target, up = (np.asarray(a, dtype=np.float64) for a in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-9:  # looking along `up`: pick any perpendicular
        x = np.cross(z, [1.0, 0.0, 0.0] if abs(z[0]) < 0.9 else [0.0, 1.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])  # rows: camera axes in world
    return pose_from_rotation_translation(R, -R @ eye)


def ring_cameras(
    center, radius: float, count: int, elevation_deg: float, width: int, height: int,
    fov_deg: float = 45.0, up=(0.0, 0.0, 1.0), prefix: str = "ring",
) -> list[Camera]:
    """`count` cameras evenly spaced on a circle around `center` (about `up`), looking at it."""
    center, up = np.asarray(center, dtype=np.float64), np.asarray(up, dtype=np.float64)
    up = up / np.linalg.norm(up)
    a = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(up, a)
    el = np.deg2rad(elevation_deg)
    f = 0.5 * width / np.tan(np.deg2rad(fov_deg) / 2)
    K = intrinsics(f, f, width / 2, height / 2)
    cams = []
    for i in range(count):
        az = 2 * np.pi * i / count
        eye = center + radius * (np.cos(el) * (np.cos(az) * a + np.sin(az) * b) + np.sin(el) * up)
        cams.append(Camera(f"{prefix}_{i:03d}", width, height, K.copy(), look_at(eye, center, up)))
    return cams
