"""What the real cameras say about each object: visible surface, free space, occlusion.

Every real view is rasterized once with the whole scene; per pixel we keep the depth
and the instance of the Gaussian where transmittance crosses 0.5 (the visible surface,
the tracker's criterion). From these maps alone:

  * `carve`: a voxel grid over an object, each voxel free (some camera looked through
    it and saw something farther), observed (at the object's own visible surface) or
    unseen — the occlusion-aware visual hull: a voxel is only carved with free-space
    evidence, so what hides behind another object stays, as InstaScene's unseen grid;
  * `views_through`: per point, the cameras that saw farther than it (it is air: a hull
    too loose where few cameras looked gets no new surface there);
  * `facing_sign`: per surfel, which way its normal faces the cameras that see it;
  * `camera_scores`: per real camera, the share of the object's projected volume that
    the camera sees unoccluded (InstaScene's `filter_occ_cam`, on the voxel grid instead
    of a mesh): the best cameras condition the fine-tune.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

NOTHING = -2  # label of a pixel where nothing crosses T = 0.5


FIRST_T = 0.9  # the first surface: where transmittance drops below this
RIM_PX = 2  # inside a silhouette this far, the first surface bounds free space (inside_rim)


@dataclass
class SceneEvidence:
    cameras: list  # io.cameras.Camera
    depth: list[np.ndarray]  # [H, W] float32 camera z of the visible surface, inf where empty
    label: list[np.ndarray]  # [H, W] int32 instance of the visible surface, -1 background, NOTHING empty
    first_depth: list[np.ndarray]  # [H, W] float32 camera z of the first surface the ray meets, inf where none
    first_label: list[np.ndarray]  # [H, W] int32 its instance
    # per view (None where not kept), render.Contributions — int32 pixel and Gaussian, the
    # weight, no transmittance — of the pixels where `watch`ed Gaussians show
    pairs: list | None = None


def scene_evidence(splats, labels: np.ndarray, cameras, device: str = "cpu", progress=None,
                   watch: np.ndarray | None = None, watch_share: float = 0.05,
                   watch_views=None) -> SceneEvidence:
    """Rasterize every real camera once: per pixel, depth and instance of the visible
    surface (where T crosses 0.5) and of the first surface (where T drops below FIRST_T).

    The two differ where the splats are sparse: a ray that slips through the gaps of an
    object's front surface crosses T = 0.5 on its back side, or on what lies behind. Such
    a depth is right for the picture but says nothing about free space in front of it:
    carving the object's inside with it hollows a ball into a shell.

    With `watch` (bool per Gaussian), also every composited pair of the pixels where the
    watched Gaussians give at least `watch_share` of the colour, in the views
    `watch_views` (indices; all when None): enough to fit those Gaussians' colours to the
    real views through a contribution cache without rasterizing again (the closed
    background), in memory bounded by the views chosen."""
    from ..render import Contributions, Gaussians, View
    from ..render.rasterize import crosses, view_fragments

    g = Gaussians.from_splats(splats, device=device)
    lab = torch.as_tensor(labels, dtype=torch.int64, device=device)
    watched = None if watch is None else torch.as_tensor(np.asarray(watch, bool), device=device)
    keep_views = set(range(len(cameras)) if watch_views is None else (int(v) for v in watch_views))
    out = {"depth": [], "label": [], "first_depth": [], "first_label": [], "pairs": [] if watch is not None else None}
    for i, cam in enumerate(cameras):
        n = cam.width * cam.height
        maps = {"depth": torch.full((n,), float("inf"), device=device),
                "label": torch.full((n,), NOTHING, dtype=torch.int64, device=device)}
        maps["first_depth"], maps["first_label"] = maps["depth"].clone(), maps["label"].clone()
        parts = []
        keep_pairs = watched is not None and i in keep_views
        with torch.no_grad():
            for _, fr in view_fragments(g, View.from_camera(cam, device=device)):
                T, w = fr.transmittance, fr.weight
                for key, keep in (("", crosses(T, w, 0.5)), ("first_", crosses(T, w, FIRST_T))):
                    maps[key + "depth"][fr.pixel[keep]] = fr.depth[keep].float()
                    maps[key + "label"][fr.pixel[keep]] = lab[fr.gaussian[keep]]
                if keep_pairs:
                    share = torch.zeros(n, dtype=w.dtype, device=device).index_add_(
                        0, fr.pixel, torch.where(watched[fr.gaussian], w, torch.zeros_like(w)))
                    keep = share[fr.pixel] >= watch_share
                    parts.append((fr.pixel[keep].int().cpu(), fr.gaussian[keep].int().cpu(), w[keep].float().cpu()))
        if watched is not None:
            pairs = None
            if keep_pairs:
                pix, gid, w = (torch.cat(x) for x in zip(*parts)) if parts else [torch.zeros(0)] * 3
                pairs = Contributions(cam.width, cam.height, len(g), pix.int(), gid.int(), w.new_zeros(0), w.float())
            out["pairs"].append(pairs)
        for key, m in maps.items():
            m = m.reshape(cam.height, cam.width).cpu()
            out[key].append(m.numpy() if m.dtype == torch.float32 else m.int().numpy())
        if progress:
            progress(i + 1, len(cameras), cam.name)
    return SceneEvidence(list(cameras), **out)


@dataclass
class Grid:
    """An axis-aligned voxel grid: voxel (i, j, k) has its centre at origin + (ijk + ½)·size."""

    origin: np.ndarray  # [3]
    size: float
    shape: tuple[int, int, int]

    def centers(self) -> np.ndarray:
        ii = [np.arange(n) + 0.5 for n in self.shape]
        g = np.stack(np.meshgrid(*ii, indexing="ij"), axis=-1).reshape(-1, 3)
        return self.origin + g * self.size

    def index(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Voxel index (flat) of each point, and whether it lies inside the grid."""
        ijk = np.floor((points - self.origin) / self.size).astype(np.int64)
        inside = np.all((ijk >= 0) & (ijk < np.array(self.shape)), axis=1)
        ijk = np.clip(ijk, 0, np.array(self.shape) - 1)
        return np.ravel_multi_index(ijk.T, self.shape), inside

    @classmethod
    def around(cls, lo: np.ndarray, hi: np.ndarray, resolution: int) -> "Grid":
        """A grid of cubic voxels covering [lo, hi], `resolution` voxels along the longest side."""
        size = float(np.max(hi - lo)) / resolution
        shape = tuple(int(n) for n in np.maximum(2, np.ceil((hi - lo) / size - 1e-9)).astype(int))
        return cls(np.asarray(lo, dtype=np.float64), size, shape)


