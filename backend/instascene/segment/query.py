"""Click queries on a segmentation run folder, shared by `instascene query` and POST /query.

Loading a run (the scene's PLY, labels, features, a KD-tree) costs far more than a
query, so the last two runs stay loaded, keyed by their path and the mtime of
labels.npy (a run segmented again is reloaded).

A 3D click with no `max_distance` is limited to `SPACINGS` times the scene's median
Gaussian spacing: a cursor in empty space selects nothing instead of the nearest
Gaussian a metre away.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

from ..errors import InstaSceneError
from .instances import gaussian_at_pixel, gaussian_near_point, query_instance

RUN_FILES = ("labels.npy", "features.npy", "instances.json")
SPACINGS = 5.0
CACHE_SIZE = 2


@dataclass
class LoadedRun:
    scene: object  # io.scene.Scene
    labels: np.ndarray
    features: torch.Tensor
    tree: cKDTree
    spacing: float  # median distance between neighbouring Gaussians
    _gaussians: object = None

    def gaussians(self):
        """The scene as render.Gaussians, built on the first pixel query only."""
        if self._gaussians is None:
            from ..render import Gaussians

            self._gaussians = Gaussians.from_splats(self.scene.splats)
        return self._gaussians


def run_scene_path(run_dir: str | os.PathLike) -> Path:
    """The scene a run was segmented from (instances.json "scene"); raises if `run_dir`
    is no segmentation run folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InstaSceneError("run folder not found", run_dir)
    for name in RUN_FILES:
        if not (run_dir / name).is_file():
            raise InstaSceneError(f"not a segmentation run folder (missing {name})", run_dir)
    try:
        scene = json.loads((run_dir / "instances.json").read_text()).get("scene")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        raise InstaSceneError(f"instances.json is unreadable ({e})", run_dir) from None
    if not isinstance(scene, str) or not scene:
        raise InstaSceneError("instances.json does not name the segmented scene ('scene')", run_dir)
    return Path(scene) if Path(scene).is_absolute() else run_dir / scene


def _load(run_dir: Path) -> LoadedRun:
    from ..io.scene import load_scene

    scene = load_scene(run_scene_path(run_dir))
    means = scene.require_splats().means
    try:
        labels = np.load(run_dir / "labels.npy", allow_pickle=False)
        features = torch.from_numpy(np.load(run_dir / "features.npy", allow_pickle=False)).float()
    except (OSError, ValueError) as e:
        raise InstaSceneError(f"cannot read labels.npy / features.npy ({e})", run_dir) from None
    n = len(means)
    if labels.shape != (n,) or labels.dtype.kind not in "iu" or features.ndim != 2 or features.shape[0] != n:
        raise InstaSceneError(f"labels {labels.shape} / features {tuple(features.shape)} do not match the "
                              f"scene's {n} Gaussians (was the scene changed after segmenting?)", run_dir)
    tree = cKDTree(means)
    sample = means[:: max(1, len(means) // 20000)]
    spacing = float(np.median(tree.query(sample, k=2)[0][:, 1])) if len(means) > 1 else 0.0
    return LoadedRun(scene, labels, torch.nn.functional.normalize(features, dim=1), tree, spacing)


_cache: OrderedDict = OrderedDict()
_lock = threading.Lock()


def load_run(run_dir: str | os.PathLike) -> LoadedRun:
    """The run, loaded once per (path, labels.npy mtime); the last CACHE_SIZE stay loaded."""
    run_dir = Path(run_dir).resolve()
    run_scene_path(run_dir)  # the folder check, before stat
    key = (str(run_dir), (run_dir / "labels.npy").stat().st_mtime_ns)
    with _lock:  # one load at a time: two clicks on a cold run load it once
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        loaded = _load(run_dir)
        _cache[key] = loaded
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
        return loaded


def query_run(run_dir: str | os.PathLike, point=None, view: str | None = None, pixel=None,
              threshold: float = 0.8, max_distance: float | None = None) -> dict:
    """What a click selects, as plain JSON: a 3D `point` (scene world) or a `pixel` (x, y)
    of camera `view`. `max_distance` (points only): None = SPACINGS x the median spacing.

    -> {"gaussian", "instance" (-1 = background, None = nothing there), "instance_gaussians",
    "similar_gaussians" (counts), "similar_instances" {label: count of similar Gaussians}}."""
    if (point is None) == (pixel is None):
        raise InstaSceneError("give either a 3D point or a view and a pixel")
    run = load_run(run_dir)
    if pixel is not None:
        if not view:
            raise InstaSceneError("a pixel query needs a view (a camera name of the scene)")
        names = [c.name for c in run.scene.cameras]
        if view not in names:
            listed = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "") or "none"
            raise InstaSceneError(f"unknown view {view!r} (the scene's cameras: {listed})")
        from ..render import View

        cam = run.scene.camera(view)
        x, y = (int(v) for v in pixel)
        if not (0 <= x < cam.width and 0 <= y < cam.height):
            raise InstaSceneError(f"pixel ({x}, {y}) is outside view {view!r} ({cam.width}x{cam.height})")
        g = gaussian_at_pixel(run.gaussians(), View.from_camera(cam), x, y)
    else:
        p = np.asarray(point, np.float64).reshape(-1)
        if p.shape != (3,) or not np.isfinite(p).all():
            raise InstaSceneError(f"a point is three finite numbers, got {point!r}")
        limit = SPACINGS * run.spacing if max_distance is None else float(max_distance)
        g = gaussian_near_point(run.tree, p, limit)
    q = query_instance(run.labels, run.features, g, threshold)
    ids, counts = np.unique(run.labels[q["similar_gaussians"]], return_counts=True)
    return {"gaussian": q["gaussian"], "instance": q["instance"],
            "instance_gaussians": int(len(q["instance_gaussians"])),
            "similar_gaussians": int(len(q["similar_gaussians"])),
            "similar_instances": {str(int(k)): int(n) for k, n in zip(ids, counts)}}
