"""Run folders written by the backend (contracts.md, "Run folder"); numpy + stdlib.

Layout read here::

    RUN/instances.json
    RUN/labels.npy                      int32 [N], -1 = background (optional for materialize)
    RUN/instances/<id>/observed.ply     2DGS PLY (segment)
    RUN/instances/<id>/completed.ply    2DGS PLY (complete; preferred over observed.ply)
    RUN/instances/<id>/mesh.ply         triangle mesh with vertex colours (complete)
    RUN/background.ply                  everything that is no object
    RUN/background_completed.ply        the same, then surfels that close the table under the
                                        objects (complete; preferred over background.ply)

Schema assumed for ``instances.json`` (the segmentation issue names id, Gaussian count,
bounding box and centroid; the completion issue adds "what was done and which files
exist"). Either a JSON list of instance records or an object holding that list
under ``"instances"``; of the object's other keys the add-on uses ``"scene"`` (the
segmented scene folder) and ``"background": {"file": ..., "completed": ...}`` (defaults
background.ply and background_completed.ply), as the backend writes them. Per record:

    id         int or string, required; the folder name under instances/ is str(id)
    gaussians  int, Gaussian count (optional for the add-on)
    bbox_min   [x, y, z] (optional)
    bbox_max   [x, y, z] (optional)
    centroid   [x, y, z] (optional: else the bbox centre, else the mean of the splats)
    files      optional; either a list of file names present in instances/<id>/
               ("observed.ply", "completed.ply", "mesh.ply") or an object mapping
               "observed" / "completed" / "mesh" to paths relative to RUN
    (any other key, e.g. what completion did, is kept in `InstanceRecord.raw`)

Whatever `files` says, a file is used only if it exists on disk, so a partly
completed run materializes what is there.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from .cameras import SceneError

_KINDS = ("completed", "observed", "mesh")


@dataclass
class InstanceRecord:
    id: str
    gaussians: int | None
    bbox_min: np.ndarray | None
    bbox_max: np.ndarray | None
    centroid: np.ndarray | None
    files: dict = field(default_factory=dict)  # kind -> absolute path (existing files only)
    raw: dict = field(default_factory=dict)

    @property
    def splat_file(self) -> str | None:
        """completed.ply if present, else observed.ply."""
        return self.files.get("completed") or self.files.get("observed")


@dataclass
class RunFolder:
    root: str
    name: str
    instances: list  # [InstanceRecord]
    background: str | None  # the background to show: background_completed.ply, else background.ply
    labels: str | None  # path of labels.npy when present
    scene: str | None = None  # the segmented scene, when instances.json names it ("scene")
    background_observed: str | None = None  # background.ply when present (what the cameras saw)


def _vec3(value, what: str, path) -> np.ndarray | None:
    if value is None:
        return None
    try:
        a = np.asarray(value, dtype=np.float64).reshape(3)
    except (TypeError, ValueError):
        raise SceneError(f"{what} must be three numbers, got {value!r}", path) from None
    if not np.isfinite(a).all():
        raise SceneError(f"{what} is not finite", path)
    return a


def read_instances_json(path) -> tuple[list[dict], dict]:
    """(instance records, the top-level object or {} when the file is a bare list)."""
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read().decode("utf-8"))
    except OSError as e:
        raise SceneError(f"cannot read: {e.strerror or e}", path) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SceneError(f"invalid JSON ({e})", path) from None
    doc = data if isinstance(data, dict) else {}
    records = data.get("instances") if isinstance(data, dict) else data
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise SceneError("expected a list of instance records (or an object with an 'instances' list)", path)
    return records, doc


def read_run_folder(run_dir) -> RunFolder:
    root = os.path.abspath(os.fspath(run_dir))
    if not os.path.isdir(root):
        raise SceneError("run folder not found", root)
    ipath = os.path.join(root, "instances.json")
    if not os.path.isfile(ipath):
        raise SceneError("no instances.json: not a run folder (run segmentation first)", root)
    records, seen = [], set()
    records_in, doc = read_instances_json(ipath)
    for i, r in enumerate(records_in):
        if "id" not in r or isinstance(r["id"], (dict, list, bool)) or r["id"] is None:
            raise SceneError(f"instance record {i} has no usable 'id'", ipath)
        iid = str(r["id"])
        if not iid or "/" in iid or "\\" in iid or iid in (".", ".."):
            raise SceneError(f"instance record {i} has an id that is not a folder name: {iid!r}", ipath)
        if iid in seen:
            raise SceneError(f"instance id {iid!r} appears twice", ipath)
        seen.add(iid)
        where = f"instance {iid}:"
        folder = os.path.join(root, "instances", iid)
        files = {k: os.path.join(folder, f"{k}.ply") for k in _KINDS}
        listed = r.get("files")
        if isinstance(listed, dict):
            for k in _KINDS:
                if isinstance(listed.get(k), str):
                    files[k] = os.path.normpath(os.path.join(root, listed[k]))
        files = {k: p for k, p in files.items() if os.path.isfile(p)}
        gaussians = r.get("gaussians")
        records.append(InstanceRecord(
            id=iid,
            gaussians=int(gaussians) if isinstance(gaussians, (int, float)) and not isinstance(gaussians, bool)
            else None,
            bbox_min=_vec3(r.get("bbox_min"), f"{where} bbox_min", ipath),
            bbox_max=_vec3(r.get("bbox_max"), f"{where} bbox_max", ipath),
            centroid=_vec3(r.get("centroid"), f"{where} centroid", ipath),
            files=files,
            raw=r,
        ))
    bg = os.path.join(root, "background.ply")
    completed = os.path.join(root, "background_completed.ply")
    bg_doc = doc.get("background")
    if isinstance(bg_doc, dict):
        if isinstance(bg_doc.get("file"), str):
            bg = os.path.normpath(os.path.join(root, bg_doc["file"]))
        if isinstance(bg_doc.get("completed"), str):
            completed = os.path.normpath(os.path.join(root, bg_doc["completed"]))
    bg = bg if os.path.isfile(bg) else None
    labels = os.path.join(root, "labels.npy")
    scene = doc.get("scene") if isinstance(doc.get("scene"), str) else None
    return RunFolder(root, os.path.basename(root.rstrip(os.sep)) or "run", records,
                     completed if os.path.isfile(completed) else bg, labels if os.path.isfile(labels) else None,
                     scene, bg)


def instance_centroid(rec: InstanceRecord, means: np.ndarray | None = None) -> np.ndarray:
    """centroid, else the bbox centre, else the mean of the given splat means, else 0."""
    if rec.centroid is not None:
        return rec.centroid
    if rec.bbox_min is not None and rec.bbox_max is not None:
        return 0.5 * (rec.bbox_min + rec.bbox_max)
    if means is not None and len(means):
        return np.asarray(means, np.float64).mean(axis=0)
    return np.zeros(3)


def read_labels(path) -> np.ndarray:
    """labels.npy: one integer per input Gaussian, -1 = background; returned as int32."""
    try:
        a = np.load(os.fspath(path), allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SceneError(f"cannot read labels ({e})", path) from None
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise SceneError(f"labels must be a 1-D integer array, got {a.dtype} {a.shape}", path)
    return a.astype(np.int32, copy=False)
