"""The 2DGS math core: surfel projection and per-(pixel, Gaussian) evaluation.

Follows gsplat 1.5.3's 2DGS kernels (reference/gsplat.md §4), written as batched
torch ops so that it runs on CPU and CUDA and is differentiable end to end:

  M = K · [s_u R_cw t_u | s_v R_cw t_v | μ_c]       ("ray transform", rows M0 M1 M2)
  pixel p -> splat coords (u, v) = (c_x / c_z, c_y / c_z),  c = (p_x M2 - M0) × (p_y M2 - M1)
  σ = ½ min(u² + v², 2 ‖μ2d - p‖²),  α = min(0.999, o e^{-σ}),  skip α < 1/255

The cross product is linear in the pixel: c = p_x (M1×M2) + p_y (M2×M0) + M0×M1, so
each pair costs six multiply-adds once the three per-Gaussian vectors are known.
Depth is the per-pixel ray–splat intersection depth of 2DGS (not gsplat's centre depth).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

ALPHA_MAX = 0.999  # gsplat; diff-surfel uses 0.99
ALPHA_MIN = 1.0 / 255.0
T_STOP = 1e-4  # compositing stops (exclusively) when T would drop to this
FILTER_INV_SQUARE = 2.0  # screen-space low-pass: ρ2d = 2 ‖μ2d - p‖²
BOX_EXTENT = 3.33  # bounding box half-size in units of the projected unit circle
# The low-pass filter alone passes α ≥ 1/255 out to √ln 255 px from μ2d; the box
# always covers that, so small splats are never cut by their own box.
FILTER_REACH = math.sqrt(math.log(255.0))


@dataclass
class Gaussians:
    """Activated 2DGS parameters as torch tensors (the rasterizer's input)."""

    means: torch.Tensor  # [N, 3]
    quats: torch.Tensor  # [N, 4] (w, x, y, z), normalised inside
    scales: torch.Tensor  # [N, 2] tangent scales (not log)
    opacities: torch.Tensor  # [N] in (0, 1)
    sh: torch.Tensor | None = None  # [N, K, 3] SH coefficients, band 0 first

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @classmethod
    def from_splats(cls, splats, device="cpu", dtype=torch.float32) -> "Gaussians":
        """From an `io.splats.Splats` (3DGS input is flattened to surfels first)."""
        s = splats.to_2dgs()
        t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)  # noqa: E731
        return cls(t(s.means), t(s.quats), t(s.scales()), t(s.opacities()), t(s.sh_coeffs()))


@dataclass
class View:
    """A pinhole camera as tensors: OpenCV world-to-camera `viewmat` and pixel intrinsics."""

    viewmat: torch.Tensor  # [4, 4]
    K: torch.Tensor  # [3, 3]
    width: int
    height: int

    @classmethod
    def from_camera(cls, camera, device="cpu", dtype=torch.float32) -> "View":
        t = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype, device=device)  # noqa: E731
        return cls(t(camera.world_to_camera), t(camera.K), int(camera.width), int(camera.height))

    @property
    def center(self) -> torch.Tensor:
        R, t = self.viewmat[:3, :3], self.viewmat[:3, 3]
        return -R.T @ t


