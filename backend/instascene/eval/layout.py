"""`evaluate_layout(run_dir, gt_dir)`: the background a user is left with when every object is
moved aside, against the complete support surface (issue 18, the measuring part).

Scored twice: the observed background (RUN/background.ply) and, when the run was completed,
RUN/background_completed.ply (the observed background, then the surfels that close the
surface hidden under the objects).

Support surface (`support_of`), the table top in world coordinates (z up), from gt/instances.json:
  "support"     built-in scenes (`instascene synth`): {"kind": "disc", "center", "radius"};
  "background"  practice scenes: the table slab, the square |x|, |y| <= half_extent at z = top_z;
  neither       built-in scenes generated before "support" was recorded: a disc estimated from
                the ground-truth background Gaussians of point_cloud.ply (source "estimated").

Coverage (`support_alpha`, `coverage`): the support is sampled on a regular grid (cell centres;
spacing `spacing`, default max(2 mm, extent / 400)). At each sample the opacity of the surfels
is accumulated as a vertical ray through the sample would see it in 2DGS: the ray meets a
surfel's plane at tangent coordinates (u, v) and picks up o · exp(-(u²/s0² + v²/s1²) / 2)
(inside `sigmas` = 3 σ, and only where that meeting point lies within `height_tol` of the
plane); a = 1 - Π(1 - o_i g_i). A sample is covered when a >= `alpha_threshold` (0.5).
A surfel lying flat on the plane is thus its own Gaussian footprint; a tilted one covers
its projection; a vertical one covers nothing. The sum is splatted onto the grid in
vectorised chunks of (surfel, sample) pairs, every pair inside each surfel's 3 σ box, no cap
on the number of surfels per sample.

PSNR of the moved-aside layout, from the scene's own cameras (every `view_stride`-th):
prediction = the background splats alone, rendered with the project's rasterizer over the
scene's void colour; reference = the complete support surface alone:
  built-in  gt/background.ply (every table surfel, seen or not), rendered the same way;
  practice  the table slab rendered with pybullet's TinyRenderer, as the practice generator
            did (gt/scene.json scene_params: light, shadow, near/far; the slab of
            gt/instances.json "background"). Used only when it reproduces the scene's own
            images where the table is visible in them (gt/masks == 0 and on the table top):
            their PSNR (`reference_check`) must reach `reference_min_psnr` (28 dB), else the
            PSNR is null with a "psnr_note" (a reference that does not match the data would
            give a misleading number).
Pixels scored: where the reference shows the support surface (built-in: reference alpha
>= 0.5; practice: the slab's pixels whose ray meets the table top); PSNR per view, averaged
over the views that have such pixels. Without a usable reference PSNR is null with a
"psnr_note" saying why.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InstaSceneError
from ..io.splats import Splats
from .metrics import psnr
from .segmentation import GroundTruth, _device, jsonable, load_gt, read_json

MIN_SPACING = 0.002  # metres between coverage samples, at least
GRID_CELLS = 400  # ... or the support's extent / this, whichever is larger
MAX_CELLS = 8000  # samples per side at most (an explicit spacing may ask for more)
REFERENCE_MIN_PSNR = 28.0  # dB a rendered reference must reach against the scene's images
PYBULLET_VOID = (1.0, 1.0, 1.0)  # TinyRenderer's clear colour (the practice images' void)


# ------------------------------------------------------------------ the support surface


@dataclass
class Support:
    kind: str  # "disc" or "square" (axis-aligned), horizontal, in the plane z = center[2]
    center: np.ndarray  # [3] world
    size: float  # radius (disc) or half extent (square)
    source: str  # where it came from: "gt/instances.json" or "estimated"

    @property
    def z(self) -> float:
        return float(self.center[2])

    @property
    def extent(self) -> float:
        return 2.0 * self.size

    def contains(self, xy: np.ndarray) -> np.ndarray:
        d = np.asarray(xy, dtype=np.float64) - self.center[:2]
        if self.kind == "disc":
            return (d * d).sum(-1) <= self.size * self.size
        return (np.abs(d) <= self.size).all(-1)

    def grid(self, spacing: float | None = None):
        """Cell centres of a regular grid over the bounding square: (x0, y0) of cell (0, 0),
        the spacing used, n (cells per side) and the [n, n] mask of cells on the support
        (row = y index)."""
        want = max(MIN_SPACING, self.extent / GRID_CELLS) if spacing is None else float(spacing)
        n = max(1, int(math.ceil(self.extent / want - 1e-9)))
        if n > MAX_CELLS:
            raise InstaSceneError(f"a coverage grid spacing of {want:g} m gives {n} x {n} samples over the "
                                  f"{self.extent:g} m support (at most {MAX_CELLS} per side): use a larger spacing")
        s = self.extent / n
        x0, y0 = self.center[0] - self.size + 0.5 * s, self.center[1] - self.size + 0.5 * s
        c = np.arange(n) * s
        xy = np.stack(np.meshgrid(x0 + c, y0 + c), -1)  # [n(y), n(x), 2]
        return x0, y0, s, n, self.contains(xy)

    def ray_hits(self, cam) -> np.ndarray:
        """[H, W] pixels whose ray (through the pixel centre) meets the support from above."""
        j, i = np.meshgrid(np.arange(cam.width) + 0.5, np.arange(cam.height) + 0.5)
        pix = np.stack([j, i, np.ones_like(j)], -1).reshape(-1, 3)
        d = (pix @ np.linalg.inv(cam.K).T) @ cam.world_to_camera[:3, :3]  # world directions
        o = cam.center
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (self.z - o[2]) / d[:, 2]
        hit = np.isfinite(t) & (t > 0) & (o[2] > self.z)
        xy = o[:2] + np.where(hit, t, 0)[:, None] * d[:, :2]
        return (hit & self.contains(xy)).reshape(cam.height, cam.width)

    def to_dict(self) -> dict:
        key = "radius" if self.kind == "disc" else "half_extent"
        return {"kind": self.kind, "center": [round(float(v), 6) for v in self.center],
                key: round(float(self.size), 6), "z": self.z, "source": self.source}


def support_of(gt: GroundTruth, scene_splats: Splats | None = None) -> Support:
    """The ground-truth support surface of a scene (see the module docstring)."""
    path = gt.root / "instances.json"
    data = read_json(path, "ground-truth instances file")
    data = data if isinstance(data, dict) else {}
    sup = data.get("support")
    try:
        if isinstance(sup, dict):
            kind = sup.get("kind")
            if kind == "disc":
                return Support("disc", _vec3(sup["center"]), _positive(sup["radius"]), "gt/instances.json")
            if kind == "square":
                return Support("square", _vec3(sup["center"]), _positive(sup["half_extent"]), "gt/instances.json")
            raise InstaSceneError(f'"support" has kind {kind!r}; expected "disc" or "square"', path)
        bg = data.get("background")
        if isinstance(bg, dict) and "half_extent" in bg:
            z = float(bg.get("top_z", 0.0))
            c = bg.get("center", (0.0, 0.0))
            return Support("square", np.array([float(c[0]), float(c[1]), z]), _positive(bg["half_extent"]),
                           "gt/instances.json")
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise InstaSceneError(f"malformed support surface description ({type(e).__name__}: {e})", path) from None
    return _estimate_disc(gt, scene_splats)


def _vec3(v) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64).reshape(-1)
    if a.shape != (3,) or not np.isfinite(a).all():
        raise ValueError(f"expected 3 finite numbers, got {v!r}")
    return a


def _positive(v) -> float:
    x = float(v)
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"expected a positive size, got {v!r}")
    return x


def _estimate_disc(gt: GroundTruth, scene_splats: Splats | None) -> Support:
    """Built-in scenes without a recorded support: the table is a disc of surfels at z = 0
    sampled uniformly; its observed part (the GT background Gaussians) keeps the rim, so the
    centre is the middle of their xy bounds and the radius a high quantile of the distances,
    corrected for a uniform disc (quantile q of r is R √q)."""
    if scene_splats is None:
        scene_splats = _scene_splats(gt)
    if len(scene_splats) != len(gt.gaussian_instances):
        raise InstaSceneError(f"has {len(scene_splats)} Gaussians but gt/{gt.labels_file} has "
                              f"{len(gt.gaussian_instances)} entries", gt.scene_dir / "point_cloud.ply")
    bg = scene_splats.means[gt.gaussian_instances < 0].astype(np.float64)
    if len(bg) < 10:
        raise InstaSceneError("no support surface recorded (no \"support\" or \"background\" in instances.json) "
                              f"and too few ground-truth background Gaussians ({len(bg)}) to estimate it",
                              gt.root / "instances.json")
    lo, hi = bg[:, :2].min(0), bg[:, :2].max(0)
    c = 0.5 * (lo + hi)
    q = 0.999
    r = float(np.quantile(np.linalg.norm(bg[:, :2] - c, axis=1), q)) / math.sqrt(q)
    return Support("disc", np.array([c[0], c[1], float(np.median(bg[:, 2]))]), r, "estimated")


def _scene_splats(gt: GroundTruth) -> Splats:
    from ..io.scene import load_scene

    return load_scene(gt.scene_dir).require_splats()


# ------------------------------------------------------------------ coverage


def support_alpha(
    splats: Splats,
    support: Support,
    spacing: float | None = None,
    *,
    sigmas: float = 3.0,
    height_tol: float = 0.005,
    max_pairs: int = 2_000_000,
):
    """Accumulated opacity of `splats` over the support's grid (see the module docstring).
    Returns (alpha [n, n] over the bounding square, inside [n, n] mask, spacing)."""
    from ..io.rotations import quat_to_rotmat

    x0, y0, s, n, inside = support.grid(spacing)
    log_t = np.zeros(n * n)
    if len(splats) == 0:
        return np.zeros((n, n)), inside, s
    sp = splats.to_2dgs()
    mu = sp.means.astype(np.float64)
    sc = np.maximum(sp.scales().astype(np.float64), 1e-12)
    op = sp.opacities().astype(np.float64)
    R = quat_to_rotmat(sp.unit_quats().astype(np.float64))
    det = R[:, 0, 0] * R[:, 1, 1] - R[:, 0, 1] * R[:, 1, 0]  # = the normal's z: projected area / true area
    reach = sigmas * sc.max(1)
    keep = (op > 1e-4) & (np.abs(det) > 1e-6) & (np.abs(mu[:, 2] - support.z) <= height_tol + reach)
    keep &= np.isfinite(mu).all(1)
    if not keep.any():
        return np.zeros((n, n)), inside, s
    mu, sc, op, R, det = mu[keep], sc[keep], op[keep], R[keep], det[keep]
    # where the vertical ray through a sample (offset d = (dx, dy) from the centre) meets the
    # surfel's plane: tangent coordinates (u, v) = M⁻¹ d with M = the tangent axes' xy parts;
    # per surfel, the linear maps d -> (u / s0, v / s1) and d -> height of that point
    c00, c01 = R[:, 1, 1] / det / sc[:, 0], -R[:, 0, 1] / det / sc[:, 0]
    c10, c11 = -R[:, 1, 0] / det / sc[:, 1], R[:, 0, 0] / det / sc[:, 1]
    e0 = (c00 * sc[:, 0]) * R[:, 2, 0] + (c10 * sc[:, 1]) * R[:, 2, 1]
    e1 = (c01 * sc[:, 0]) * R[:, 2, 0] + (c11 * sc[:, 1]) * R[:, 2, 1]
    dz = mu[:, 2] - support.z
    # bounding box of the 3 σ ellipse projected onto the plane, in grid cells
    hx = sigmas * np.hypot(R[:, 0, 0] * sc[:, 0], R[:, 0, 1] * sc[:, 1])
    hy = sigmas * np.hypot(R[:, 1, 0] * sc[:, 0], R[:, 1, 1] * sc[:, 1])
    i0 = np.clip(np.ceil((mu[:, 0] - hx - x0) / s), 0, n).astype(np.int64)
    i1 = np.clip(np.floor((mu[:, 0] + hx - x0) / s), -1, n - 1).astype(np.int64)
    j0 = np.clip(np.ceil((mu[:, 1] - hy - y0) / s), 0, n).astype(np.int64)
    j1 = np.clip(np.floor((mu[:, 1] + hy - y0) / s), -1, n - 1).astype(np.int64)
    w, h = np.maximum(i1 - i0 + 1, 0), np.maximum(j1 - j0 + 1, 0)
    counts = w * h
    ends = np.cumsum(counts)
    start = 0
    while start < len(counts):  # chunks of whole surfels, about max_pairs (surfel, sample) pairs each
        base = int(ends[start - 1]) if start else 0
        stop = max(int(np.searchsorted(ends, base + max_pairs, side="right")), start + 1)
        c = counts[start:stop]
        total = int(c.sum())
        if total > 0:
            rep = np.repeat(np.arange(start, stop), c)
            local = np.arange(total) - np.repeat(np.cumsum(c) - c, c)
            wr = w[rep]
            gi = i0[rep] + local % wr
            gj = j0[rep] + local // wr
            dx = x0 + gi * s - mu[rep, 0]
            dy = y0 + gj * s - mu[rep, 1]
            q = (c00[rep] * dx + c01[rep] * dy) ** 2 + (c10[rep] * dx + c11[rep] * dy) ** 2
            ok = (q <= sigmas * sigmas) & (np.abs(dz[rep] + e0[rep] * dx + e1[rep] * dy) <= height_tol)
            a = np.minimum(op[rep[ok]] * np.exp(-0.5 * q[ok]), 1.0 - 1e-7)
            log_t += np.bincount(gj[ok] * n + gi[ok], weights=np.log1p(-a), minlength=n * n)
        start = stop
    return (1.0 - np.exp(log_t)).reshape(n, n), inside, s


def coverage(splats: Splats, support: Support, spacing: float | None = None, *, alpha_threshold: float = 0.5,
             **kw) -> dict:
    """Share of the support's samples whose accumulated surfel opacity reaches `alpha_threshold`."""
    alpha, inside, s = support_alpha(splats, support, spacing, **kw)
    a = alpha[inside]
    return {"fraction": float((a >= alpha_threshold).mean()) if a.size else None,
            "mean_alpha": float(a.mean()) if a.size else None, "samples": int(a.size), "spacing": float(s)}


