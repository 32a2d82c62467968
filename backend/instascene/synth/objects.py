"""Real object meshes for the built-in scene, read from the installed `pybullet_data` package.

Nothing is copied into the repository: the meshes ship with pybullet (zlib licence,
mixed provenance). Each object is a watertight geometry mesh (for physics, ground
truth and surfel sampling) plus a way to colour any point of its surface: the
object's texture image through its UVs where it has one, else its material colour
with a faint procedural pattern so that flat-coloured objects still have texture.
"""

from __future__ import annotations

import colorsys
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

from ..errors import InstaSceneError

# name, mesh path inside pybullet_data; all are watertight once UV seams are merged
CATALOG = (
    ("duck", "duck.obj"),
    ("mug", "objects/mug_col.obj"),
    ("bunny", "bunny.obj"),
    ("soccerball", "soccerball.obj"),
    ("torus", "torus/torus_textured.obj"),
    ("cylinder", "toys/cylinder.obj"),
    ("prism", "toys/prism.obj"),
    ("concave_box", "toys/concave_box.obj"),
    ("shape_sorter", "toys/shape_sorter.obj"),
    ("globe", "textured_sphere_smooth.obj"),
)
N_RANDOM = 1000  # pybullet_data/random_urdfs/000..999 (procedural blobs)
DEFAULT_GREY = (102, 102, 102)


def data_path() -> Path:
    try:
        import pybullet_data
    except ImportError as e:  # pragma: no cover - a dependency of the project
        raise InstaSceneError("the built-in scene needs the `pybullet` package (pip install pybullet)") from e
    return Path(pybullet_data.getDataPath())


@dataclass
class SceneObject:
    name: str
    source: str  # path inside pybullet_data
    mesh: trimesh.Trimesh  # watertight geometry, centred, scaled to tabletop size (metres)
    visual: trimesh.Trimesh  # same surface, unmerged, with the UVs of the original file
    texture: np.ndarray | None  # [h, w, 3] float in [0, 1]
    base_color: np.ndarray  # [3] in [0, 1]
    pattern_axis: np.ndarray  # [3] unit; stripes along it when there is no texture image

    def colors_at(self, face_index: np.ndarray, points: np.ndarray) -> np.ndarray:
        """RGB in [0, 1] of surface points (in this object's local frame) on `face_index`."""
        if self.texture is not None:
            tri = self.visual.triangles[face_index]
            bary = trimesh.triangles.points_to_barycentric(tri, points)
            uv = np.einsum("nk,nkj->nj", bary, self.visual.visual.uv[self.visual.faces[face_index]])
            h, w = self.texture.shape[:2]
            x = np.clip(((uv[:, 0] % 1.0) * (w - 1)).round().astype(int), 0, w - 1)
            y = np.clip(((1.0 - uv[:, 1] % 1.0) * (h - 1)).round().astype(int), 0, h - 1)
            return self.texture[y, x]
        scale = float(np.max(self.mesh.extents))
        phase = points @ self.pattern_axis / scale * 2 * np.pi * 3.0
        shade = 0.88 + 0.12 * np.sign(np.sin(phase))
        return np.clip(self.base_color[None] * shade[:, None], 0, 1)


def _urdf_rgba(urdf: Path) -> np.ndarray | None:
    m = re.search(r'<color\s+rgba="([^"]+)"', urdf.read_text()) if urdf.exists() else None
    return np.array([float(v) for v in m.group(1).split()[:3]]) if m else None


def load_object(name: str, source: str, target_size: float, rng: np.random.Generator) -> SceneObject | None:
    """Load `source`, centre it on its bounding box and scale its largest extent to
    `target_size`; None when its geometry is not watertight."""
    path = data_path() / source
    visual = trimesh.load(path, force="mesh", process=False)
    mesh = trimesh.load(path, force="mesh")
    if not mesh.is_watertight:  # UV seams split the surface: merge them
        mesh.merge_vertices(merge_tex=True, merge_norm=True)
    if not mesh.is_watertight:
        return None
    center = mesh.bounds.mean(axis=0)
    scale = target_size / float(np.max(mesh.extents))
    for m in (mesh, visual):
        m.apply_translation(-center)
        m.apply_scale(scale)

    texture = None
    material = getattr(visual.visual, "material", None)
    image = getattr(material, "image", None)
    if image is not None and getattr(visual.visual, "uv", None) is not None:
        texture = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    color = None
    if material is not None:
        diffuse = np.asarray(getattr(material, "main_color", DEFAULT_GREY))[:3]
        if not np.allclose(diffuse, DEFAULT_GREY, atol=2) and diffuse.std() > 20:
            color = diffuse / 255.0
    if color is None:
        color = _urdf_rgba(path.with_suffix(".urdf"))
    if color is None or np.ptp(color) < 0.1:
        color = np.array(colorsys.hsv_to_rgb(rng.random(), 0.45 + 0.3 * rng.random(), 0.55 + 0.35 * rng.random()))
    axis = rng.normal(size=3)
    return SceneObject(name, source, mesh, visual, texture, np.asarray(color, float), axis / np.linalg.norm(axis))


def choose_objects(count: int, rng: np.random.Generator, size_range=(0.07, 0.13)) -> list[SceneObject]:
    """`count` distinct objects: the named catalogue first (shuffled), then procedural blobs."""
    names = list(CATALOG)
    rng.shuffle(names)
    candidates = names + [(f"blob_{i:03d}", f"random_urdfs/{i:03d}/{i:03d}.obj") for i in rng.permutation(N_RANDOM)]
    chosen = []
    for name, source in candidates:
        if len(chosen) == count:
            break
        obj = load_object(name, source, float(rng.uniform(*size_range)), rng)
        if obj is not None:
            chosen.append(obj)
    return chosen
