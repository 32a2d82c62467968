"""COLMAP sparse models (`sparse/0/`): cameras, images and points3D, binary or text.

Only undistorted pinhole cameras are accepted: 2DGS and InstaScene rasterize with a
plain pinhole, so a distorted model would silently misalign every mask. Poses are
COLMAP's world-to-camera (X_cam = R(q) X_world + t, Hamilton q scalar first), which is
already our OpenCV convention, so no axis change happens here (formats.md §3, §6).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import InstaSceneError
from .atomic import atomic_write
from .cameras import (
    Camera,
    intrinsics,
    pose_from_rotation_translation,
    quaternion_from_rotation,
    rotation_from_quaternion,
)

# COLMAP model id -> (name, number of params); the full table, so errors can name the model.
CAMERA_MODELS = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
}
MODEL_IDS = {name: mid for mid, (name, _) in CAMERA_MODELS.items()}

_CAMERA = struct.Struct("<iiQQ")  # camera_id, model_id, width, height
_IMAGE = struct.Struct("<i4d3di")  # image_id, qw qx qy qz, tx ty tz, camera_id
_U64 = struct.Struct("<Q")
_POINT = struct.Struct("<Q3d3BdQ")  # id, xyz, rgb, error, track_len
_POINTS2D = np.dtype([("xy", "<f8", (2,)), ("point3D_id", "<i8")])  # 24 bytes
_POINT_REC = np.dtype(  # packed, as written to points3D.bin when tracks are empty
    [("id", "<u8"), ("xyz", "<f8", (3,)), ("rgb", "u1", (3,)), ("error", "<f8"), ("track_len", "<u8")]
)


class _Image(NamedTuple):
    image_id: int
    qvec: tuple
    tvec: tuple
    camera_id: int
    name: str
    where: str  # "image 3" or "line 7", for error messages


# ------------------------------------------------------------------ reading


def read_colmap(sparse_dir: str | os.PathLike) -> list[Camera]:
    """Cameras of a COLMAP sparse model, sorted by image name (InstaScene's view order).

    Binary files are preferred; the text pair is read when the binary pair is absent.
    """
    sparse_dir = Path(sparse_dir)
    ext = _model_ext(sparse_dir, ("cameras", "images"))
    cam_path, img_path = sparse_dir / f"cameras{ext}", sparse_dir / f"images{ext}"
    if ext == ".bin":
        intr, images = _read_cameras_bin(cam_path), _read_images_bin(img_path)
    else:
        intr, images = _read_cameras_txt(cam_path), _read_images_txt(img_path)

    cameras = []
    for im in images:
        if im.camera_id not in intr:
            raise InstaSceneError(
                f"{im.where} ({im.name!r}) uses camera_id {im.camera_id}, "
                f"which {cam_path.name} does not define",
                img_path,
            )
        width, height, K = intr[im.camera_id]
        try:
            R = rotation_from_quaternion(im.qvec)
        except ValueError as e:
            raise InstaSceneError(f"{im.where} ({im.name!r}): {e}", img_path) from None
        pose = pose_from_rotation_translation(R, np.array(im.tvec, dtype=np.float64))
        name = Path(im.name).stem
        cameras.append(Camera(name, width, height, K.copy(), pose, im.name))
    cameras.sort(key=lambda c: (c.name, c.image_name))
    return cameras


def read_points3d(sparse_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(xyz [P, 3] float64, rgb [P, 3] uint8) from points3D.bin, or points3D.txt if absent."""
    sparse_dir = Path(sparse_dir)
    ext = _model_ext(sparse_dir, ("points3D",))
    path = sparse_dir / f"points3D{ext}"
    return _read_points_bin(path) if ext == ".bin" else _read_points_txt(path)


def _model_ext(sparse_dir: Path, stems: tuple[str, ...]) -> str:
    """'.bin' if every file exists in binary, else '.txt' if every one exists as text."""
    if not sparse_dir.is_dir():
        raise InstaSceneError("COLMAP sparse folder not found", sparse_dir)
    for ext in (".bin", ".txt"):
        if all((sparse_dir / f"{s}{ext}").is_file() for s in stems):
            return ext
    any_bin = any((sparse_dir / f"{s}.bin").is_file() for s in stems)
    ext = ".bin" if any_bin else ".txt"
    missing = [f"{s}{ext}" for s in stems if not (sparse_dir / f"{s}{ext}").is_file()]
    hint = "" if any_bin else f" (nor {', '.join(s + '.bin' for s in stems)})"
    raise InstaSceneError(f"COLMAP model incomplete: missing {', '.join(missing)}{hint}", sparse_dir)


def _intrinsics(model: str, params, camera_id: int, where: str, path: Path) -> np.ndarray:
    if model == "PINHOLE":
        fx, fy, cx, cy = params
    elif model == "SIMPLE_PINHOLE":
        fx, cx, cy = params
        fy = fx
    else:
        raise InstaSceneError(
            f"{where}: camera {camera_id} uses the distorted {model} model; InstaScene needs "
            "PINHOLE or SIMPLE_PINHOLE, so undistort the images first (COLMAP "
            "`image_undistorter`, or 2DGS `convert.py`) and use its sparse/ output",
            path,
        )
    K = intrinsics(fx, fy, cx, cy)
    if not np.all(np.isfinite(K)):
        raise InstaSceneError(f"{where}: camera {camera_id} has non-finite parameters", path)
    return K


class _Bin:
    """A binary file read front to back; any short read becomes a 'truncated' error."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.data = path.read_bytes()
        except FileNotFoundError:
            raise InstaSceneError("file not found", path) from None
        self.off = 0

    def truncated(self, what: str) -> InstaSceneError:
        return InstaSceneError(
            f"file is truncated: it ends at byte {len(self.data)} while reading {what}", self.path
        )

    def unpack(self, st: struct.Struct, what: str) -> tuple:
        try:
            vals = st.unpack_from(self.data, self.off)
        except struct.error:
            raise self.truncated(what) from None
        self.off += st.size
        return vals

    def count(self, min_record: int, what: str) -> int:
        """A u64 record count, checked against the bytes left so a corrupt count fails fast."""
        (n,) = self.unpack(_U64, f"the number of {what}")
        if n * min_record > len(self.data) - self.off:
            raise self.truncated(f"{what} (header says {n}, too many for the file size)")
        return n

    def array(self, dtype: np.dtype, n: int, what: str) -> np.ndarray:
        nbytes = dtype.itemsize * n
        if self.off + nbytes > len(self.data):
            raise self.truncated(what)
        a = np.frombuffer(self.data, dtype=dtype, count=n, offset=self.off)
        self.off += nbytes
        return a

    def cstring(self, what: str) -> str:
        end = self.data.find(b"\0", self.off)
        if end < 0:
            raise self.truncated(what)
        raw, self.off = self.data[self.off : end], end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InstaSceneError(f"{what} is not valid UTF-8: {raw!r}", self.path) from None


def _read_cameras_bin(path: Path) -> dict[int, tuple[int, int, np.ndarray]]:
    f = _Bin(path)
    out = {}
    n = f.count(_CAMERA.size, "cameras")
    for i in range(n):
        cid, mid, w, h = f.unpack(_CAMERA, f"camera {i + 1} of {n}")
        if mid not in CAMERA_MODELS:
            raise InstaSceneError(
                f"camera {cid} has unknown camera model id {mid} (COLMAP knows 0-10)", path
            )
        model, n_params = CAMERA_MODELS[mid]
        params = f.array(np.dtype("<f8"), n_params, f"the parameters of camera {cid}")
        out[cid] = (int(w), int(h), _intrinsics(model, params, cid, f"record {i + 1} of {n}", path))
    return out


def _read_images_bin(path: Path) -> list[_Image]:
    f = _Bin(path)
    out = []
    n = f.count(_IMAGE.size + 1 + _U64.size, "images")
    for i in range(n):
        what = f"image {i + 1} of {n}"
        iid, qw, qx, qy, qz, tx, ty, tz, cid = f.unpack(_IMAGE, what)
        name = f.cstring(f"the name of {what}")
        (n_pts,) = f.unpack(_U64, f"the 2D point count of {what}")
        f.array(_POINTS2D, n_pts, f"the 2D points of {what}")  # not needed; skipped in one read
        out.append(_Image(iid, (qw, qx, qy, qz), (tx, ty, tz), cid, name, f"image {iid}"))
    return out


def _read_points_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    f = _Bin(path)
    n = f.count(_POINT.size, "points")
    recs = []  # tuples, turned into arrays once: per-row array writes would dominate
    data, off, size = f.data, f.off, _POINT.size
    for i in range(n):
        try:
            rec = _POINT.unpack_from(data, off)
        except struct.error:
            raise f.truncated(f"point {i + 1} of {n}") from None
        off += size + 8 * rec[8]  # skip the track: track_len x (i32 image_id, i32 point2D_idx)
        recs.append(rec)
    if off > len(data):
        raise f.truncated(f"the track of point {n} of {n}")
    a = np.array(recs, dtype=np.float64).reshape(n, 9)
    return a[:, 1:4].copy(), a[:, 4:7].astype(np.uint8)


def _text_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InstaSceneError("file not found", path) from None
    except UnicodeDecodeError as e:
        raise InstaSceneError(f"not a UTF-8 text file ({e.reason} at byte {e.start})", path) from None


def _is_skipped(line: str) -> bool:
    s = line.strip()
    return not s or s.startswith("#")


def _read_cameras_txt(path: Path) -> dict[int, tuple[int, int, np.ndarray]]:
    out = {}
    for lineno, line in enumerate(_text_lines(path), 1):
        if _is_skipped(line):
            continue
        where = f"line {lineno}"
        tok = line.split()
        if len(tok) < 4:
            raise InstaSceneError(f"{where}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...', got {line!r}", path)
        model = tok[1]
        try:
            cid, w, h = int(tok[0]), int(tok[2]), int(tok[3])
        except ValueError:
            raise InstaSceneError(f"{where}: CAMERA_ID, WIDTH and HEIGHT must be integers: {line!r}", path) from None
        if model not in MODEL_IDS:
            raise InstaSceneError(
                f"{where}: camera {cid} has unknown camera model {model!r} "
                f"(COLMAP knows {', '.join(MODEL_IDS)})",
                path,
            )
        n_params = CAMERA_MODELS[MODEL_IDS[model]][1]
        if model in ("PINHOLE", "SIMPLE_PINHOLE"):
            if len(tok) != 4 + n_params:
                raise InstaSceneError(f"{where}: {model} needs {n_params} parameters, got {len(tok) - 4}", path)
            try:
                params = [float(v) for v in tok[4:]]
            except ValueError:
                raise InstaSceneError(f"{where}: parameters must be numbers: {line!r}", path) from None
        else:
            params = None  # rejected below, with the model named
        out[cid] = (w, h, _intrinsics(model, params, cid, where, path))
    return out


def _read_images_txt(path: Path) -> list[_Image]:
    """Two lines per image; blank and '#' lines are skipped only before an image's first line,
    as COLMAP does, because the second (2D points) line may be empty."""
    lines = _text_lines(path)
    out = []
    i = 0
    while i < len(lines):
        line, lineno = lines[i], i + 1
        i += 1
        if _is_skipped(line):
            continue
        tok = line.split(maxsplit=9)
        if len(tok) != 10:
            raise InstaSceneError(
                f"line {lineno}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME', got {line!r}", path
            )
        try:
            iid, cid = int(tok[0]), int(tok[8])
            q = tuple(float(v) for v in tok[1:5])
            t = tuple(float(v) for v in tok[5:8])
        except ValueError:
            raise InstaSceneError(f"line {lineno}: malformed image line {line!r}", path) from None
        if i < len(lines):  # the 2D points line (absent at the very end of the file is fine)
            pts = lines[i].split()
            if len(pts) % 3:
                raise InstaSceneError(
                    f"line {i + 1}: expected 'X Y POINT3D_ID' triplets, got {len(pts)} values", path
                )
            i += 1
        out.append(_Image(iid, q, t, cid, tok[9].strip(), f"line {lineno}: image {iid}"))
    return out


def _read_points_txt(path: Path) -> tuple[np.ndarray, np.ndarray]:
    xyz, rgb = [], []
    for lineno, line in enumerate(_text_lines(path), 1):
        if _is_skipped(line):
            continue
        tok = line.split()
        if len(tok) < 8 or (len(tok) - 8) % 2:
            raise InstaSceneError(
                f"line {lineno}: expected 'POINT3D_ID X Y Z R G B ERROR (IMAGE_ID POINT2D_IDX)...', got {line!r}",
                path,
            )
        try:
            xyz.append([float(v) for v in tok[1:4]])
            c = [int(v) for v in tok[4:7]]
        except ValueError:
            raise InstaSceneError(f"line {lineno}: malformed point line {line!r}", path) from None
        if not all(0 <= v <= 255 for v in c):
            raise InstaSceneError(f"line {lineno}: colour {c} outside 0..255", path)
        rgb.append(c)
    return np.array(xyz, dtype=np.float64).reshape(-1, 3), np.array(rgb, dtype=np.uint8).reshape(-1, 3)


# ------------------------------------------------------------------ writing


def write_colmap(
    sparse_dir: str | os.PathLike,
    cameras: list[Camera],
    binary: bool = True,
    points: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """Write a PINHOLE COLMAP model that `read_colmap` reads back exactly.

    One COLMAP camera per distinct (width, height, K); images carry no 2D points; points3D
    (from `points` = (xyz, rgb), or empty) carry error 0 and empty tracks. Floats in text
    files are written with repr(), so text round-trips bit-exactly too. Files of the other
    format already in `sparse_dir` are left alone (and binary wins on reading).
    """
    sparse_dir = Path(sparse_dir)
    cam_ids: dict[tuple, int] = {}
    rows = []  # (image_id, qvec, tvec, camera_id, name)
    for i, cam in enumerate(cameras):
        key = (int(cam.width), int(cam.height), cam.fx, cam.fy, cam.cx, cam.cy)
        cid = cam_ids.setdefault(key, len(cam_ids) + 1)
        R, t = cam.world_to_camera[:3, :3], cam.world_to_camera[:3, 3]
        name = cam.image_name or cam.name
        rows.append((i + 1, quaternion_from_rotation(R), np.asarray(t, dtype=np.float64), cid, name))

    if points is None:
        xyz, rgb = np.zeros((0, 3)), np.zeros((0, 3), dtype=np.uint8)
    else:
        xyz, rgb = np.asarray(points[0], dtype=np.float64), np.asarray(points[1])
        if xyz.ndim != 2 or xyz.shape[1] != 3 or rgb.shape != xyz.shape:
            raise ValueError(f"points must be (xyz [P,3], rgb [P,3]), got {xyz.shape} and {rgb.shape}")
        if rgb.size and (rgb.min() < 0 or rgb.max() > 255):
            raise ValueError("rgb values must lie in 0..255")
        rgb = rgb.astype(np.uint8)

    if binary:
        _write_bin(sparse_dir, cam_ids, rows, xyz, rgb)
    else:
        _write_txt(sparse_dir, cam_ids, rows, xyz, rgb)


def _write_bin(sparse_dir: Path, cam_ids: dict, rows: list, xyz: np.ndarray, rgb: np.ndarray) -> None:
    with atomic_write(sparse_dir / "cameras.bin") as f:
        f.write(_U64.pack(len(cam_ids)))
        for (w, h, fx, fy, cx, cy), cid in cam_ids.items():
            f.write(_CAMERA.pack(cid, MODEL_IDS["PINHOLE"], w, h))
            f.write(struct.pack("<4d", fx, fy, cx, cy))
    with atomic_write(sparse_dir / "images.bin") as f:
        f.write(_U64.pack(len(rows)))
        for iid, q, t, cid, name in rows:
            f.write(_IMAGE.pack(iid, *q, *t, cid))
            f.write(name.encode("utf-8") + b"\0")
            f.write(_U64.pack(0))
    rec = np.zeros(len(xyz), dtype=_POINT_REC)
    rec["id"] = np.arange(1, len(xyz) + 1)
    rec["xyz"], rec["rgb"] = xyz, rgb
    with atomic_write(sparse_dir / "points3D.bin") as f:
        f.write(_U64.pack(len(xyz)))
        f.write(rec.tobytes())


def _write_txt(sparse_dir: Path, cam_ids: dict, rows: list, xyz: np.ndarray, rgb: np.ndarray) -> None:
    def num(v) -> str:
        return repr(float(v))

    lines = [
        "# Camera list with one line of data per camera:",
        "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
        f"# Number of cameras: {len(cam_ids)}",
    ]
    for (w, h, fx, fy, cx, cy), cid in cam_ids.items():
        lines.append(f"{cid} PINHOLE {w} {h} {num(fx)} {num(fy)} {num(cx)} {num(cy)}")
    with atomic_write(sparse_dir / "cameras.txt") as f:
        f.write(("\n".join(lines) + "\n").encode("utf-8"))

    lines = [
        "# Image list with two lines of data per image:",
        "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
        "#   POINTS2D[] as (X, Y, POINT3D_ID)",
        f"# Number of images: {len(rows)}, mean observations per image: 0",
    ]
    for iid, q, t, cid, name in rows:
        lines.append(f"{iid} {' '.join(map(num, q))} {' '.join(map(num, t))} {cid} {name}")
        lines.append("")
    with atomic_write(sparse_dir / "images.txt") as f:
        f.write(("\n".join(lines) + "\n").encode("utf-8"))

    lines = [
        "# 3D point list with one line of data per point:",
        "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
        f"# Number of points: {len(xyz)}, mean track length: 0",
    ]
    for i, (p, c) in enumerate(zip(xyz, rgb), 1):
        lines.append(f"{i} {num(p[0])} {num(p[1])} {num(p[2])} {c[0]} {c[1]} {c[2]} 0")
    with atomic_write(sparse_dir / "points3D.txt") as f:
        f.write(("\n".join(lines) + "\n").encode("utf-8"))