# ------------------------------------------------------------------ rendering


class _SplatReference:
    """The complete support surface as splats (built-in: gt/background.ply)."""

    name = "gt/background.ply"

    def __init__(self, splats: Splats, void, device, backend):
        import torch

        from ..render import Gaussians

        self.torch, self.device, self.backend = torch, device, backend
        self.void = tuple(float(c) for c in void)
        self.g = Gaussians.from_splats(splats, device=device)

    def render(self, cam, support: Support):
        from ..render import View, rasterize

        with self.torch.no_grad():
            out = rasterize(self.g, View.from_camera(cam, device=self.device),
                            background=self.torch.tensor(self.void, device=self.device), backend=self.backend)
        return out.rgb.clamp(0, 1).cpu().numpy(), out.alpha.cpu().numpy() >= 0.5

    def close(self):
        pass


def _import_pybullet():
    """pybullet prints its build time on stdout when first imported; `eval` keeps stdout JSON."""
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        import pybullet
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    return pybullet


class _PybulletReference:
    """The practice generator's table slab, rendered with pybullet's TinyRenderer."""

    name = "pybullet TinyRenderer"
    void = PYBULLET_VOID

    def __init__(self, background: dict, params: dict):
        import pybullet_data

        p = _import_pybullet()

        self.p = p
        obj = Path(pybullet_data.getDataPath()) / str(background["source_obj"])
        he, th = float(background["half_extent"]), float(background.get("thickness", 0.04))
        top = float(background.get("top_z", 0.0))
        self.near, self.far = float(params.get("near", 0.02)), float(params.get("far", 5.0))
        self.light = dict(lightDirection=[float(x) for x in params["light_direction"]],
                          lightAmbientCoeff=float(params["light_ambient"]),
                          lightDiffuseCoeff=float(params["light_diffuse"]),
                          lightSpecularCoeff=float(params["light_specular"]),
                          shadow=int(params.get("shadow", 1)))
        if not obj.is_file():
            raise FileNotFoundError(obj)
        self.client = p.connect(p.DIRECT)
        vis = p.createVisualShape(p.GEOM_MESH, fileName=str(obj), meshScale=[2 * he, 2 * he, th],
                                  physicsClientId=self.client)
        self.body = p.createMultiBody(0, -1, vis, basePosition=[0, 0, top - th / 2], physicsClientId=self.client)

    def render(self, cam, support: Support):
        W, H, K = cam.width, cam.height, cam.K
        n, f = self.near, self.far
        P = np.zeros((4, 4))  # OpenGL projection of the pinhole camera
        P[0, 0], P[1, 1] = 2 * K[0, 0] / W, 2 * K[1, 1] / H
        P[0, 2], P[1, 2] = 1 - 2 * K[0, 2] / W, 2 * K[1, 2] / H - 1
        P[2, 2], P[2, 3], P[3, 2] = -(f + n) / (f - n), -2 * f * n / (f - n), -1
        V = np.diag([1.0, -1.0, -1.0, 1.0]) @ cam.world_to_camera  # OpenCV -> OpenGL camera axes
        out = self.p.getCameraImage(W, H, V.T.reshape(-1).tolist(), P.T.reshape(-1).tolist(),
                                    renderer=self.p.ER_TINY_RENDERER, physicsClientId=self.client, **self.light)
        rgb = np.reshape(np.asarray(out[2], dtype=np.uint8), (H, W, 4))[..., :3].astype(np.float64) / 255.0
        seg = np.reshape(np.asarray(out[4]), (H, W))
        return rgb, (seg == self.body) & support.ray_hits(cam)

    def close(self):
        try:
            self.p.disconnect(self.client)
        except Exception:  # already gone
            pass