@dataclass
class Carving:
    grid: Grid
    free: np.ndarray  # [X, Y, Z] int16: cameras that saw through the voxel
    surface: np.ndarray  # [X, Y, Z] int16: cameras that saw the object's own surface in it
    in_view: np.ndarray  # [X, Y, Z] int16: cameras whose image contains the voxel


def project(cam, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel column, row (integers, may be out of the image) and camera z of points."""
    Xc = points @ cam.world_to_camera[:3, :3].T + cam.world_to_camera[:3, 3]
    z = Xc[:, 2]
    zs = np.where(z > 1e-9, z, 1e-9)
    u = np.floor(cam.fx * Xc[:, 0] / zs + cam.cx).astype(np.int64)
    v = np.floor(cam.fy * Xc[:, 1] / zs + cam.cy).astype(np.int64)
    return u, v, z


def in_frame(cam, u: np.ndarray, v: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Which projected points lie in front of the camera and inside its image."""
    return (z > 1e-6) & (u >= 0) & (u < cam.width) & (v >= 0) & (v < cam.height)


def carve(ev: SceneEvidence, instance: int, grid: Grid, margin: float, rim_px: int = RIM_PX) -> Carving:
    """Count, per voxel, the cameras that show free space through it (the surface lies
    more than `margin` behind it — inside the instance's silhouette its first surface,
    elsewhere the visible one —, the pixel is empty, or another surface than this
    instance's is seen within `margin` of it) and those that show this instance's own
    visible surface within `margin` of it. Voxels hidden behind anything get no vote."""
    pts = grid.centers()
    free = np.zeros(len(pts), np.int16)
    surf = np.zeros(len(pts), np.int16)
    seen = np.zeros(len(pts), np.int16)
    for cam, depth, label, first, first_label in zip(ev.cameras, ev.depth, ev.label, ev.first_depth,
                                                     ev.first_label):
        u, v, z = project(cam, pts)
        ok = in_frame(cam, u, v, z)
        idx = np.flatnonzero(ok)
        vi, ui = v[idx], u[idx]
        d, lab = depth[vi, ui], label[vi, ui]
        own = lab == instance
        front = inside_rim(first_label == instance, rim_px)[vi, ui]
        d_free = np.where(front, first[vi, ui], d)
        seen[idx] += 1
        zi = z[idx]
        # free: the surface lies behind the voxel, or something else is seen right at it
        # (the table under an object's edge would otherwise never carve that layer)
        free[idx[(zi < d_free - margin) | (~own & ~front & (d >= zi - margin))]] += 1
        surf[idx[(np.abs(zi - d) <= margin) & own]] += 1
    sh = grid.shape
    return Carving(grid, free.reshape(sh), surf.reshape(sh), seen.reshape(sh))


def inside_rim(body: np.ndarray, rim_px: int = RIM_PX) -> np.ndarray:
    """The pixels of a silhouette (bool [H, W]) at least `rim_px` inside its rim.
    There a ray that met the object's first surface says nothing about what lies behind
    it, whatever it crossed T = 0.5 on (splats leave gaps); at the rim the discs' soft
    edges are met first and the visible surface behind them is right."""
    return ndimage.binary_erosion(body, iterations=rim_px)


def views_through(ev: SceneEvidence, points: np.ndarray, tol: float) -> np.ndarray:
    """Per point, the cameras whose visible surface lies more than `tol` behind it."""
    count = np.zeros(len(points), np.int32)
    for cam, depth in zip(ev.cameras, ev.depth):
        u, v, z = project(cam, points)
        ok = np.flatnonzero(in_frame(cam, u, v, z))
        count[ok[depth[v[ok], u[ok]] > z[ok] + tol]] += 1
    return count


def facing_sign(ev: SceneEvidence, instance: int, points: np.ndarray, normals: np.ndarray,
                margin: float) -> np.ndarray:
    """Per point, the sign (+1, -1) that turns its normal towards the cameras that see it
    (its instance's visible surface within `margin` of it), by majority; 0 where no camera
    sees it. A thin wall seen from both sides (a cup's rim) gets both directions right,
    which no inside/outside field of a filled hull can give."""
    votes = np.zeros(len(points))
    for cam, depth, label in zip(ev.cameras, ev.depth, ev.label):
        u, v, z = project(cam, points)
        ok = np.flatnonzero(in_frame(cam, u, v, z))
        ok = ok[(label[v[ok], u[ok]] == instance) & (np.abs(depth[v[ok], u[ok]] - z[ok]) <= margin)]
        votes[ok] += np.sign(np.einsum("nk,nk->n", normals[ok], cam.center - points[ok]))
    return np.sign(votes)


def camera_scores(ev: SceneEvidence, instance: int, points: np.ndarray, margin: float) -> np.ndarray:
    """Per real camera: of the object's `points` inside its image, the share it sees
    unoccluded — the visible surface at the point's pixel is this instance, or lies
    behind the point. 0 for a camera that does not frame the object at all."""
    scores = np.zeros(len(ev.cameras))
    for c, (cam, depth, label) in enumerate(zip(ev.cameras, ev.depth, ev.label)):
        u, v, z = project(cam, points)
        ok = in_frame(cam, u, v, z)
        if not ok.any():
            continue
        d, lab = depth[v[ok], u[ok]], label[v[ok], u[ok]]
        clear = (lab == instance) | (d > z[ok] - margin)
        scores[c] = clear.mean() * ok.mean()
    return scores
