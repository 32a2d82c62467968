"""Triangle meshes with vertex colours (from io/mesh_ply.MeshData), built with foreach_set."""

from __future__ import annotations

import bpy
import numpy as np

from ..io.mesh_ply import MeshData
from . import nodes
from .splats import srgb_to_linear

COLOR_ATTRIBUTE = "gs_vertex_color"


def create_mesh(name: str, mesh_data: MeshData, origin=None):
    v = mesh_data.vertices if origin is None else (mesh_data.vertices.astype(np.float64) - origin)
    faces = np.ascontiguousarray(mesh_data.faces, np.int32)
    me = bpy.data.meshes.new(name)
    me.vertices.add(len(v))
    me.attributes["position"].data.foreach_set("vector", np.ascontiguousarray(v, np.float32).ravel())
    me.loops.add(faces.size)
    me.polygons.add(len(faces))
    me.loops.foreach_set("vertex_index", faces.ravel())
    me.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    me.update(calc_edges=True)
    if mesh_data.colors is not None:
        # PLY colours are display (sRGB) values; a FLOAT_COLOR attribute holds scene-linear ones
        rgba = np.array(mesh_data.colors, np.float32)
        rgba[:, :3] = srgb_to_linear(rgba[:, :3])
        attr = me.color_attributes.new(COLOR_ATTRIBUTE, "FLOAT_COLOR", "POINT")
        attr.data.foreach_set("color", np.ascontiguousarray(rgba).ravel())
        me.color_attributes.active_color = attr
        me.color_attributes.render_color_index = me.color_attributes.active_color_index
    me.materials.append(nodes.mesh_material())
    return me
