"""Quaternion <-> rotation matrix, vectorised (Hamilton, scalar first: w, x, y, z).

The one convention shared by PLY `rot_0..3`, COLMAP's qvec, gsplat's `quats` and
Blender's QUATERNION attribute.
"""

from __future__ import annotations

import numpy as np


def quat_to_rotmat(q: np.ndarray) -> np.ndarray:
    """Quaternions (w, x, y, z) [N, 4], normalised here -> rotation matrices [N, 3, 3]."""
    q = np.asarray(q)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-300)
    w, x, y, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    R = np.empty((q.shape[0], 3, 3), dtype=q.dtype)
    R[:, 0, 0] = 1 - 2 * (y * y + z * z)
    R[:, 0, 1] = 2 * (x * y - w * z)
    R[:, 0, 2] = 2 * (x * z + w * y)
    R[:, 1, 0] = 2 * (x * y + w * z)
    R[:, 1, 1] = 1 - 2 * (x * x + z * z)
    R[:, 1, 2] = 2 * (y * z - w * x)
    R[:, 2, 0] = 2 * (x * z - w * y)
    R[:, 2, 1] = 2 * (y * z + w * x)
    R[:, 2, 2] = 1 - 2 * (x * x + y * y)
    return R


def rotmat_to_quat(R: np.ndarray) -> np.ndarray:
    """Rotation matrices [N, 3, 3] -> unit quaternions (w, x, y, z) [N, 4], w >= 0.

    Uses the numerically stable branch per matrix (largest diagonal term).
    """
    R = np.asarray(R, dtype=np.float64)
    m00, m11, m22 = R[:, 0, 0], R[:, 1, 1], R[:, 2, 2]
    t = np.stack([m00 + m11 + m22, m00 - m11 - m22, -m00 + m11 - m22, -m00 - m11 + m22], 1)
    k = np.argmax(t, axis=1)
    s = np.sqrt(np.maximum(1.0 + t[np.arange(len(k)), k], 1e-12)) * 2.0  # 4 * |largest component|
    q = np.empty((R.shape[0], 4))
    c = [
        (s / 4, (R[:, 2, 1] - R[:, 1, 2]) / s, (R[:, 0, 2] - R[:, 2, 0]) / s, (R[:, 1, 0] - R[:, 0, 1]) / s),
        ((R[:, 2, 1] - R[:, 1, 2]) / s, s / 4, (R[:, 0, 1] + R[:, 1, 0]) / s, (R[:, 0, 2] + R[:, 2, 0]) / s),
        ((R[:, 0, 2] - R[:, 2, 0]) / s, (R[:, 0, 1] + R[:, 1, 0]) / s, s / 4, (R[:, 1, 2] + R[:, 2, 1]) / s),
        ((R[:, 1, 0] - R[:, 0, 1]) / s, (R[:, 0, 2] + R[:, 2, 0]) / s, (R[:, 1, 2] + R[:, 2, 1]) / s, s / 4),
    ]
    for branch in range(4):
        sel = k == branch
        q[sel] = np.stack([comp[sel] for comp in c[branch]], 1)
    q *= np.where(q[:, :1] < 0, -1.0, 1.0)
    return q / np.linalg.norm(q, axis=1, keepdims=True)
