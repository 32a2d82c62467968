"""Cameras (COLMAP binary/text, cameras.json) and scene-folder discovery; numpy + stdlib.

Poses are kept as OpenCV world-to-camera matrices (x right, y down, z forward),
exactly as COLMAP stores them (formats.md §3, §6); `blender_camera` converts one
camera to what a Blender camera needs:

    matrix_world = c2w_cv · diag(1, -1, -1, 1)
    sensor_fit   = HORIZONTAL if W >= H else VERTICAL   (the larger side, as AUTO does)
    lens         = fx · sensor / W (HORIZONTAL) or fy · sensor / H (VERTICAL)
    shift_x      = (W/2 - cx) / max(W, H),  shift_y = (cy - H/2) / max(W, H)   when fx = fy
    pixel aspect = (fy/fx, 1) when fx != fy (a Blender pixel is fy/fx times as wide as tall;
                   shifts then follow Blender's view plane: y offsets count in pixel widths)

Checked in the tests by projecting points with Blender's own `world_to_camera_view`
(landscape, portrait, off-centre principal point, fx != fy).
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass, field

import numpy as np

from .ply import PlyError

# COLMAP camera model id -> (name, number of params); the pinhole part is used, distortion ignored.
CAMERA_MODELS = {
    0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
    4: ("OPENCV", 8), 5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4), 9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12),
}  # fmt: skip
_MODEL_IDS = {name: mid for mid, (name, _) in CAMERA_MODELS.items()}
_ONE_FOCAL = {"SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "FOV", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE"}
CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])
_ITERATION_RE = re.compile(r"iteration_(\d+)$")


class SceneError(PlyError):
    """A scene folder or camera file that cannot be read; the message names the path."""


@dataclass
class CameraData:
    name: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    world_to_camera: np.ndarray  # [4, 4] float64, OpenCV axes
    distorted: bool = False  # a non-pinhole COLMAP model whose distortion was ignored

    @property
    def camera_to_world(self) -> np.ndarray:
        return np.linalg.inv(self.world_to_camera)

    def project(self, points) -> np.ndarray:
        """Pinhole pixel coordinates [N, 2] (pixel centres at j + 0.5) of world points [N, 3]."""
        p = np.asarray(points, np.float64).reshape(-1, 3)
        c = p @ self.world_to_camera[:3, :3].T + self.world_to_camera[:3, 3]
        return np.stack([self.fx * c[:, 0] / c[:, 2] + self.cx, self.fy * c[:, 1] / c[:, 2] + self.cy], axis=1)


@dataclass
class BlenderCamera:
    """Everything a Blender camera object needs, in Blender conventions."""

    matrix_world: np.ndarray  # [4, 4] camera-to-world, Blender/OpenGL camera axes
    lens: float  # mm
    sensor_width: float  # mm (also used as sensor_height)
    sensor_fit: str  # 'HORIZONTAL' or 'VERTICAL'
    shift_x: float
    shift_y: float
    resolution: tuple  # (W, H)
    pixel_aspect: tuple = field(default=(1.0, 1.0))  # (x, y)


def blender_camera(cam: CameraData, sensor: float = 36.0) -> BlenderCamera:
    W, H = int(cam.width), int(cam.height)
    horizontal = W >= H
    ycor = cam.fx / cam.fy  # Blender's aspy/aspx: a pixel's height in units of its width
    if horizontal:  # the view plane measures W pixel widths across the sensor
        lens, viewfac = cam.fx * sensor / W, float(W)
    else:  # the view plane measures H pixel heights (= ycor·H widths) across the sensor
        lens, viewfac = cam.fy * sensor / H, ycor * H
    square = abs(cam.fx - cam.fy) <= 1e-9 * cam.fx
    return BlenderCamera(
        matrix_world=cam.camera_to_world @ CV_TO_GL,
        lens=float(lens),
        sensor_width=float(sensor),
        sensor_fit="HORIZONTAL" if horizontal else "VERTICAL",
        shift_x=float((W / 2.0 - cam.cx) / viewfac),
        shift_y=float((cam.cy - H / 2.0) * ycor / viewfac),
        resolution=(W, H),
        pixel_aspect=(1.0, 1.0) if square else (float(cam.fy / cam.fx), 1.0),
    )


# ------------------------------------------------------------------ quaternions
def rotation_from_quaternion(q) -> np.ndarray:
    w, x, y, z = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])  # fmt: skip


def _pose(qvec, tvec) -> np.ndarray:
    M = np.eye(4)
    M[:3, :3] = rotation_from_quaternion(qvec)
    M[:3, 3] = tvec
    return M


def _intrinsics(model: str, params, where: str, path) -> tuple:
    params = [float(v) for v in params]
    if len(params) != CAMERA_MODELS[_MODEL_IDS[model]][1]:
        raise SceneError(f"{where}: {model} needs {CAMERA_MODELS[_MODEL_IDS[model]][1]} parameters", path)
    if model in _ONE_FOCAL:
        f, cx, cy = params[:3]
        return f, f, cx, cy
    fx, fy, cx, cy = params[:4]
    return fx, fy, cx, cy


# ------------------------------------------------------------------ COLMAP
def _colmap_ext(sparse: str) -> str:
    for ext in (".bin", ".txt"):
        if all(os.path.isfile(os.path.join(sparse, f"{s}{ext}")) for s in ("cameras", "images")):
            return ext
    raise SceneError("COLMAP model incomplete: need cameras and images (.bin or .txt)", sparse)


def read_colmap(sparse_dir) -> list[CameraData]:
    """Cameras of a COLMAP model, binary preferred, sorted by image name."""
    sparse = os.fspath(sparse_dir)
    ext = _colmap_ext(sparse)
    cpath, ipath = os.path.join(sparse, "cameras" + ext), os.path.join(sparse, "images" + ext)
    try:
        if ext == ".bin":
            intr, images = _cameras_bin(cpath), _images_bin(ipath)
        else:
            intr, images = _cameras_txt(cpath), _images_txt(ipath)
    except (struct.error, IndexError):
        raise SceneError("COLMAP file is truncated or malformed", sparse) from None
    out = []
    for name, q, t, cid in images:
        if cid not in intr:
            raise SceneError(f"image {name!r} uses camera_id {cid}, which is not defined", cpath)
        w, h, (fx, fy, cx, cy), distorted = intr[cid]
        stem = os.path.splitext(os.path.basename(name))[0]
        out.append(CameraData(stem, w, h, fx, fy, cx, cy, _pose(q, t), distorted))
    out.sort(key=lambda c: c.name)
    return out


def _read(path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise SceneError(f"cannot read: {e.strerror or e}", path) from None


def _cameras_bin(path) -> dict:
    data, off, out = _read(path), 8, {}
    (n,) = struct.unpack_from("<Q", data, 0)
    for _ in range(n):
        cid, mid, w, h = struct.unpack_from("<iiQQ", data, off)
        off += 24
        if mid not in CAMERA_MODELS:
            raise SceneError(f"camera {cid}: unknown camera model id {mid}", path)
        model, k = CAMERA_MODELS[mid]
        params = struct.unpack_from(f"<{k}d", data, off)
        off += 8 * k
        out[cid] = (int(w), int(h), _intrinsics(model, params, f"camera {cid}", path), model not in
                    ("PINHOLE", "SIMPLE_PINHOLE"))
    return out


def _images_bin(path) -> list:
    data, off, out = _read(path), 8, []
    (n,) = struct.unpack_from("<Q", data, 0)
    for _ in range(n):
        vals = struct.unpack_from("<i4d3di", data, off)
        off += 64
        end = data.index(b"\0", off)
        name = data[off:end].decode("utf-8", "replace")
        (npts,) = struct.unpack_from("<Q", data, end + 1)
        off = end + 9 + 24 * npts
        if off > len(data):
            raise SceneError("images.bin is truncated", path)
        out.append((name, vals[1:5], vals[5:8], vals[8]))
    return out


def _lines(path) -> list[str]:
    return _read(path).decode("utf-8", "replace").splitlines()


def _cameras_txt(path) -> dict:
    out = {}
    for i, line in enumerate(_lines(path), 1):
        tok = line.split()
        if not tok or tok[0].startswith("#"):
            continue
        try:
            cid, model, w, h = int(tok[0]), tok[1], int(tok[2]), int(tok[3])
        except (ValueError, IndexError):
            raise SceneError(f"line {i}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...'", path) from None
        if model not in _MODEL_IDS:
            raise SceneError(f"line {i}: unknown camera model {model!r}", path)
        try:
            intr = _intrinsics(model, tok[4:], f"line {i}", path)
        except ValueError:
            raise SceneError(f"line {i}: parameters must be numbers", path) from None
        out[cid] = (w, h, intr, model not in ("PINHOLE", "SIMPLE_PINHOLE"))
    return out


def _images_txt(path) -> list:
    lines, out, i = _lines(path), [], 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        tok = line.split(maxsplit=9)
        try:
            q, t, cid = [float(v) for v in tok[1:5]], [float(v) for v in tok[5:8]], int(tok[8])
            name = tok[9].strip()
        except (ValueError, IndexError):
            raise SceneError(f"line {i}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME'", path) from None
        i += 1  # the 2D points line (may be empty)
        out.append((name, q, t, cid))
    return out


# ------------------------------------------------------------------ cameras.json
def read_cameras_json(path) -> list[CameraData]:
    """2DGS/3DGS training cameras (formats.md §2): camera-to-world rotation rows, OpenCV axes,
    principal point at the image centre. File order is kept."""
    try:
        entries = json.loads(_read(path).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SceneError(f"invalid JSON ({e})", path) from None
    if not isinstance(entries, list):
        raise SceneError("expected a list of cameras", path)
    out = []
    for i, e in enumerate(entries):
        try:
            w, h = int(e["width"]), int(e["height"])
            R_c2w = np.asarray(e["rotation"], np.float64).reshape(3, 3)
            C = np.asarray(e["position"], np.float64).reshape(3)
            fx, fy = float(e["fx"]), float(e["fy"])
            name = str(e.get("img_name", f"camera_{i:04d}"))
        except (KeyError, TypeError, ValueError):
            raise SceneError(f"camera entry {i} lacks or has malformed width/height/rotation/position/fx/fy",
                             path) from None
        M = np.eye(4)
        M[:3, :3] = R_c2w.T
        M[:3, 3] = -R_c2w.T @ C
        out.append(CameraData(name, w, h, fx, fy, w / 2.0, h / 2.0, M))
    return out


# ------------------------------------------------------------------ scene folders
@dataclass
class ScenePaths:
    root: str  # the scene folder (or the PLY's folder)
    ply: str
    cameras: list  # [CameraData]
    camera_source: str  # 'colmap', 'cameras.json' or 'none'
    name: str


def _colmap_dir(root: str) -> str | None:
    for d in (os.path.join(root, "sparse", "0"), os.path.join(root, "sparse")):
        if os.path.isdir(d) and any(os.path.isfile(os.path.join(d, f"{s}{e}"))
                                    for s in ("cameras", "images") for e in (".bin", ".txt")):
            return d
    return None


def _find_ply(root: str) -> str | None:
    p = os.path.join(root, "point_cloud.ply")
    if os.path.isfile(p):
        return p
    pc = os.path.join(root, "point_cloud")
    if not os.path.isdir(pc):
        return None
    found = []
    for d in os.listdir(pc):
        m = _ITERATION_RE.fullmatch(d)
        if m and os.path.isfile(os.path.join(pc, d, "point_cloud.ply")):
            found.append((int(m.group(1)), os.path.join(pc, d, "point_cloud.ply")))
    if not found:
        raise SceneError("no point_cloud/iteration_*/point_cloud.ply inside (did training finish?)", pc)
    return max(found)[1]


def find_cameras(root: str) -> tuple[list, str]:
    sparse = _colmap_dir(root)
    if sparse is not None:
        return read_colmap(sparse), "colmap"
    cj = os.path.join(root, "cameras.json")
    if os.path.isfile(cj):
        return read_cameras_json(cj), "cameras.json"
    return [], "none"


def find_scene(path) -> ScenePaths:
    """A scene folder (point_cloud.ply [+ sparse/0 | cameras.json]), a training output folder
    (cameras.json + point_cloud/iteration_*/point_cloud.ply) or a single PLY file (cameras
    looked for beside it, and two levels up for a training output's iteration folder)."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isfile(path):
        ply, root = path, os.path.dirname(path)
        cams, source = find_cameras(root)
        up = os.path.dirname(os.path.dirname(root))
        if source == "none" and _ITERATION_RE.fullmatch(os.path.basename(root)) and os.path.isdir(up):
            cams, source = find_cameras(up)
        name = os.path.splitext(os.path.basename(path))[0]
        if name == "point_cloud":
            name = os.path.basename(root if source == "none" or not _ITERATION_RE.fullmatch(
                os.path.basename(root)) else up)
        return ScenePaths(root, ply, cams, source, name)
    if not os.path.isdir(path):
        raise SceneError("no such file or folder", path)
    ply = _find_ply(path)
    if ply is None:
        raise SceneError("no point_cloud.ply (nor point_cloud/iteration_*/point_cloud.ply) in this folder; "
                         "pick a scene folder, a 2DGS training output folder or a PLY file", path)
    cams, source = find_cameras(path)
    return ScenePaths(path, ply, cams, source, os.path.basename(path.rstrip(os.sep)) or "scene")
