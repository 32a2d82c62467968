"""`evaluate_segmentation(run_dir, gt_dir)`: instance segmentation against a generated scene's truth.

3D: one-to-one (Hungarian) mIoU over GT objects on Gaussians — RUN/labels.npy against
    the per-Gaussian ground truth (metrics.hungarian_miou); also how much of the objects
    the run leaves in its background and how many Gaussians of other objects or of the
    background ride along inside its instances (`leak_rates`).
2D: every camera of the scene (the gt folder's parent) is rendered with the tracked
    rasterizer; a pixel's predicted label is the label of the Gaussian where its
    transmittance crosses 0.5 (no crossing = background). Predicted ids are mapped to GT
    ids with the 3D matching (unmatched instances count as no object), compared with
    gt/views/<stem>.png (0 = background, k + 1 = object k); intersections and unions are
    accumulated over all views, per object; mIoU = mean over the GT objects.

Two ground-truth layouts are read as they are (`load_gt`):
  built-in (`instascene synth`)  gt/gaussian_instances.npy, -1 = background, objects 0..K-1;
                                 gt/views/<camera>.png, 0 = background, k + 1 = object k
  official-style practice scenes gt/gaussian_instance.npy, 0 = table, objects 1..K;
                                 gt/masks/<camera>.png with the same ids
Both become one convention in memory: per Gaussian -1 = background, else the object id;
view maps 0 = background, id + 1 = object.

Also the loaders the completion evaluator shares: ground truth, run labels, run instances.
Every missing or malformed file is an InstaSceneError naming the file.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InstaSceneError
from .metrics import HungarianResult, hungarian_miou

# ------------------------------------------------------------------ loading


@dataclass
class GroundTruth:
    root: Path  # the gt/ folder
    objects: list[dict]  # gt/instances.json "objects", sorted by id
    gaussian_instances: np.ndarray  # [N] int32, -1 = background
    labels_file: str = "gaussian_instances.npy"  # the per-Gaussian file it was read from
    views_folder: str = "views"  # per-camera label maps
    view_offset: int = 1  # pixel value of object k in those maps is k + view_offset

    def view_labels(self, camera: str) -> np.ndarray | None:
        """The camera's GT instance map, 0 = background, k + 1 = object k; None if absent."""
        from ..io.masks import read_label_map

        path = self.root / self.views_folder / f"{camera}.png"
        if not path.is_file():
            return None
        truth = read_label_map(path).astype(np.int64)
        if self.view_offset != 1:
            truth = np.where(truth > 0, truth - self.view_offset + 1, 0)
        return truth

    @property
    def scene_dir(self) -> Path:
        return self.root.parent

    @property
    def ids(self) -> np.ndarray:
        return np.array([int(o["id"]) for o in self.objects], dtype=np.int64)

    def object(self, k: int) -> dict:
        for o in self.objects:
            if int(o["id"]) == int(k):
                return o
        raise KeyError(k)


def read_json(path: Path, what: str):
    if not path.is_file():
        raise InstaSceneError(f"{what} not found", path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError) as e:
        raise InstaSceneError(f"cannot read {what}: {e}", path) from None
    except json.JSONDecodeError as e:
        raise InstaSceneError(f"{what} is not valid JSON: {e}", path) from None


def read_labels(path: Path, what: str) -> np.ndarray:
    """A 1-D integer .npy (labels per Gaussian); InstaSceneError naming the file otherwise."""
    if not path.is_file():
        raise InstaSceneError(f"{what} not found", path)
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InstaSceneError(f"cannot read {what} (expected a .npy array): {e}", path) from None
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise InstaSceneError(f"{what} must be a 1-D integer array (one label per Gaussian), "
                              f"got shape {a.shape} and dtype {a.dtype}", path)
    return a.astype(np.int64)


