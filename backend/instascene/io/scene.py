"""One loader for every scene a user can point us at (contracts.md, formats.md §2-§5).

Accepted:
- an InstaScene data folder: `point_cloud.ply`, `images/`, `sparse/0/` (COLMAP, bin or
  txt; the files directly in `sparse/` work too), optional `sam/mask/<stem>.png`,
  `cameras.json` (used when there is no COLMAP model) and `gt/`;
- a 2DGS/3DGS training output: `cameras.json` + `point_cloud/iteration_N/point_cloud.ply`
  (the highest N, compared as numbers); images are optional there;
- a NeRF-synthetic folder: `transforms_train.json` (+ `transforms_test.json`) as the
  camera source (a single `transforms.json` is read too);
- a single Gaussian `.ply` file (splats only).

Everything is checked at load time, cheaply (image and mask sizes come from the file
headers, nothing is decoded): every image and mask must belong to a camera, every
camera needs its image when `images/` exists, and sizes must agree. An image smaller
or larger than its camera by an integer factor (2DGS `-r N`) or by the 1600-px-width
rule (`-r -1`) is accepted, and the camera is rescaled to the image.

Cameras are keyed and sorted by image stem (InstaScene's view order).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import InstaSceneError
from .cameras import Camera
from .cameras_json import read_cameras_json
from .colmap import read_colmap
from .masks import check_label_mode, open_image, read_label_map
from .nerf_synthetic import read_transforms_json
from .ply import looks_like_ply, read_ply
from .splats import Splats

IMAGE_EXTS = (".png", ".jpg", ".jpeg")
MASK_DIR = Path("sam") / "mask"
_ITERATION_RE = re.compile(r"iteration_(\d+)")

EXPECTED_LAYOUTS = (
    "expected one of: an InstaScene data folder (point_cloud.ply, images/, sparse/0/ with a COLMAP "
    "model, optional sam/mask/, cameras.json, gt/); a 2DGS/3DGS training output (cameras.json + "
    "point_cloud/iteration_*/point_cloud.ply); a NeRF-synthetic folder (transforms_train.json); "
    "or a Gaussian splat .ply file"
)


@dataclass
class Scene:
    root: Path  # the scene folder (for a lone PLY: its folder)
    ply_path: Path | None
    splats: Splats | None  # None when there is no PLY or load_splats=False
    cameras: list[Camera]  # sorted by name; rescaled to the images' resolution
    image_paths: dict[str, Path]  # camera name (image stem) -> image file
    mask_paths: dict[str, Path]  # camera name -> sam/mask/<stem>.png
    has_gt: bool
    camera_source: str  # 'colmap', 'cameras.json', 'transforms.json' or 'none'
    camera_path: Path | None = None  # the COLMAP folder or the json file the cameras came from
    layout: str = "instascene"  # 'instascene', 'training', 'nerf-synthetic' or 'ply'

    # ------------------------------------------------------------------ lookup
    def camera(self, name: str) -> Camera:
        for cam in self.cameras:
            if cam.name == name:
                return cam
        raise InstaSceneError(f"no camera named {name!r} in this scene", self.root)

    @property
    def gt_dir(self) -> Path | None:
        return self.root / "gt" if self.has_gt else None

    def require_splats(self) -> Splats:
        """The splats, or a clear error when the scene has none (or they were not loaded)."""
        if self.splats is not None:
            return self.splats
        if self.ply_path is not None:
            self.splats = read_ply(self.ply_path)
            return self.splats
        raise InstaSceneError(
            "this scene has no Gaussians: expected point_cloud.ply or point_cloud/iteration_*/point_cloud.ply",
            self.root,
        )

    def require_cameras(self) -> list[Camera]:
        if self.cameras:
            return self.cameras
        raise InstaSceneError(
            "this scene has no cameras: expected sparse/0/ (COLMAP), cameras.json or transforms_train.json",
            self.root,
        )

    # ------------------------------------------------------------------ pixels
    def image(self, name: str, background=(0, 0, 0)) -> np.ndarray:
        """uint8 [H, W, 3] of view `name`; transparent pixels composited over `background` (0..255)."""
        cam = self.camera(name)
        path = self.image_paths.get(name)
        if path is None:
            raise InstaSceneError(f"camera {name!r} has no image file", self.root)
        from PIL import Image

        with open_image(path) as im:
            try:
                im.load()
                rgb = _to_rgb(im, background)
            except Image.DecompressionBombError as e:
                raise InstaSceneError(f"cannot read image: {e}", path) from None
            except (OSError, SyntaxError, ValueError) as e:
                raise InstaSceneError(f"cannot decode image (truncated or corrupt file?): {e}", path) from None
        if rgb.shape[:2] != (cam.height, cam.width):
            raise InstaSceneError(
                f"image is {rgb.shape[1]}x{rgb.shape[0]} but its camera {name!r} is "
                f"{cam.width}x{cam.height} (did the file change after the scene was loaded?)",
                path,
            )
        return rgb

    def mask(self, name: str) -> np.ndarray | None:
        """int32 [H, W] label map of view `name` (0 = no mask), or None when it has no mask."""
        cam = self.camera(name)
        path = self.mask_paths.get(name)
        if path is None:
            return None
        labels = read_label_map(path)
        if labels.shape != (cam.height, cam.width):
            raise InstaSceneError(_mask_size_message(labels.shape[1], labels.shape[0], cam, self.image_paths.get(name)), path)
        return labels


# ---------------------------------------------------------------------- loading


def load_scene(path: str | os.PathLike, load_splats: bool = True) -> Scene:
    """Load and validate a scene folder (any layout above) or a single Gaussian PLY file."""
    path = Path(path)
    if not path.exists():
        raise InstaSceneError("no such file or folder", path)
    if path.is_file():
        if path.suffix.lower() != ".ply" and not looks_like_ply(path):
            raise InstaSceneError(f"not a scene folder or a .ply file; {EXPECTED_LAYOUTS}", path)
        return Scene(
            root=path.parent,
            ply_path=path,
            splats=read_ply(path) if load_splats else None,
            cameras=[],
            image_paths={},
            mask_paths={},
            has_gt=False,
            camera_source="none",
            layout="ply",
        )
    if not path.is_dir():
        raise InstaSceneError(f"not a regular file or folder; {EXPECTED_LAYOUTS}", path)

    root = path
    ply_path, ply_layout = _find_ply(root)
    cameras, source, cam_path, cam_desc = _find_cameras(root)
    images_dir = root / "images" if (root / "images").is_dir() else None
    mask_dir = root / MASK_DIR if (root / MASK_DIR).is_dir() else None

    if ply_path is None and source == "none":
        raise InstaSceneError(f"not a scene folder ({_listing(root)}); {EXPECTED_LAYOUTS}", root)
    if source == "none" and (images_dir or mask_dir):
        what = "images/" if images_dir else "sam/mask/"
        raise InstaSceneError(
            f"{what} found but no cameras: expected a COLMAP model in sparse/0/, cameras.json or "
            "transforms_train.json",
            root,
        )

    by_name = {c.name: c for c in cameras}
    image_paths = _match_images(images_dir, cameras, by_name, cam_desc) if images_dir else {}
    if images_dir is None and source == "transforms.json":  # NeRF-synthetic: train/r_0.png etc.
        for cam in cameras:
            p = cam_path.parent / cam.image_name
            if p.is_file():
                image_paths[cam.name] = p

    # image sizes (headers only) against the cameras; rescale for 2DGS's -r N / 1600-px rule
    for cam in cameras:
        p = image_paths.get(cam.name)
        if p is None:
            continue
        with open_image(p) as im:
            size = im.size
        by_name[cam.name] = _fit_camera(cam, size, p, f"its camera {cam.name!r} in {cam_desc}")
        if images_dir is not None:
            by_name[cam.name].image_name = p.relative_to(images_dir).as_posix()

    mask_paths = _match_masks(mask_dir, by_name, image_paths, cam_desc) if mask_dir else {}

    splats = read_ply(ply_path) if (ply_path is not None and load_splats) else None
    if ply_layout == "training":
        layout = "training"
    elif ply_path is None and source == "transforms.json" and images_dir is None:
        layout = "nerf-synthetic"
    elif ply_path is None and source == "cameras.json" and images_dir is None:
        layout = "training"
    else:
        layout = "instascene"
    return Scene(
        root=root,
        ply_path=ply_path,
        splats=splats,
        cameras=sorted(by_name.values(), key=lambda c: c.name),
        image_paths=dict(sorted(image_paths.items())),
        mask_paths=dict(sorted(mask_paths.items())),
        has_gt=(root / "gt").is_dir(),
        camera_source=source,
        camera_path=cam_path,
        layout=layout,
    )


def _find_ply(root: Path) -> tuple[Path | None, str | None]:
    """root/point_cloud.ply, else the highest point_cloud/iteration_N/point_cloud.ply (N numeric)."""
    p = root / "point_cloud.ply"
    if p.is_file():
        return p, "instascene"
    pc = root / "point_cloud"
    if not pc.is_dir():
        return None, None
    found = []
    for d in pc.iterdir():
        m = _ITERATION_RE.fullmatch(d.name)
        if m and (d / "point_cloud.ply").is_file():
            found.append((int(m.group(1)), d.name, d / "point_cloud.ply"))
    if not found:
        raise InstaSceneError(
            "no iteration_*/point_cloud.ply inside (a 2DGS/3DGS training output has e.g. "
            "point_cloud/iteration_30000/point_cloud.ply; did training finish?)",
            pc,
        )
    return max(found)[2], "training"


def _colmap_dir(root: Path) -> Path | None:
    """sparse/0/ if it holds a model, else sparse/ itself if the files lie there directly."""
    sparse = root / "sparse"
    for d in (sparse / "0", sparse):
        if d.is_dir() and any((d / f"{s}{e}").is_file() for s in ("cameras", "images") for e in (".bin", ".txt")):
            return d
    return None


def _find_cameras(root: Path) -> tuple[list[Camera], str, Path | None, str]:
    """(cameras, source, path, description for messages); COLMAP > cameras.json > transforms."""
    sparse = _colmap_dir(root)
    if sparse is not None:
        cams, source, path = read_colmap(sparse), "colmap", sparse
        desc = f"the COLMAP model {_rel(sparse, root)}/"
    elif (root / "cameras.json").is_file():
        path = root / "cameras.json"
        cams, source, desc = read_cameras_json(path), "cameras.json", "cameras.json"
    elif (root / "transforms_train.json").is_file() or (root / "transforms.json").is_file():
        path = root / "transforms_train.json"
        if not path.is_file():
            path = root / "transforms.json"
        cams, source, desc = read_transforms_json(path), "transforms.json", path.name
        test = root / "transforms_test.json"
        if path.name == "transforms_train.json" and test.is_file():
            cams = cams + read_transforms_json(test)
            desc = "transforms_train.json + transforms_test.json"
        if len({c.name for c in cams}) < len(cams):  # train/r_0 and test/r_0: name by relative path
            cams = [replace(c, name=str(Path(c.image_name).with_suffix("").as_posix())) for c in cams]
    else:
        if (root / "sparse").is_dir():
            raise InstaSceneError(
                "no COLMAP model found: expected sparse/0/{cameras,images}.{bin,txt} "
                "(or the files directly in sparse/)",
                root / "sparse",
            )
        return [], "none", None, "no camera source"

    seen: dict[str, Camera] = {}
    for c in cams:
        if c.name in seen:
            a, b = seen[c.name].image_name or c.name, c.image_name or c.name
            raise InstaSceneError(
                f"two cameras have the image stem {c.name!r} ({a} and {b}); stems must be unique "
                "because images and masks are matched by stem",
                path,
            )
        seen[c.name] = c
    return cams, source, path, desc


def _match_images(images_dir: Path, cameras: list[Camera], by_name: dict, cam_desc: str) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for f in sorted(images_dir.iterdir()):
        if f.name.startswith(".") or f.suffix.lower() not in IMAGE_EXTS or not f.is_file():
            continue
        if f.stem in files:
            raise InstaSceneError(
                f"two images have the stem {f.stem!r} ({files[f.stem].name} and {f.name}); keep one",
                images_dir,
            )
        files[f.stem] = f
    for cam in cameras:  # COLMAP names may hold sub-folders (images/cam1/0001.jpg)
        if cam.name not in files and cam.image_name and "/" in cam.image_name:
            p = images_dir / cam.image_name
            if p.is_file():
                files[cam.name] = p
    orphans = [f for stem, f in files.items() if stem not in by_name]
    if orphans:
        more = f" ({len(orphans) - 1} more image(s) have no camera either)" if len(orphans) > 1 else ""
        raise InstaSceneError(
            f"image has no camera: {cam_desc} names no view {orphans[0].stem!r}; remove the image "
            f"or add its camera{more}",
            orphans[0],
        )
    missing = [c for c in cameras if c.name not in files]
    if missing:
        c = missing[0]
        expected = c.image_name or f"{c.name}.png/.jpg"
        more = f" ({len(missing) - 1} more camera(s) lack their image too)" if len(missing) > 1 else ""
        raise InstaSceneError(
            f"camera {c.name!r} from {cam_desc} has no image here (expected {expected}){more}", images_dir
        )
    return files


def _match_masks(mask_dir: Path, by_name: dict, image_paths: dict, cam_desc: str) -> dict[str, Path]:
    masks: dict[str, Path] = {}
    for f in sorted(mask_dir.iterdir()):
        if f.name.startswith(".") or not f.is_file():
            continue
        ext = f.suffix.lower()
        if ext in (".jpg", ".jpeg"):
            raise InstaSceneError("masks must be PNG label maps: JPEG compression changes the labels", f)
        if ext != ".png":
            continue
        if f.stem in masks:
            raise InstaSceneError(f"two masks have the stem {f.stem!r} ({masks[f.stem].name} and {f.name})", mask_dir)
        cam = by_name.get(f.stem)
        if cam is None:
            raise InstaSceneError(
                f"mask has no camera: {cam_desc} names no view {f.stem!r}; mask files must be named "
                "after their image's stem",
                f,
            )
        with open_image(f, "mask") as im:
            mode, (w, h) = im.mode, im.size
        check_label_mode(mode, f)
        if (w, h) != (cam.width, cam.height):
            img = image_paths.get(f.stem)
            if img is not None:
                raise InstaSceneError(_mask_size_message(w, h, cam, img), f)
            # no image file (training output): the mask decides the resolution, as an image would
            by_name[f.stem] = _fit_camera(cam, (w, h), f, f"its camera {cam.name!r} in {cam_desc}")
        masks[f.stem] = f
    return masks


def _mask_size_message(w: int, h: int, cam: Camera, image: Path | None) -> str:
    if image is not None:
        return f"mask is {w}x{h} but its image {image} is {cam.width}x{cam.height}; a mask must have its image's size"
    return f"mask is {w}x{h} but its camera {cam.name!r} is {cam.width}x{cam.height}"


def _fit_camera(cam: Camera, size: tuple[int, int], path: Path, against: str) -> Camera:
    """`cam` at the file's resolution when the two differ by a trainer's rescale, else an error."""
    w, h = size
    if (w, h) == (cam.width, cam.height):
        return replace(cam)
    if not is_training_rescale((cam.width, cam.height), (w, h)):
        raise InstaSceneError(
            f"size {w}x{h} does not match {against}, which is {cam.width}x{cam.height} "
            "(nor is it an integer downscale, 2DGS -r N, or the 1600-px-width rescale)",
            path,
        )
    return cam.resized(w, h)


def is_training_rescale(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether sizes a and b differ the way 2DGS/3DGS rescale images: by an integer factor
    (`-r 2/4/8`, rounded either way) or to 1600 px width (`-r -1`, for wider images)."""
    (bw, bh), (sw, sh) = (a, b) if a[0] >= b[0] else (b, a)
    if min(bw, bh, sw, sh) <= 0:
        return False
    f = round(bw / sw)
    if f >= 2 and abs(bw / f - sw) <= 1 and abs(bh / f - sh) <= 1:
        return True
    return bw > 1600 and sw in (1599, 1600) and abs(bh * sw / bw - sh) <= 1


def _to_rgb(im, background) -> np.ndarray:
    mode = im.mode
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):  # 16-bit grayscale photo
        a = np.asarray(im).astype(np.float64)
        g = np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if "A" in mode or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA")).astype(np.float32)
        alpha = rgba[:, :, 3:] / 255.0
        bg = np.asarray(background, dtype=np.float32).reshape(1, 1, -1)
        out = rgba[:, :, :3] * alpha + bg * (1.0 - alpha)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return np.array(im.convert("RGB"), dtype=np.uint8)


def _rel(p: Path, root: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


def _listing(root: Path, limit: int = 8) -> str:
    try:
        entries = sorted(root.iterdir(), key=lambda p: p.name)
    except OSError as e:
        return f"cannot list it: {e.strerror or e}"
    if not entries:
        return "it is empty"
    names = [p.name + ("/" if p.is_dir() else "") for p in entries[:limit]]
    more = f", ... ({len(entries) - limit} more)" if len(entries) > limit else ""
    return f"it contains {', '.join(names)}{more}"


__all__ = ["Scene", "load_scene", "is_training_rescale", "EXPECTED_LAYOUTS", "IMAGE_EXTS"]