def _reference(gt: GroundTruth, device: str, backend: str):
    """(reference renderer or None, note): what the moved-aside layout is compared with."""
    from ..io.ply import read_ply

    path = gt.root / "background.ply"
    if path.is_file():
        from ..synth.generate import BACKGROUND_RGB

        return _SplatReference(read_ply(path), BACKGROUND_RGB, device, backend), None
    data = read_json(gt.root / "instances.json", "ground-truth instances file")
    bg = data.get("background") if isinstance(data, dict) else None
    if isinstance(bg, dict) and "source_obj" in bg and "half_extent" in bg:
        scene_json = gt.root / "scene.json"
        if not scene_json.is_file():
            return None, "no reference: gt/scene.json (the renderer's parameters) not found"
        params = read_json(scene_json, "ground-truth scene file")
        params = params.get("scene_params") if isinstance(params, dict) else None
        try:
            return _PybulletReference(bg, params or {}), None
        except ImportError:
            return None, "no reference: pybullet is not installed (needed to render the practice scenes' table)"
        except FileNotFoundError as e:
            return None, f"no reference: the table mesh {e} is not in pybullet_data"
        except (KeyError, TypeError, ValueError) as e:
            return None, f"no reference: gt/scene.json scene_params lack the lighting ({type(e).__name__}: {e})"
    if isinstance(data, dict) and "support" not in data:
        return None, ("no reference: gt/background.ply (the complete table surfels) not found; scenes made by "
                      "`instascene synth` before it was written lack it: generate the scene again")
    return None, "no reference: gt/background.ply not found"