def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """(w, x, y, z) quaternions [N, 4] (any length) -> rotations [N, 3, 3]."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(q.shape[:-1] + (3, 3))


@dataclass
class Projection:
    """Per-Gaussian screen-space quantities for one view."""

    M: torch.Tensor  # [N, 3, 3] ray transforms, rows M0, M1, M2
    means2d: torch.Tensor  # [N, 2] centre of the projected conic (gsplat's means2d)
    radii: torch.Tensor  # [N, 2] float, half-size of the evaluated box in pixels
    depths: torch.Tensor  # [N] camera-space z of the centre (sort key)
    normals: torch.Tensor  # [N, 3] world-space unit normals, flipped to face the camera
    visible: torch.Tensor  # [N] bool
    # per-Gaussian vectors that make (u, v) linear in the pixel (see module docstring)
    A: torch.Tensor  # M1 × M2
    B: torch.Tensor  # M2 × M0
    C: torch.Tensor  # M0 × M1


def project(g: Gaussians, view: View, near: float = 0.01, far: float = 1e10) -> Projection:
    """Project surfels into `view` (gsplat's `fully_fused_projection_2dgs`, in torch)."""
    R_cw, t_cw = view.viewmat[:3, :3], view.viewmat[:3, 3]
    Rg = quat_to_rotmat(g.quats)  # columns t_u, t_v, t_w
    mean_c = g.means @ R_cw.T + t_cw
    tu = (Rg[:, :, 0] * g.scales[:, 0:1]) @ R_cw.T
    tv = (Rg[:, :, 1] * g.scales[:, 1:2]) @ R_cw.T
    WH = torch.stack([tu, tv, mean_c], dim=-1)  # columns
    M = view.K @ WH  # [N, 3, 3]
    M0, M1, M2 = M[:, 0], M[:, 1], M[:, 2]

    # bounding box of the projected conic u² + v² = 1 (gsplat's closed form), × 3.33
    sign = M.new_tensor([1.0, 1.0, -1.0])
    distance = (sign * M2 * M2).sum(-1)
    ok = distance != 0
    f = sign / torch.where(ok, distance, torch.ones_like(distance))[:, None]
    means2d = torch.stack([(f * M0 * M2).sum(-1), (f * M1 * M2).sum(-1)], -1)
    half = means2d * means2d - torch.stack([(f * M0 * M0).sum(-1), (f * M1 * M1).sum(-1)], -1)
    with torch.no_grad():
        radii = torch.ceil(BOX_EXTENT * half.clamp_min(1e-4).sqrt()).clamp_min(FILTER_REACH)
        z = mean_c[:, 2]
        visible = (
            ok
            & (z > near)
            & (z < far)
            & torch.isfinite(means2d).all(-1)
            & (means2d[:, 0] + radii[:, 0] > 0)
            & (means2d[:, 0] - radii[:, 0] < view.width)
            & (means2d[:, 1] + radii[:, 1] > 0)
            & (means2d[:, 1] - radii[:, 1] < view.height)
        )

    n_world = Rg[:, :, 2]
    facing = ((n_world @ R_cw.T) * mean_c).sum(-1) < 0  # n_c · μ_c < 0: faces the camera
    normals = torch.where(facing[:, None], n_world, -n_world)
    return Projection(
        M=M,
        means2d=means2d,
        radii=radii,
        depths=mean_c[:, 2],
        normals=normals,
        visible=visible,
        A=torch.linalg.cross(M1, M2),
        B=torch.linalg.cross(M2, M0),
        C=torch.linalg.cross(M0, M1),
    )


def pair_table(proj: Projection, opacities: torch.Tensor) -> torch.Tensor:
    """Everything `evaluate` needs per Gaussian in one [N, 15] table, so that each pair
    costs a single row gather: A | B | C | means2d | opacity | M2."""
    return torch.cat([proj.A, proj.B, proj.C, proj.means2d, opacities[:, None].to(proj.M), proj.M[:, 2]], dim=1)


def evaluate(table: torch.Tensor, px: torch.Tensor, py: torch.Tensor, gid: torch.Tensor):
    """α, intersection depth and validity of Gaussians `gid` at pixel centres (px, py);
    `table` comes from `pair_table`. Invalid pairs (ray parallel to the splat,
    α < 1/255) get α = 0, so callers may drop them or keep them harmlessly.
    """
    t = table.index_select(0, gid)
    px, py = px[:, None], py[:, None]
    c = px * t[:, 0:3] + py * t[:, 3:6] + t[:, 6:9]
    cz = c[:, 2]
    nonzero = cz != 0
    cz = torch.where(nonzero, cz, torch.ones_like(cz))
    u, v = c[:, 0] / cz, c[:, 1] / cz
    rho3d = u * u + v * v
    dx, dy = t[:, 9] - px[:, 0], t[:, 10] - py[:, 0]
    rho2d = FILTER_INV_SQUARE * (dx * dx + dy * dy)
    sigma = 0.5 * torch.minimum(rho3d, rho2d)
    alpha = (t[:, 11] * torch.exp(-sigma)).clamp_max(ALPHA_MAX)
    valid = nonzero & (sigma >= 0) & (alpha >= ALPHA_MIN)
    alpha = torch.where(valid, alpha, torch.zeros_like(alpha))
    z = torch.where(rho3d <= rho2d, u * t[:, 12] + v * t[:, 13] + t[:, 14], t[:, 14])
    return alpha, z, valid