def load_gt(gt_dir: str | os.PathLike) -> GroundTruth:
    """gt/instances.json and the per-Gaussian instances (either layout, see the module
    docstring), checked against each other."""
    root = Path(gt_dir)
    if not root.is_dir():
        raise InstaSceneError("ground-truth folder not found (expected SCENE/gt)", root)
    path = root / "instances.json"
    data = read_json(path, "ground-truth instances file")
    objects = data.get("objects") if isinstance(data, dict) else data
    if not isinstance(objects, list) or not all(isinstance(o, dict) and "id" in o for o in objects):
        raise InstaSceneError('expected {"objects": [{"id": ..., ...}, ...]}', path)
    objects = sorted(objects, key=lambda o: int(o["id"]))
    if (root / "gaussian_instances.npy").is_file() or not (root / "gaussian_instance.npy").is_file():
        layout = dict(labels_file="gaussian_instances.npy", views_folder="views", view_offset=1)
        gi = read_labels(root / layout["labels_file"], "ground-truth Gaussian instances")
    else:  # official-style: 0 = table / background, objects 1..K, view maps with the same ids
        layout = dict(labels_file="gaussian_instance.npy", views_folder="masks", view_offset=0)
        gi = read_labels(root / layout["labels_file"], "ground-truth Gaussian instances")
        if any(int(o["id"]) <= 0 for o in objects):
            raise InstaSceneError("object ids must be 1..K in this layout (0 is the table)", path)
        gi = np.where(gi > 0, gi, -1)
    known = {int(o["id"]) for o in objects}
    stray = set(np.unique(gi[gi >= 0]).tolist()) - known
    if stray:
        raise InstaSceneError(f"ids {sorted(stray)[:5]} are not objects of {path.name}", root / layout["labels_file"])
    return GroundTruth(root, objects, gi, **layout)


def leak_rates(labels: np.ndarray, gt_labels: np.ndarray, match: HungarianResult) -> dict:
    """What a user sees of a segmentation beyond mIoU, on Gaussians:
    `left_in_background`: share of the objects' Gaussians the run labels background
    (debris left behind when an object is moved); `strays`: share of the Gaussians inside
    predicted instances that belong to another object or to the background, where an
    instance's own object is the GT object it is matched to (unmatched instances are all
    strays: they carry nothing of an object of their own)."""
    obj = gt_labels >= 0
    inst = labels >= 0
    own = matched_lookup(match, labels)
    return {
        "left_in_background": float((obj & ~inst).sum() / max(obj.sum(), 1)),
        "strays": float((inst & (own != gt_labels)).sum() / max(inst.sum(), 1)),
    }


def load_run_labels(run_dir: str | os.PathLike, n_gaussians: int | None = None) -> np.ndarray:
    run = Path(run_dir)
    if not run.is_dir():
        raise InstaSceneError("run folder not found", run)
    path = run / "labels.npy"
    labels = read_labels(path, "labels file")
    if n_gaussians is not None and len(labels) != n_gaussians:
        raise InstaSceneError(f"has {len(labels)} labels but the scene has {n_gaussians} Gaussians "
                              "(was the run made on another scene?)", path)
    return labels


def load_run_instances(run_dir: str | os.PathLike, required: bool = False) -> list[dict]:
    """RUN/instances.json as a list of dicts with "id" (a bare list or {"instances": [...]});
    [] when the file is absent and not `required`."""
    path = Path(run_dir) / "instances.json"
    if not path.is_file() and not required:
        return []
    data = read_json(path, "run instances file")
    items = data.get("instances") if isinstance(data, dict) else data
    if not isinstance(items, list) or not all(isinstance(o, dict) and "id" in o for o in items):
        raise InstaSceneError('expected a list of instances or {"instances": [...]}, each with an "id"', path)
    return items


def jsonable(x):
    """Numpy scalars/arrays to Python; NaN and infinities to None (valid JSON)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def matched_lookup(match: HungarianResult, labels: np.ndarray) -> np.ndarray:
    """[N] the GT id each element's predicted instance is matched to, -1 for background or unmatched."""
    pairs = match.pred_to_gt()
    out = np.full(len(labels), -1, dtype=np.int64)
    if not pairs:
        return out
    keys = np.array(sorted(pairs), dtype=np.int64)
    vals = np.array([pairs[k] for k in keys], dtype=np.int64)
    pos = np.clip(np.searchsorted(keys, labels), 0, len(keys) - 1)
    hit = (labels >= 0) & (keys[pos] == labels)
    out[hit] = vals[pos[hit]]
    return out


def _device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


# ------------------------------------------------------------------ evaluation


