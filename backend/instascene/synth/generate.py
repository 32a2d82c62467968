"""`instascene synth`: write a cluttered tabletop scene with ground truth, deterministically.

The folder is the InstaScene data layout (so the same loader reads generated and real
scenes) plus `gt/`:

  point_cloud.ply          2DGS surfels on every surface some camera saw
  images/frame_NNNN.png    the views, rendered from those surfels (so consistent with them)
  sparse/0/*.bin           COLMAP model (PINHOLE), also cameras.json
  sam/mask/frame_NNNN.png  SAM-like noisy label maps (see sam_noise.py)
  gt/instances.json        per object: id, name, source mesh, watertight, unseen fraction, bbox, centroid
  gt/gaussian_instances.npy  int32 per Gaussian of point_cloud.ply, -1 = background (table)
  gt/views/frame_NNNN.png  instance map per view (0 = background, k + 1 = object k): the
                           object whose surfel is in front at each pixel of the image
  gt/meshes/<k>.ply        complete object mesh, world coordinates, watertight
  gt/objects/<k>.ply       all surfels of object k, seen or not (extra property `seen`)
  gt/background.ply        all table surfels, seen or not (extra property `seen`): the complete
                           support surface, as it looks with every object moved aside
  gt/instances.json "support"  that surface: {"kind": "disc", "center": [x, y, z], "radius": r}

Written into a temporary folder and renamed into place at the end: a reader never sees
half a scene.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InstaSceneError
from ..io.atomic import atomic_write, replace_folder
from ..io.cameras_json import write_cameras_json
from ..io.colmap import write_colmap
from ..io.masks import write_label_map
from ..io.ply import write_ply
from .capture import TrueRenderer, handheld_rings
from .objects import choose_objects, data_path
from .physics import settle
from .sam_noise import sam_like_masks
from .surfels import SurfelSet, object_surfels, seen_by, table_surfels

BACKGROUND_RGB = (0.86, 0.88, 0.91)  # the wall behind the table


@dataclass
class SynthOptions:
    seed: int = 0
    objects: int = 6
    views: int = 48
    width: int = 256
    height: int = 192
    mask_noise: float = 0.5
    object_spacing: float = 0.0025  # metres between surfels on objects
    table_spacing: float = 0.004
    detail: float = 1.0  # both spacings divided by this: detail² times the Gaussians (a real capture's 300k+)


def _progress(stage: str, total: int):
    from ..progress import bar

    return bar(total, f"synth: {stage}", "view")


def generate_scene(out: str | os.PathLike, opts: SynthOptions, force: bool = False) -> dict:
    """Generate the scene into `out`; returns a short summary."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise InstaSceneError("folder exists and is not empty (use --force to replace it)", out)
    if opts.objects < 1 or opts.views < 3 or opts.width < 16 or opts.height < 16:
        raise InstaSceneError("need at least 1 object, 3 views and 16x16 pixels")
    if not 0.25 <= opts.detail <= 8.0:
        raise InstaSceneError(f"--detail must be in [0.25, 8], got {opts.detail}")
    if not 0.0 <= opts.mask_noise <= 1.0:
        raise InstaSceneError(f"--mask-noise must be in [0, 1], got {opts.mask_noise}")
    rng = np.random.default_rng(opts.seed)

    objects = choose_objects(opts.objects, rng)
    poses = settle(objects, rng)
    meshes = [o.mesh.copy().apply_transform(P) for o, P in zip(objects, poses)]
    all_v = np.concatenate([m.vertices for m in meshes])
    center = np.array([*all_v[:, :2].mean(0), 0.0])
    spread = float(np.linalg.norm(all_v[:, :2] - center[:2], axis=1).max())
    height = float(all_v[:, 2].max())

    surfels = [object_surfels(o, P, i, opts.object_spacing / opts.detail, rng)
               for i, (o, P) in enumerate(zip(objects, poses))]
    table_tex = np.asarray(Image.open(data_path() / "table" / "table.png").convert("RGB"), np.float32) / 255.0
    table_radius = 1.8 * spread + 0.05
    surfels.append(table_surfels(center, table_radius, opts.table_spacing / opts.detail, table_tex, rng))
    support = {"kind": "disc", "center": center.round(6).tolist(), "radius": round(table_radius, 6)}
    S = SurfelSet.concat(surfels)

    radius = max(0.3, 2.2 * spread + height)
    cams = handheld_rings(center + [0, 0, 0.4 * height], radius, opts.views, opts.width, opts.height, rng)

    renderer = TrueRenderer(meshes)
    try:
        body_of_owner = np.array([renderer.table] + renderer.bodies)
        seen = np.zeros(len(S), bool)
        bar = _progress("visibility", len(cams))
        for cam in cams:
            seen |= seen_by(cam, renderer.render(cam), S, body_of_owner)
            bar.update()
        bar.close()
    finally:
        renderer.close()

    visible = S.subset(seen)
    splats = visible.to_splats()
    gaussian_instances = visible.owner.astype(np.int32)

    with replace_folder(out) as tmp:
        write_ply(tmp / "point_cloud.ply", splats)
        true_maps, depths = _write_views(tmp, cams, splats, gaussian_instances)
        pts = visible.means[:: max(1, len(visible) // 5000)]
        cols = (visible.colors[:: max(1, len(visible) // 5000)] * 255).round().astype(np.uint8)
        write_colmap(tmp / "sparse" / "0", cams, binary=True, points=(pts, cols))
        write_cameras_json(tmp / "cameras.json", cams)
        _write_masks(tmp, cams, true_maps, depths, objects, poses, opts.mask_noise, rng)
        summary = _write_gt(tmp / "gt", objects, poses, meshes, S, seen, gaussian_instances, cams, true_maps,
                            support)
        with atomic_write(tmp / "synth.json", "w") as f:
            json.dump({"options": asdict(opts), "gaussians": len(splats), **summary}, f, indent=2)
    return {"gaussians": len(splats), "cameras": len(cams), **summary}


def _write_views(root: Path, cams, splats, gaussian_instances):
    """Render every view from the splats: the image, and per pixel the instance of the
    surfel where transmittance crosses 0.5 (the ground-truth map, consistent with the
    image by construction) and the median depth (for SAM-like part splits)."""
    import torch

    from ..render import Gaussians, View, rasterize

    g = Gaussians.from_splats(splats)
    bg = torch.tensor(BACKGROUND_RGB)
    owner = torch.from_numpy(gaussian_instances).long() + 1  # 0 = background
    maps, depths = [], []
    bar = _progress("images", len(cams))
    for cam in cams:
        view = View.from_camera(cam)
        with torch.no_grad():
            out = rasterize(g, view, background=bg)  # one pass: the image and the crossing Gaussians
        img = (out.rgb.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        with atomic_write(root / "images" / cam.image_name) as f:
            Image.fromarray(img).save(f, format="PNG")
        front = out.crossing
        labels = torch.where(front >= 0, owner[front.clamp_min(0)], 0)
        maps.append(labels.numpy().astype(np.int32))
        depths.append(out.median_depth.numpy().astype(np.float64))
        bar.update()
    bar.close()
    return maps, depths


def _write_masks(root: Path, cams, true_maps, depths, objects, poses, noise: float, rng) -> None:
    # two or three candidate part planes per object, fixed for the scene (SAM's parts are
    # semantic: the same few cuts recur), one of which a view may use
    planes = {}
    for k in range(len(objects)):
        n = rng.normal(size=(int(rng.integers(2, 4)), 3))
        planes[k] = list(n / np.linalg.norm(n, axis=1, keepdims=True))
    for cam, inst, depth in zip(cams, true_maps, depths):
        H, W = inst.shape
        v, u = np.mgrid[0:H, 0:W]
        xc = np.stack([(u + 0.5 - cam.cx) / cam.fx * depth, (v + 0.5 - cam.cy) / cam.fy * depth, depth], -1)
        c2w = cam.camera_to_world
        world = xc @ c2w[:3, :3].T + c2w[:3, 3]
        local = {}
        for k, P in enumerate(poses):
            sel = inst == k + 1
            local[k] = (world[sel] - P[:3, 3]) @ P[:3, :3]
        labels = sam_like_masks(inst, local, noise, rng, planes)
        write_label_map(root / "sam" / "mask" / f"{cam.name}.png", labels)


def _write_gt(gt: Path, objects, poses, meshes, S: SurfelSet, seen, gaussian_instances, cams, true_maps,
              support: dict) -> dict:
    gt.mkdir(parents=True, exist_ok=True)
    with atomic_write(gt / "gaussian_instances.npy") as f:
        np.save(f, gaussian_instances)
    for cam, inst in zip(cams, true_maps):
        write_label_map(gt / "views" / f"{cam.name}.png", inst)
    records = []
    for k, (o, mesh) in enumerate(zip(objects, meshes)):
        with atomic_write(gt / "meshes" / f"{k}.ply") as f:
            f.write(mesh.export(file_type="ply"))
        mine = S.owner == k
        full = S.subset(mine).to_splats()
        full.extra["seen"] = seen[mine].astype(np.float32)
        write_ply(gt / "objects" / f"{k}.ply", full)
        lo, hi = mesh.bounds
        records.append({
            "id": k,
            "name": o.name,
            "source": f"pybullet_data/{o.source}",
            "watertight": bool(mesh.is_watertight),
            "unseen_fraction": round(float(1.0 - seen[mine].mean()), 4),
            "bbox_min": lo.round(6).tolist(),
            "bbox_max": hi.round(6).tolist(),
            "centroid": mesh.centroid.round(6).tolist(),
            "observed_gaussians": int((gaussian_instances == k).sum()),
        })
    table = S.owner == -1
    full = S.subset(table).to_splats()
    full.extra["seen"] = seen[table].astype(np.float32)
    write_ply(gt / "background.ply", full)
    with atomic_write(gt / "instances.json", "w") as f:
        json.dump({"objects": records, "background_id": -1, "support": support}, f, indent=2)
    return {"objects": [{"id": r["id"], "name": r["name"], "unseen_fraction": r["unseen_fraction"]} for r in records]}