def _layout_psnr(gt: GroundTruth, support: Support, preds: dict[str, Splats], *, view_stride, device, backend,
                 reference_min_psnr) -> dict:
    import torch

    from ..io.scene import load_scene
    from ..render import Gaussians, View, rasterize

    out = {"reference": None, "views": 0, "pixels": 0, **{k: None for k in preds}}
    scene = load_scene(gt.scene_dir, load_splats=False)
    cams = scene.require_cameras()[:: max(int(view_stride), 1)]
    dev = _device(device)
    ref, note = _reference(gt, dev, backend)
    if ref is None:
        out["note"] = note
        return out
    out["reference"] = ref.name
    try:
        void = torch.tensor(ref.void, device=dev)
        gs = {k: Gaussians.from_splats(s, device=dev) for k, s in preds.items()}
        per_view = {k: [] for k in preds}
        check_err, check_n = 0.0, 0
        used, pixels = 0, 0
        for cam in cams:
            ref_rgb, mask = ref.render(cam, support)
            if isinstance(ref, _PybulletReference):  # does the reference reproduce the scene's images?
                truth = gt.view_labels(cam.name)
                if truth is not None and cam.name in scene.image_paths:
                    seen = mask & (truth == 0)
                    real = scene.image(cam.name, background=(255, 255, 255)).astype(np.float64) / 255.0
                    d = (real - ref_rgb)[seen]
                    check_err += float((d * d).sum())
                    check_n += d.size
            if not mask.any():
                continue
            used += 1
            pixels += int(mask.sum())
            view = View.from_camera(cam, device=dev)
            for k, g in gs.items():
                with torch.no_grad():
                    rgb = rasterize(g, view, background=void, backend=backend).rgb.clamp(0, 1).cpu().numpy()
                per_view[k].append(psnr(rgb, ref_rgb, mask))
    finally:
        ref.close()
    out["views"], out["pixels"] = used, pixels
    if isinstance(ref, _PybulletReference):
        check = 10 * math.log10(1.0 / max(check_err / check_n, 1e-10)) if check_n else None
        out["reference_check"] = {"psnr": check, "threshold": reference_min_psnr,
                                  "pixels": check_n // 3, "what": "reference vs the scene's images where "
                                  "they show the table (gt/masks == 0, on the table top)"}
        if check is None or check < reference_min_psnr:
            out["note"] = ("the pybullet rendering of the ground-truth table does not reproduce the scene's images "
                           f"where they show the table ({'no such pixels' if check is None else f'{check:.1f} dB'}"
                           f" < {reference_min_psnr:g} dB): no trustworthy reference, PSNR not reported")
            return out
    for k, vals in per_view.items():
        vals = [v for v in vals if v is not None]
        out[k] = float(np.mean(vals)) if vals else None
    if used == 0:
        out["note"] = "the support surface is visible in none of the views"
    return out


