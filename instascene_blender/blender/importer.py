"""Import a 2DGS/3DGS scene (folder or PLY): one splat object plus its cameras."""

from __future__ import annotations

import os

import bpy

from ..io.cameras import find_scene
from ..io.ply import SplatTable
from . import splats
from .cameras import create_cameras

DEFAULT_POINT_THRESHOLD = 200_000


def new_collection(name: str, parent=None):
    coll = bpy.data.collections.new(name)
    (parent or bpy.context.scene.collection).children.link(coll)
    return coll


def raise_transparent_bounces(scene, at_least: int = 64) -> None:
    """Cycles stops at `transparent_max_bounces` layers; overlapping splats need many."""
    cycles = getattr(scene, "cycles", None)
    if cycles is not None and hasattr(cycles, "transparent_max_bounces"):
        cycles.transparent_max_bounces = max(cycles.transparent_max_bounces, at_least)


def viewport_points_for(display: str, count: int, threshold: int) -> tuple[bool, bool]:
    """(points in viewport, points always) for the import option `display`."""
    if display == "POINTS":
        return True, False
    if display == "POINTS_ALWAYS":
        return True, True
    if display == "DISCS":
        return False, False
    return count > threshold, False  # AUTO


def use_standard_view(scene) -> None:
    """Splat colours are display-referred: show them 1:1 (AgX/Filmic would wash them out)."""
    try:
        scene.view_settings.view_transform = "Standard"
        scene.view_settings.look = "None"
    except (TypeError, ValueError):
        pass


def import_scene(path: str, scene, display: str = "AUTO", point_threshold: int = DEFAULT_POINT_THRESHOLD,
                 import_cameras: bool = True, standard_view: bool = True) -> dict:
    """Read the scene and build its objects; raises io errors (PlyError/SceneError) on bad input."""
    sp = find_scene(path)
    with SplatTable(sp.ply) as table:  # memory-mapped; every column copied out in one pass
        data = table.to_data()
        vp, always = viewport_points_for(display, len(data), point_threshold)
        coll = new_collection(sp.name, scene.collection)
        try:
            obj = splats.create_splat_object(f"{sp.name}_splats", data, coll, viewport_points=vp,
                                             always_points=always, source=sp.ply)
        except BaseException:
            bpy.data.collections.remove(coll)
            raise
    coll["instascene_scene"] = sp.root
    cams = []
    if import_cameras and sp.cameras:
        cam_coll = new_collection(f"{sp.name}_cameras", coll)
        cams = create_cameras(sp.cameras, cam_coll, scene)
    raise_transparent_bounces(scene)
    if standard_view:
        use_standard_view(scene)
    warnings = []
    if any(c.distorted for c in sp.cameras):
        warnings.append("some COLMAP cameras use a distorted model; their distortion is ignored")
    if sp.cameras and any(abs(c.fx - c.fy) > 1e-6 * c.fx for c in sp.cameras):
        warnings.append("fx != fy: the pixel aspect is set for the active camera only")
    return {"object": obj, "collection": coll, "cameras": cams, "count": len(data), "kind": data.kind,
            "scene_root": sp.root, "ply": sp.ply, "camera_source": sp.camera_source, "warnings": warnings,
            "name": os.path.basename(sp.root)}
