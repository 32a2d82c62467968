"""Blender cameras from CameraData (conversion math in io/cameras.py, `blender_camera`)."""

from __future__ import annotations

import bpy
from mathutils import Matrix

from ..io.cameras import CameraData, blender_camera


def create_camera(cam: CameraData, collection, name: str | None = None):
    bc = blender_camera(cam)
    data = bpy.data.cameras.new(name or cam.name)
    data.type = "PERSP"
    data.sensor_fit = bc.sensor_fit
    data.sensor_width = bc.sensor_width
    data.sensor_height = bc.sensor_width
    data.lens = bc.lens
    data.shift_x, data.shift_y = bc.shift_x, bc.shift_y
    data.clip_start, data.clip_end = 0.01, 1000.0
    data.display_size = 0.2
    obj = bpy.data.objects.new(name or cam.name, data)
    obj.matrix_world = Matrix(bc.matrix_world.tolist())
    obj["instascene_camera"] = cam.name
    obj["instascene_resolution"] = list(bc.resolution)
    obj["instascene_pixel_aspect"] = list(bc.pixel_aspect)
    collection.objects.link(obj)
    return obj


def use_camera_render_settings(scene, obj) -> None:
    """Make `obj` the scene camera with its image size and pixel aspect."""
    scene.camera = obj
    w, h = obj.get("instascene_resolution", (scene.render.resolution_x, scene.render.resolution_y))
    ax, ay = obj.get("instascene_pixel_aspect", (1.0, 1.0))
    scene.render.resolution_x, scene.render.resolution_y = int(w), int(h)
    scene.render.resolution_percentage = 100
    scene.render.pixel_aspect_x, scene.render.pixel_aspect_y = float(ax), float(ay)


def create_cameras(cameras: list[CameraData], collection, scene=None) -> list:
    objs = [create_camera(c, collection) for c in cameras]
    if objs and scene is not None:
        use_camera_render_settings(scene, objs[0])
    return objs