# ------------------------------------------------------------------ evaluation


def load_run_background(run_dir: str | os.PathLike) -> tuple[Splats, Splats | None]:
    """RUN/background.ply (required) and RUN/background_completed.ply (None when absent)."""
    from ..io.ply import read_ply

    run = Path(run_dir)
    if not run.is_dir():
        raise InstaSceneError("run folder not found", run)
    path = run / "background.ply"
    if not path.is_file():
        raise InstaSceneError("background.ply not found: not a run folder of `instascene segment` "
                              "(it writes the observed background there)", path)
    observed = read_ply(path)
    completed = read_ply(run / "background_completed.ply") if (run / "background_completed.ply").is_file() else None
    return observed, completed


def evaluate_layout(
    run_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    *,
    spacing: float | None = None,
    alpha_threshold: float = 0.5,
    height_tol: float = 0.005,
    render: bool = True,
    view_stride: int = 1,
    reference_min_psnr: float = REFERENCE_MIN_PSNR,
    device: str = "auto",
    backend: str = "auto",
) -> dict:
    """Coverage of the support surface and PSNR of the moved-aside layout, observed and
    completed background (JSON-ready; see the module docstring). `render=False` skips PSNR."""
    if spacing is not None and not (math.isfinite(spacing) and spacing > 0):
        raise InstaSceneError(f"spacing must be a positive number of metres, got {spacing}")
    t0 = time.perf_counter()
    run = Path(run_dir)
    observed, completed = load_run_background(run)
    gt = load_gt(gt_dir)
    support = support_of(gt)
    preds = {"observed": observed} if completed is None else {"observed": observed, "completed": completed}

    t_cov = time.perf_counter()
    cov = {k: coverage(s, support, spacing, alpha_threshold=alpha_threshold, height_tol=height_tol)
           for k, s in preds.items()}
    first = cov["observed"]
    result = {
        "run": str(run),
        "gt": str(gt.root),
        "support": support.to_dict(),
        "gaussians": {"observed": len(observed), "completed": None if completed is None else len(completed)},
        "coverage": {
            "observed": first["fraction"],
            "completed": cov["completed"]["fraction"] if completed is not None else None,
            "mean_alpha": {k: c["mean_alpha"] for k, c in cov.items()},
            "samples": first["samples"],
            "spacing": first["spacing"],
            "alpha_threshold": alpha_threshold,
            "height_tol": height_tol,
            "seconds": round(time.perf_counter() - t_cov, 3),
        },
        "psnr": {"observed": None, "completed": None},
        "views": 0,
    }
    if support.source == "estimated":
        result["support_note"] = ("gt/instances.json records no support surface (scene made before it was); "
                                  "the table disc was estimated from the ground-truth background Gaussians")
    if render:
        t_r = time.perf_counter()
        r = _layout_psnr(gt, support, preds, view_stride=view_stride, device=device, backend=backend,
                         reference_min_psnr=reference_min_psnr)
        note = r.pop("note", None)
        result["psnr"] = {"observed": r.pop("observed"), "completed": r.pop("completed", None), **r,
                          "view_stride": view_stride, "seconds": round(time.perf_counter() - t_r, 3)}
        result["views"] = r["views"]
        if note:
            result["psnr_note"] = note
    else:
        result["psnr_note"] = "not rendered (--no-render)"
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return jsonable(result)
