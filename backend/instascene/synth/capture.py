"""A hand-held capture of the clutter: cameras on rings, and true depth + instance maps.

Cameras circle the clutter on a few rings of rising elevation, as a person walking
around a table would hold a phone: radius, aim and roll wobble a little, and the
order is the capture order (neighbouring names are neighbouring views). Depth and
per-pixel object ids come from pybullet's software renderer on the true meshes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io.cameras import Camera, intrinsics, look_at

GL_FROM_CV = np.diag([1.0, -1.0, -1.0, 1.0])
NEAR, FAR = 0.01, 20.0


def handheld_rings(
    center: np.ndarray, radius: float, count: int, width: int, height: int, rng: np.random.Generator,
    elevations=(22.0, 38.0, 55.0), fov_deg: float = 55.0,
) -> list[Camera]:
    """`count` cameras over rings at `elevations` (degrees), looking at `center` (z up)."""
    per_ring = np.diff(np.round(np.linspace(0, count, len(elevations) + 1)).astype(int))
    f = 0.5 * width / np.tan(np.deg2rad(fov_deg) / 2)
    K = intrinsics(f, f, width / 2, height / 2)
    cams = []
    for ring, (el, n) in enumerate(zip(elevations, per_ring)):
        start = rng.uniform(0, 2 * np.pi)
        for i in range(n):
            az = start + 2 * np.pi * (i + rng.uniform(-0.2, 0.2)) / n
            e = np.deg2rad(el + rng.uniform(-3, 3))
            r = radius * rng.uniform(0.9, 1.1)
            eye = center + r * np.array([np.cos(e) * np.cos(az), np.cos(e) * np.sin(az), np.sin(e)])
            aim = center + rng.normal(scale=0.08 * radius, size=3)
            roll = np.deg2rad(rng.uniform(-4, 4))
            w2c = look_at(eye, aim, up=(0.0, 0.0, 1.0))
            c, s = np.cos(roll), np.sin(roll)
            w2c = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]) @ w2c
            idx = len(cams)
            cams.append(Camera(f"frame_{idx:04d}", width, height, K.copy(), w2c, f"frame_{idx:04d}.png"))
    return cams


@dataclass
class TrueView:
    depth: np.ndarray  # [H, W] camera z (metres); FAR where nothing
    body: np.ndarray  # [H, W] pybullet body id; -1 where nothing


class TrueRenderer:
    """Renders true depth and body ids of posed meshes with pybullet's TinyRenderer."""

    def __init__(self, meshes_world: list, table_half: float = 2.0):
        import pybullet as pb

        self.pb = pb
        self.cid = pb.connect(pb.DIRECT)
        self.table = pb.createMultiBody(
            0, -1, pb.createVisualShape(pb.GEOM_BOX, halfExtents=[table_half, table_half, 0.05], physicsClientId=self.cid),
            basePosition=[0, 0, -0.05], physicsClientId=self.cid,
        )
        self.bodies = []
        for m in meshes_world:
            vs = pb.createVisualShape(
                pb.GEOM_MESH, vertices=m.vertices.tolist(), indices=m.faces.reshape(-1).tolist(), physicsClientId=self.cid
            )
            self.bodies.append(pb.createMultiBody(0, -1, vs, physicsClientId=self.cid))

    def close(self):
        self.pb.disconnect(self.cid)

    def render(self, cam: Camera) -> TrueView:
        pb = self.pb
        W, H = cam.width, cam.height
        view = (GL_FROM_CV @ cam.world_to_camera).T.reshape(-1)  # column-major
        fx, fy = cam.fx, cam.fy
        proj = np.array(
            [
                [2 * fx / W, 0, 1 - 2 * cam.cx / W, 0],
                [0, 2 * fy / H, 2 * cam.cy / H - 1, 0],
                [0, 0, -(FAR + NEAR) / (FAR - NEAR), -2 * FAR * NEAR / (FAR - NEAR)],
                [0, 0, -1, 0],
            ]
        ).T.reshape(-1)
        _, _, _, zbuf, seg = pb.getCameraImage(
            W, H, viewMatrix=view.tolist(), projectionMatrix=proj.tolist(),
            renderer=pb.ER_TINY_RENDERER, physicsClientId=self.cid,
        )
        zbuf = np.asarray(zbuf, dtype=np.float64).reshape(H, W)
        depth = FAR * NEAR / (FAR - (FAR - NEAR) * zbuf)
        seg = np.asarray(seg, dtype=np.int64).reshape(H, W)
        return TrueView(depth=depth, body=np.where(seg >= 0, seg & ((1 << 24) - 1), -1))