def evaluate_segmentation(
    run_dir: str | os.PathLike,
    gt_dir: str | os.PathLike,
    *,
    views: bool = True,
    view_stride: int = 1,
    criterion: str = "crossing",
    device: str = "auto",
    backend: str = "auto",
) -> dict:
    """3D and 2D instance mIoU of a run against a scene's ground truth (JSON-ready dict).

    `views=False` skips the 2D part (no rendering); `view_stride` = n uses every n-th camera
    (the 2D part costs one tracked rasterization per view). Objects are the ones listed in
    gt/instances.json that own at least one Gaussian; objects without any are listed
    under "absent_objects" (nothing can segment them).
    """
    t0 = time.perf_counter()
    gt = load_gt(gt_dir)
    labels = load_run_labels(run_dir, len(gt.gaussian_instances))
    present = np.unique(gt.gaussian_instances[gt.gaussian_instances >= 0])
    absent = [int(k) for k in np.setdiff1d(gt.ids, present)]
    match = hungarian_miou(labels, gt.gaussian_instances, gt_ids=present)

    per_object = []
    for k, p, iou, n in zip(match.gt_ids, match.matched_pred, match.iou, match.gt_sizes):
        o = gt.object(k)
        per_object.append({"id": int(k), "name": o.get("name"), "gaussians": int(n),
                           "pred_id": int(p) if p >= 0 else None, "iou_3d": float(iou)})
    d = match.to_dict()
    result = {
        "run": str(Path(run_dir)),
        "gt": str(gt.root),
        "gaussians": int(len(labels)),
        "objects": len(match.gt_ids),
        "absent_objects": absent,
        "predicted_instances": d["predicted_instances"],
        "unmatched_predictions": d["unmatched_predictions"],
        "miou_3d": match.miou,
        **leak_rates(labels, gt.gaussian_instances, match),
        "miou_2d": None,
        "views": 0,
        "per_object": per_object,
    }
    if views:
        r2d = _views_miou(gt, labels, match, stride=view_stride, criterion=criterion, device=device, backend=backend)
        result["miou_2d"] = r2d["miou"]
        result["views"] = r2d["views"]
        result["views_without_gt"] = r2d["missing"]
        for row in per_object:
            row.update(r2d["per_object"][row["id"]])
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return jsonable(result)


def _views_miou(gt: GroundTruth, labels: np.ndarray, match: HungarianResult, *, stride, criterion, device,
                backend) -> dict:
    import torch

    from ..io.scene import load_scene
    from ..render import Gaussians, View, contributions

    scene = load_scene(gt.scene_dir, load_splats=False)
    cams = scene.require_cameras()[:: max(int(stride), 1)]
    splats = scene.require_splats()
    if len(splats) != len(labels):
        raise InstaSceneError(f"has {len(splats)} Gaussians but gt/{gt.labels_file} has "
                              f"{len(gt.gaussian_instances)} entries", scene.ply_path)
    views_dir = gt.root / gt.views_folder
    if not views_dir.is_dir():
        raise InstaSceneError(f"ground-truth view labels not found (expected gt/{gt.views_folder}/<camera>.png)",
                              views_dir)
    dev = _device(device)
    g = Gaussians.from_splats(splats, device=dev)
    lut = torch.as_tensor(matched_lookup(match, labels), device=dev)  # Gaussian -> matched GT id

    K1 = int(gt.ids.max()) + 2 if len(gt.ids) else 1  # bins: GT id + 1, 0 = background
    inter = np.zeros(K1, dtype=np.int64)
    n_pred = np.zeros(K1, dtype=np.int64)
    n_gt = np.zeros(K1, dtype=np.int64)
    used, missing = 0, []
    for cam in cams:
        path = views_dir / f"{cam.name}.png"
        truth = gt.view_labels(cam.name)
        if truth is None:
            missing.append(cam.name)
            continue
        if truth.shape != (cam.height, cam.width):
            raise InstaSceneError(f"label map is {truth.shape[1]}x{truth.shape[0]} but camera {cam.name!r} "
                                  f"is {cam.width}x{cam.height}", path)
        if truth.size and truth.max() >= K1:
            raise InstaSceneError(f"label {int(truth.max()) - 1 + gt.view_offset} is not an object of "
                                  "gt/instances.json", path)
        c = contributions(g, View.from_camera(cam, device=dev), criterion, backend=backend)
        pred = torch.zeros(cam.height * cam.width, dtype=torch.long, device=dev)
        pred[c.pixel] = lut[c.gaussian] + 1  # at most one crossing per pixel
        pred = pred.cpu().numpy()
        t = truth.reshape(-1).astype(np.int64)
        n_pred += np.bincount(pred, minlength=K1)
        n_gt += np.bincount(t, minlength=K1)
        inter += np.bincount(t[pred == t], minlength=K1)
        used += 1
    if used == 0:
        raise InstaSceneError(f"no camera of the scene has a label map here ({len(cams)} cameras, e.g. "
                              f"{cams[0].name}.png)", views_dir)
    per_object, ious = {}, []
    for k in match.gt_ids:
        u = n_pred[k + 1] + n_gt[k + 1] - inter[k + 1]
        iou = float(inter[k + 1] / u) if u > 0 else None
        per_object[int(k)] = {"iou_2d": iou, "pixels_gt": int(n_gt[k + 1]), "pixels_pred": int(n_pred[k + 1])}
        if iou is not None:
            ious.append(iou)
    return {"miou": float(np.mean(ious)) if ious else None, "views": used, "missing": missing, "per_object": per_object}
