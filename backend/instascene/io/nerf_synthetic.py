"""NeRF-synthetic transforms_*.json (Blender scenes; formats.md §4).

`transform_matrix` is camera-to-world in OpenGL/Blender camera axes (y up, looking
along -z); negating its columns 1 and 2 gives OpenCV axes, our convention (§6).
The focal comes from the horizontal field of view `camera_angle_x`, and fy = fx as in
2DGS; the optional instant-ngp style keys w, h, fl_x, fl_y, cx, cy take precedence.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ..errors import InstaSceneError
from .cameras import Camera, intrinsics
from .cameras_json import as_array, as_size, load_json

GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def read_transforms_json(path: str | os.PathLike) -> list[Camera]:
    """Cameras in file order; image size from w/h keys, else the first frame's PNG header."""
    path = Path(path)
    data = load_json(path)
    if not isinstance(data, dict):
        raise InstaSceneError("expected a JSON object with 'frames'", path)
    frames = data.get("frames")
    if not isinstance(frames, list) or not frames:
        raise InstaSceneError("'frames' must be a non-empty list", path)
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise InstaSceneError(f"frame {i} is not an object", path)
        for key in ("file_path", "transform_matrix"):
            if key not in frame:
                raise InstaSceneError(f"frame {i} lacks field '{key}'", path)
        if not isinstance(frame["file_path"], str) or not frame["file_path"]:
            raise InstaSceneError(f"frame {i}: file_path must be a non-empty string", path)

    width, height = _image_size(data, frames[0]["file_path"], path)
    K = intrinsics(*_focal_and_centre(data, width, height, path))

    cameras = []
    for i, frame in enumerate(frames):
        c2w_gl = as_array(frame["transform_matrix"], (4, 4), f"frame {i}: transform_matrix", path)
        c2w = c2w_gl @ GL_TO_CV  # negate columns 1 and 2: OpenGL -> OpenCV camera axes
        try:
            w2c = np.linalg.inv(c2w)
        except np.linalg.LinAlgError:
            raise InstaSceneError(f"frame {i}: transform_matrix is singular", path) from None
        rel = _relative_image(frame["file_path"], path.parent)
        cameras.append(Camera(Path(rel).stem, width, height, K.copy(), w2c, rel))
    return cameras


def _image_path(file_path: str, root: Path) -> Path:
    """The loaders append '.png'; a file_path that already names an existing file is kept."""
    with_png = root / (file_path + ".png")
    if not with_png.exists() and (root / file_path).is_file():
        return root / file_path
    return with_png


def _relative_image(file_path: str, root: Path) -> str:
    """Image name relative to the json's folder, with extension ('./train/r_0' -> 'train/r_0.png')."""
    return Path(os.path.relpath(_image_path(file_path, root), root)).as_posix()


def _image_size(data: dict, first_file: str, path: Path) -> tuple[int, int]:
    if "w" in data and "h" in data:
        return as_size(data["w"], "w", path), as_size(data["h"], "h", path)
    image = _image_path(first_file, path.parent)
    try:
        from PIL import Image

        with Image.open(image) as im:  # reads the header only
            return im.size
    except FileNotFoundError:
        raise InstaSceneError(
            f"no 'w'/'h' keys and the first frame's image {image} is missing, so the image size is unknown",
            path,
        ) from None
    except OSError as e:
        raise InstaSceneError(f"cannot read the size of the first frame's image {image}: {e}", path) from None


def _focal_and_centre(data: dict, width: int, height: int, path: Path) -> tuple[float, float, float, float]:
    def number(key: str) -> float:
        return float(as_array(data[key], (), key, path))

    if "fl_x" in data:
        fx = number("fl_x")
    elif "camera_angle_x" in data:
        angle = number("camera_angle_x")
        if not 0.0 < angle < math.pi:
            raise InstaSceneError(f"camera_angle_x must lie in (0, pi) radians, got {angle}", path)
        fx = 0.5 * width / math.tan(0.5 * angle)
    else:
        raise InstaSceneError("neither 'camera_angle_x' nor 'fl_x' is given, so the focal is unknown", path)
    fy = number("fl_y") if "fl_y" in data else fx
    cx = number("cx") if "cx" in data else width / 2.0
    cy = number("cy") if "cy" in data else height / 2.0
    return fx, fy, cx, cy
