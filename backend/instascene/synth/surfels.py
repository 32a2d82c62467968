"""Surfels on the true surfaces, and which of them a camera saw.

A trained 2DGS model covers what the cameras saw and nothing else: the bottom of an
object resting on the table, faces pressed against a neighbour and hollows no view
looks into are missing. We sample surfels on every surface (area-uniform, at a
spacing that makes the surface opaque), then keep the ones that at least one camera
sees unoccluded: in front of the camera, facing it, and at the true depth of the
pixel they fall on, on the same body.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh

from ..io.cameras import Camera
from ..io.rotations import rotmat_to_quat
from ..io.splats import SH_C0, Splats
from .capture import TrueView

OPACITY = 0.97
SIGMA_PER_SPACING = 0.9  # surfel σ relative to the sampling spacing: opaque, little blur


@dataclass
class SurfelSet:
    means: np.ndarray  # [N, 3] world
    normals: np.ndarray  # [N, 3] unit, outward
    colors: np.ndarray  # [N, 3] in [0, 1]
    sigma: np.ndarray  # [N] world units
    owner: np.ndarray  # [N] int: object index, -1 = table

    def __len__(self):
        return len(self.means)

    @staticmethod
    def concat(sets: list["SurfelSet"]) -> "SurfelSet":
        return SurfelSet(*(np.concatenate([getattr(s, f) for s in sets]) for f in ("means", "normals", "colors", "sigma", "owner")))

    def subset(self, idx) -> "SurfelSet":
        return SurfelSet(self.means[idx], self.normals[idx], self.colors[idx], self.sigma[idx], self.owner[idx])

    def to_splats(self) -> Splats:
        n = len(self)
        return Splats(
            means=self.means.astype(np.float32),
            quats=rotmat_to_quat(tangent_frames(self.normals)).astype(np.float32),
            log_scales=np.repeat(np.log(self.sigma)[:, None], 2, axis=1).astype(np.float32),
            opacity_logits=np.full(n, np.log(OPACITY / (1 - OPACITY)), np.float32),
            sh_dc=((self.colors - 0.5) / SH_C0).astype(np.float32),
            sh_rest=np.zeros((n, 0, 3), np.float32),
        )


def tangent_frames(normals: np.ndarray) -> np.ndarray:
    """Rotations [N, 3, 3] whose third column is the normal (the surfel's t_w)."""
    helper = np.where(np.abs(normals[:, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]])
    t1 = np.cross(normals, helper)
    t1 /= np.linalg.norm(t1, axis=1, keepdims=True)
    t2 = np.cross(normals, t1)
    return np.stack([t1, t2, normals], axis=2)


def object_surfels(obj, pose: np.ndarray, index: int, spacing: float, rng: np.random.Generator) -> SurfelSet:
    """Surfels over the whole surface of `obj` placed at `pose` (local -> world)."""
    mesh = obj.visual
    n = max(64, int(mesh.area / spacing**2))
    pts, faces = trimesh.sample.sample_surface(mesh, n, seed=int(rng.integers(2**31)))
    colors = obj.colors_at(faces, pts)
    normals = mesh.face_normals[faces]
    R, t = pose[:3, :3], pose[:3, 3]
    return SurfelSet(
        means=pts @ R.T + t,
        normals=normals @ R.T,
        colors=colors.astype(np.float64),
        sigma=np.full(n, SIGMA_PER_SPACING * spacing),
        owner=np.full(n, index),
    )


def table_surfels(center: np.ndarray, radius: float, spacing: float, texture: np.ndarray | None,
                  rng: np.random.Generator, tile: float = 0.3) -> SurfelSet:
    """Surfels on the table top (z = 0) in a disc around the clutter, textured by tiling."""
    n = int(np.pi * radius**2 / spacing**2)
    r = radius * np.sqrt(rng.random(n))
    a = 2 * np.pi * rng.random(n)
    xy = center[:2] + np.stack([r * np.cos(a), r * np.sin(a)], 1)
    if texture is not None:
        h, w = texture.shape[:2]
        uv = (xy / tile) % 1.0
        colors = texture[(uv[:, 1] * (h - 1)).astype(int), (uv[:, 0] * (w - 1)).astype(int)]
    else:
        colors = np.tile([0.6, 0.45, 0.3], (n, 1))
    return SurfelSet(
        means=np.concatenate([xy, np.zeros((n, 1))], 1),
        normals=np.tile([0.0, 0.0, 1.0], (n, 1)),
        colors=np.asarray(colors, dtype=np.float64),
        sigma=np.full(n, SIGMA_PER_SPACING * spacing),
        owner=np.full(n, -1),
    )


def seen_by(cam: Camera, view: TrueView, surfels: SurfelSet, body_of_owner: np.ndarray, tol_px: float = 2.0) -> np.ndarray:
    """Which surfels camera `cam` sees: in the image, facing it, at the pixel's true depth, on
    the pixel's body. `body_of_owner[owner + 1]` maps an owner to its pybullet body id."""
    R, t = cam.world_to_camera[:3, :3], cam.world_to_camera[:3, 3]
    pc = surfels.means @ R.T + t
    z = pc[:, 2]
    ok = z > 1e-3
    u = cam.fx * pc[:, 0] / np.where(ok, z, 1) + cam.cx
    v = cam.fy * pc[:, 1] / np.where(ok, z, 1) + cam.cy
    ok &= (u >= 0) & (u < cam.width) & (v >= 0) & (v < cam.height)
    ui, vi = np.clip(u.astype(int), 0, cam.width - 1), np.clip(v.astype(int), 0, cam.height - 1)
    facing = np.einsum("ij,ij->i", surfels.normals, cam.center[None] - surfels.means) > 0
    tol = 0.002 + tol_px * z / cam.fx
    at_depth = np.abs(view.depth[vi, ui] - z) < tol
    same_body = view.body[vi, ui] == body_of_owner[surfels.owner + 1]
    return ok & facing & at_depth & same_body
