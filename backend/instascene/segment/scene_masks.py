"""Masks for a whole scene: which views, what they look like, and `instascene masks` (issue 19).

SAM costs seconds per view on a CPU, and neighbouring views of a dense capture add little:
a scene with many views gets masks for a well-spread subset (farthest-point sampling of
the camera centres); the segmentation skips views without a mask. Each view's image is its
photo (a render of the splats where it has none), and its depth the splats' rendered
median depth, so no SAM prompt sits on a depth edge and no mask crosses one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ..errors import InstaSceneError

MAX_VIEWS = 64


def spread_views(cameras, n: int) -> list[int]:
    """Indices (sorted) of min(n, len) cameras whose centres are spread out: farthest-point
    sampling from the first camera, so the same scene always gives the same subset."""
    if n >= len(cameras):
        return list(range(len(cameras)))
    centres = np.array([c.center for c in cameras], np.float64)
    chosen = [0]
    dist = np.linalg.norm(centres - centres[0], axis=1)
    for _ in range(n - 1):
        i = int(np.argmax(dist))
        chosen.append(i)
        dist = np.minimum(dist, np.linalg.norm(centres - centres[i], axis=1))
    return sorted(chosen)


def view_pixels(scene, cams, g, views, with_depth: bool = True):
    """(images uint8 [H, W, 3], depths float [H, W] or None) of the given views: the photo
    where the scene has one, else the splats' render; depth rendered from the splats."""
    import torch

    from ..render import rasterize

    images, depths = [], []
    for c, v in zip(cams, views):
        out = None
        if with_depth or c.name not in scene.image_paths:
            with torch.no_grad():
                out = rasterize(g, v, background=torch.zeros(3, device=g.means.device))
        images.append(scene.image(c.name) if c.name in scene.image_paths
                      else (out.rgb.clamp(0, 1).cpu().numpy() * 255).astype(np.uint8))
        depths.append(out.median_depth.cpu().numpy() if with_depth else None)
    return images, depths


def write_scene_masks(scene_path, sam_dir=None, max_views: int = MAX_VIEWS, force: bool = False,
                      quiet: bool = False, params=None) -> dict:
    """`instascene masks`: SAM label maps for a spread subset of the scene's views, written
    to `sam/mask/<stem>.png` one by one (each whole or not at all). Existing masks are kept
    unless `force`; then masks of views not redone are removed at the end, so the folder
    never mixes two runs' masks."""
    from ..io.masks import write_label_map
    from ..io.scene import load_scene
    from ..progress import bar
    from ..render import Gaussians, View
    from .mask_sources import sam_folder
    from .sam_onnx import SamOnnx, auto_masks

    if max_views < 1:
        raise InstaSceneError(f"--views must be at least 1, got {max_views}")
    folder = sam_folder(sam_dir)
    if folder is None:
        raise InstaSceneError("no SAM model: the default is not installed (run `instascene models fetch`) and "
                              "no --sam DIR was given")
    sam = SamOnnx(folder)  # a wrong model fails before the scene is read
    root = Path(scene_path)
    mask_dir = root / "sam" / "mask"
    old = sorted(mask_dir.glob("*.png")) if mask_dir.is_dir() else []
    if old and not force:
        raise InstaSceneError(f"{len(old)} masks exist already in {mask_dir}; pass --force to replace them")
    scene = load_scene(root)
    cams = scene.require_cameras()
    splats = scene.require_splats()
    pick = spread_views(cams, max_views)
    g = Gaussians.from_splats(splats, device="cpu")
    written, seconds, counts = [], [], []
    with bar(len(pick), "masks", "view", quiet) as views_done:
        for i in pick:
            c = cams[i]
            t = time.perf_counter()
            (image,), (depth,) = view_pixels(scene, [c], g, [View.from_camera(c, device="cpu")])
            labels = auto_masks(sam, image, depth, params)
            seconds.append(time.perf_counter() - t)
            path = mask_dir / f"{c.name}.png"
            write_label_map(path, labels)
            written.append(path)
            counts.append(int(labels.max()))
            views_done.update(1)
    kept = set(written)
    stale = [p for p in old if p not in kept]
    for p in stale:
        p.unlink(missing_ok=True)
    return {"scene": os.fspath(root), "model": os.fspath(folder), "views": len(written), "of": len(cams),
            "masks_per_view": round(float(np.mean(counts)), 1) if counts else 0,
            "seconds_per_view": round(float(np.mean(seconds)), 2) if seconds else 0, "removed_stale": len(stale)}

