"""The generator's view ring around one object, and what the object looks like on it.

InstaScene's rig (method.md §5, the SyncDreamer/MVDFusion/Zero123 one): 16 views,
azimuth 0…337.5° in 22.5° steps about the object's up axis, elevation 30°, 256²,
fx = fy = 280 (FoV ≈ 49.1°), at 3 × the bounding radius; view 0 faces the object
from the azimuth of a chosen real camera, so generated views line up with the scene.

Each ring view is rasterized once (every composited pair kept) into a
`ContributionCache`; colour, coverage, depth, normals and "how much of this pixel is
observed" are then sparse products, and the fine-tune reuses the same cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..io.cameras import Camera, intrinsics, look_at


@dataclass
class RingParams:
    count: int = 16
    elevation_deg: float = 30.0
    size: int = 256
    focal: float = 280.0
    distance: float = 3.0  # x bounding radius


def ring_cameras(center: np.ndarray, radius: float, up: np.ndarray, facing: np.ndarray, p: RingParams,
                 elevation_deg: float | None = None, prefix: str = "ring") -> tuple[list[Camera], np.ndarray]:
    """The ring's cameras and their azimuths (degrees); azimuth 0 lies towards `facing`
    (a point, e.g. a real camera's centre) seen from `center` about `up`."""
    up = up / np.linalg.norm(up)
    a = np.asarray(facing, dtype=np.float64) - center
    a -= (a @ up) * up
    if np.linalg.norm(a) < 1e-9:
        a = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(up, a)
    el = np.deg2rad(p.elevation_deg if elevation_deg is None else elevation_deg)
    K = intrinsics(p.focal, p.focal, p.size / 2, p.size / 2)
    az = np.arange(p.count) * 360.0 / p.count
    cams = []
    for i, deg in enumerate(az):
        t = np.deg2rad(deg)
        eye = center + p.distance * radius * (np.cos(el) * (np.cos(t) * a + np.sin(t) * b) + np.sin(el) * up)
        cams.append(Camera(f"{prefix}_{i:02d}", p.size, p.size, K.copy(), look_at(eye, center, up)))
    return cams, az


@dataclass
class RingRenders:
    """The completed object (observed + new Gaussians) on the ring, as arrays [V, H, W, ...]."""

    rgb: np.ndarray  # white background
    alpha: np.ndarray
    depth: np.ndarray  # camera z of the surface (view_caches); 0 where there is none
    normals: np.ndarray  # world, unit where covered
    observed: np.ndarray  # share of the pixel's weight coming from observed Gaussians


def view_caches(splats, cameras, device: str = "cpu", gap: float = 0.0):
    """(Gaussians, ContributionCache, depth [V, H, W]) of `splats` seen by `cameras`: one
    rasterization per view gives the cache and the surface depth, 0 where there is none:
    the ray-splat intersection depth (exact at grazing angles, unlike centre depths) of
    the surfel where transmittance crosses 0.5, as 2DGS meshes bounded objects — but
    inside the silhouette, where that lies more than `gap` behind the first surface the
    ray meets, the first surface (evidence.inside_rim). The blended (mean) depth, or the
    median where the front surface leaves gaps, would put the surface on whatever lies
    behind it: the far side of a closed object, or new surfels inside it. (Where the two
    are close the median is the better surface: the first is a disc's soft edge.)"""
    from ..render import ContributionCache, Contributions, Gaussians, View
    from ..render.rasterize import crosses, view_fragments
    from .evidence import FIRST_T, inside_rim

    g = Gaussians.from_splats(splats, device=device)
    views = [View.from_camera(c, device=device) for c in cameras]
    contribs, depths = [], []
    for v in views:
        parts = []
        median = torch.zeros(v.width * v.height, dtype=torch.float32, device=device)
        first = median.clone()
        with torch.no_grad():
            for _, fr in view_fragments(g, v):
                T, w = fr.transmittance, fr.weight
                parts.append((fr.pixel, fr.gaussian, T, w))
                for out, keep in ((median, crosses(T, w, 0.5)), (first, crosses(T, w, FIRST_T))):
                    out[fr.pixel[keep]] = fr.depth[keep].float()
        pix, gid, T, w = (torch.cat(x) for x in zip(*parts))
        contribs.append(Contributions(v.width, v.height, len(g), pix, gid, T, w))
        median, first = (x.reshape(v.height, v.width).cpu().numpy() for x in (median, first))
        through = inside_rim(first > 0) & ((median <= 0) | (median > first + gap))
        depths.append(np.where(through, first, median))
    depth = np.stack(depths) if depths else np.zeros((0, 1, 1), np.float32)
    return g, ContributionCache.from_contributions(views, contribs), depth


def render_cached(g, cache, cameras, depth: np.ndarray, colors: torch.Tensor, is_observed: torch.Tensor) -> RingRenders:
    """Everything the completion needs from each cached view in one sparse product."""
    from ..render.surfels import quat_to_rotmat

    normals = quat_to_rotmat(g.quats)[:, :, 2]
    out = {k: [] for k in ("rgb", "alpha", "depth", "normals", "observed")}
    for i, cam in enumerate(cameras):
        to_cam = torch.as_tensor(cam.center, dtype=g.means.dtype, device=g.means.device) - g.means
        facing = torch.where((to_cam * normals).sum(1, keepdim=True) >= 0, 1.0, -1.0)
        n = normals * facing  # surfels are two-sided: the side the camera sees
        feats = torch.cat([colors, torch.ones_like(is_observed)[:, None], n, is_observed[:, None]], dim=1)
        with torch.no_grad():
            r = cache.render(i, feats).cpu().numpy()
        a = r[..., 3]
        safe = np.maximum(a, 1e-8)
        out["rgb"].append(np.clip(r[..., :3] + (1 - a[..., None]), 0, 1))
        out["alpha"].append(a)
        out["depth"].append(depth[i])
        nn = r[..., 4:7]
        out["normals"].append(nn / np.maximum(np.linalg.norm(nn, axis=-1, keepdims=True), 1e-8))
        out["observed"].append(np.where(a > 1e-6, r[..., 7] / safe, 0.0))
    return RingRenders(*(np.stack(out[k]).astype(np.float32) for k in ("rgb", "alpha", "depth", "normals", "observed")))
