"""cameras.json, the camera list 2DGS/3DGS training writes next to the model (formats.md §2).

Each entry holds the camera centre (`position`) and the camera-to-world rotation
(`rotation`, rows, OpenCV axes) plus fx, fy at the training resolution. There is no
principal point: the trainers assume the image centre, so that is what we read back,
and a written off-centre cx, cy is lost.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ..errors import InstaSceneError
from .atomic import atomic_write
from .cameras import Camera, intrinsics, pose_from_rotation_translation

FIELDS = ("id", "img_name", "width", "height", "position", "rotation", "fx", "fy")


def load_json(path: Path):
    """Parsed JSON, or an InstaSceneError with the line and column of a syntax error."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InstaSceneError("file not found", path) from None
    except UnicodeDecodeError as e:
        raise InstaSceneError(f"not a UTF-8 text file ({e.reason} at byte {e.start})", path) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InstaSceneError(f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}", path) from None


def as_array(value, shape: tuple, what: str, path: Path) -> np.ndarray:
    """A finite float64 array of exactly `shape`, or an InstaSceneError naming `what`."""
    try:
        a = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InstaSceneError(f"{what} must be numbers of shape {list(shape)}", path) from None
    if a.shape != shape:
        raise InstaSceneError(f"{what} must have shape {list(shape)}, got {list(a.shape)}", path)
    if not np.all(np.isfinite(a)):
        raise InstaSceneError(f"{what} contains non-finite numbers", path)
    return a


def as_size(value, what: str, path: Path) -> int:
    """A positive integer pixel size (an integral float such as 800.0 is accepted)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InstaSceneError(f"{what} must be a positive integer, got {value!r}", path)
    if not math.isfinite(value) or value != int(value) or value <= 0:
        raise InstaSceneError(f"{what} must be a positive integer, got {value!r}", path)
    return int(value)


def read_cameras_json(path: str | os.PathLike) -> list[Camera]:
    """Cameras in file order (the trainers write test cameras first, then train)."""
    path = Path(path)
    data = load_json(path)
    if not isinstance(data, list):
        raise InstaSceneError(f"expected a list of cameras, got a JSON {type(data).__name__}", path)
    cameras = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise InstaSceneError(f"camera entry {i} is not an object", path)
        missing = [f for f in FIELDS if f not in entry]
        if missing:
            raise InstaSceneError(f"camera entry {i} lacks field {', '.join(map(repr, missing))}", path)
        where = f"camera entry {i}"
        name = entry["img_name"]
        if not isinstance(name, str) or not name:
            raise InstaSceneError(f"{where}: img_name must be a non-empty string", path)
        width = as_size(entry["width"], f"{where}: width", path)
        height = as_size(entry["height"], f"{where}: height", path)
        position = as_array(entry["position"], (3,), f"{where}: position", path)
        c2w_rot = as_array(entry["rotation"], (3, 3), f"{where}: rotation", path)
        fx, fy = (as_array(entry[k], (), f"{where}: {k}", path) for k in ("fx", "fy"))
        R = c2w_rot.T  # world -> camera
        pose = pose_from_rotation_translation(R, -R @ position)
        K = intrinsics(float(fx), float(fy), width / 2.0, height / 2.0)
        cameras.append(Camera(name, width, height, K, pose))
    return cameras


def write_cameras_json(path: str | os.PathLike, cameras: list[Camera]) -> None:
    """The trainers' layout with id = list index; cx, cy are not stored (see module doc)."""
    entries = []
    for i, cam in enumerate(cameras):
        R, t = cam.world_to_camera[:3, :3], cam.world_to_camera[:3, 3]
        entries.append(
            {
                "id": i,
                "img_name": cam.name,
                "width": int(cam.width),
                "height": int(cam.height),
                "position": (-R.T @ t).tolist(),
                "rotation": R.T.tolist(),
                "fy": cam.fy,
                "fx": cam.fx,
            }
        )
    with atomic_write(path) as f:
        f.write(json.dumps(entries).encode("utf-8"))
