"""Geometry nodes and materials that draw splat meshes (blender.md §8).

The splat mesh holds one loose vertex per Gaussian with point attributes
`gs_rot` (unit quaternion), `gs_scale` (tangent scales, tiny normal scale),
`gs_color` and `gs_opacity`. The node group "InstaScene Splats":

    Mesh to Points -> Set Position (+-2 % of the splat size along its normal, so exactly
    coplanar surfels do not hide each other in Cycles), then either
      Instance on Points (Mesh Circle: 8-vertex fan of radius "Disc Size" in sigmas,
      rotated by gs_rot, scaled by gs_scale) -> Set Material (discs), or
      Set Material (points, radius = max tangent scale x "Point Size").
    Switch: points when "Points Always", or "Points in Viewport" while drawing the viewport.

The disc material reads the instancer's gs_color/gs_opacity (INSTANCER attributes)
and fades with exp(-|p|²/2) of the disc's object-space coordinate (p in sigmas),
mixing Emission (the splat's radiance) with Transparent; EEVEE uses dithered
transparency. Both engines render it; Cycles needs enough transparent bounces,
which the importer raises.
"""

from __future__ import annotations

import bpy

GROUP_NAME = "InstaScene Splats"
DISC_MATERIAL = "InstaScene Splat Disc"
POINT_MATERIAL = "InstaScene Splat Point"
MESH_MATERIAL = "InstaScene Vertex Colour"
VERSION = 2  # bump when the node setup changes; older groups are rebuilt

INPUT_VIEWPORT_POINTS = "Points in Viewport"
INPUT_ALWAYS_POINTS = "Points Always"
INPUT_DISC_SIZE = "Disc Size"
INPUT_POINT_SIZE = "Point Size"


def _mark(idblock) -> None:
    idblock["instascene_version"] = VERSION


def _current(idblock) -> bool:
    return idblock is not None and idblock.get("instascene_version") == VERSION


def _emission_transparent(mat, nodes, links, color_socket, alpha_socket):
    out = nodes.new("ShaderNodeOutputMaterial")
    out.location = (600, 0)
    emit = nodes.new("ShaderNodeEmission")
    emit.location = (200, -100)
    emit.inputs["Strength"].default_value = 1.0
    transp = nodes.new("ShaderNodeBsdfTransparent")
    transp.location = (200, 100)
    mix = nodes.new("ShaderNodeMixShader")
    mix.location = (400, 0)
    links.new(color_socket, emit.inputs["Color"])
    links.new(alpha_socket, mix.inputs["Fac"])
    links.new(transp.outputs[0], mix.inputs[1])
    links.new(emit.outputs[0], mix.inputs[2])
    links.new(mix.outputs[0], out.inputs["Surface"])
    for attr, value in (("surface_render_method", "DITHERED"), ("blend_method", "HASHED")):
        if hasattr(mat, attr):
            try:
                setattr(mat, attr, value)
            except (TypeError, ValueError):
                pass
            break
    mat.use_backface_culling = False


def _new_material(name: str):
    mat = bpy.data.materials.get(name)
    if _current(mat):
        return mat, None, None
    if mat is None:
        mat = bpy.data.materials.new(name)
    if bpy.app.version < (5, 0, 0):
        mat.use_nodes = True  # always on (and deprecated) from 5.0
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    nodes.clear()
    _mark(mat)
    return mat, nodes, links


def disc_material():
    mat, nodes, links = _new_material(DISC_MATERIAL)
    if nodes is None:
        return mat
    col = nodes.new("ShaderNodeAttribute")
    col.attribute_type, col.attribute_name = "INSTANCER", "gs_color"
    col.location = (-600, 100)
    opa = nodes.new("ShaderNodeAttribute")
    opa.attribute_type, opa.attribute_name = "INSTANCER", "gs_opacity"
    opa.location = (-600, -150)
    tex = nodes.new("ShaderNodeTexCoord")
    tex.location = (-800, -350)
    dot = nodes.new("ShaderNodeVectorMath")
    dot.operation = "DOT_PRODUCT"
    dot.location = (-600, -350)
    links.new(tex.outputs["Object"], dot.inputs[0])
    links.new(tex.outputs["Object"], dot.inputs[1])
    half = nodes.new("ShaderNodeMath")
    half.operation, half.location = "MULTIPLY", (-400, -350)
    half.inputs[1].default_value = -0.5
    links.new(dot.outputs["Value"], half.inputs[0])
    gauss = nodes.new("ShaderNodeMath")
    gauss.operation, gauss.location = "EXPONENT", (-250, -350)
    links.new(half.outputs[0], gauss.inputs[0])
    alpha = nodes.new("ShaderNodeMath")
    alpha.operation, alpha.location = "MULTIPLY", (-50, -250)
    alpha.use_clamp = True
    links.new(opa.outputs["Fac"], alpha.inputs[0])
    links.new(gauss.outputs[0], alpha.inputs[1])
    _emission_transparent(mat, nodes, links, col.outputs["Color"], alpha.outputs[0])
    return mat


def point_material():
    mat, nodes, links = _new_material(POINT_MATERIAL)
    if nodes is None:
        return mat
    col = nodes.new("ShaderNodeAttribute")
    col.attribute_type, col.attribute_name = "GEOMETRY", "gs_color"
    col.location = (-300, 100)
    opa = nodes.new("ShaderNodeAttribute")
    opa.attribute_type, opa.attribute_name = "GEOMETRY", "gs_opacity"
    opa.location = (-300, -150)
    _emission_transparent(mat, nodes, links, col.outputs["Color"], opa.outputs["Fac"])
    return mat


def mesh_material():
    """Principled BSDF whose base colour is the mesh's `gs_vertex_color` attribute."""
    mat, nodes, links = _new_material(MESH_MATERIAL)
    if nodes is None:
        return mat
    out = nodes.new("ShaderNodeOutputMaterial")
    out.location = (300, 0)
    bsdf = nodes.new("ShaderNodeBsdfPrincipled")
    col = nodes.new("ShaderNodeVertexColor")
    col.layer_name = "gs_vertex_color"
    col.location = (-300, 0)
    links.new(col.outputs["Color"], bsdf.inputs["Base Color"])
    links.new(bsdf.outputs[0], out.inputs["Surface"])
    return mat


def splat_node_group():
    ng = bpy.data.node_groups.get(GROUP_NAME)
    if _current(ng) and ng.bl_idname == "GeometryNodeTree":
        return ng
    if ng is None or ng.bl_idname != "GeometryNodeTree":
        ng = bpy.data.node_groups.new(GROUP_NAME, "GeometryNodeTree")
    ng.nodes.clear()
    ng.interface.clear()
    _mark(ng)
    iface = ng.interface
    iface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    s = iface.new_socket(INPUT_VIEWPORT_POINTS, in_out="INPUT", socket_type="NodeSocketBool")
    s.default_value = False
    s = iface.new_socket(INPUT_ALWAYS_POINTS, in_out="INPUT", socket_type="NodeSocketBool")
    s.default_value = False
    s = iface.new_socket(INPUT_DISC_SIZE, in_out="INPUT", socket_type="NodeSocketFloat")
    s.default_value, s.min_value, s.max_value = 3.0, 0.1, 10.0
    s = iface.new_socket(INPUT_POINT_SIZE, in_out="INPUT", socket_type="NodeSocketFloat")
    s.default_value, s.min_value, s.max_value = 1.0, 0.0, 100.0
    iface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")

    nodes, links = ng.nodes, ng.links
    gin = nodes.new("NodeGroupInput")
    gin.location = (-1000, 0)
    gout = nodes.new("NodeGroupOutput")
    gout.location = (900, 0)

    def named(name, dtype, loc):
        n = nodes.new("GeometryNodeInputNamedAttribute")
        n.data_type = dtype
        n.inputs["Name"].default_value = name
        n.location = loc
        return n

    scale = named("gs_scale", "FLOAT_VECTOR", (-1000, -300))
    sep = nodes.new("ShaderNodeSeparateXYZ")
    sep.location = (-800, -300)
    links.new(scale.outputs["Attribute"], sep.inputs[0])
    mx = nodes.new("ShaderNodeMath")
    mx.operation, mx.location = "MAXIMUM", (-650, -300)
    links.new(sep.outputs["X"], mx.inputs[0])
    links.new(sep.outputs["Y"], mx.inputs[1])
    rad = nodes.new("ShaderNodeMath")
    rad.operation, rad.location = "MULTIPLY", (-500, -300)
    links.new(mx.outputs[0], rad.inputs[0])
    links.new(gin.outputs[INPUT_POINT_SIZE], rad.inputs[1])

    to_points = nodes.new("GeometryNodeMeshToPoints")
    to_points.location = (-300, 0)
    links.new(gin.outputs["Geometry"], to_points.inputs["Mesh"])
    links.new(rad.outputs[0], to_points.inputs["Radius"])

    # Nudge every surfel along its normal by a random ±JITTER of its size (display only).
    # Exactly coplanar surfels (flat synthetic or planar regions) otherwise hide each other
    # in Cycles: after the first transparent hit, coplanar ones at the same depth are skipped.
    rnd = nodes.new("FunctionNodeRandomValue")
    rnd.data_type = "FLOAT"
    rnd.location = (-800, -550)
    _socket(rnd.inputs, "Min_001").default_value = -JITTER
    _socket(rnd.inputs, "Max_001").default_value = JITTER
    amount = nodes.new("ShaderNodeMath")
    amount.operation, amount.location = "MULTIPLY", (-600, -550)
    links.new(_socket(rnd.outputs, "Value_001"), amount.inputs[0])
    links.new(mx.outputs[0], amount.inputs[1])
    normal = nodes.new("FunctionNodeRotateVector")
    normal.location = (-600, -700)
    normal.inputs["Vector"].default_value = (0.0, 0.0, 1.0)
    links.new(named("gs_rot", "QUATERNION", (-800, -700)).outputs["Attribute"], normal.inputs["Rotation"])
    offset = nodes.new("ShaderNodeVectorMath")
    offset.operation, offset.location = "SCALE", (-450, -600)
    links.new(normal.outputs["Vector"], offset.inputs[0])
    links.new(amount.outputs[0], _socket(offset.inputs, "Scale"))
    nudge = nodes.new("GeometryNodeSetPosition")
    nudge.location = (-150, 0)
    links.new(to_points.outputs["Points"], nudge.inputs["Geometry"])
    links.new(offset.outputs["Vector"], nudge.inputs["Offset"])

    circle = nodes.new("GeometryNodeMeshCircle")
    circle.fill_type = "TRIANGLE_FAN"
    circle.inputs["Vertices"].default_value = 8
    circle.location = (-300, 250)
    links.new(gin.outputs[INPUT_DISC_SIZE], circle.inputs["Radius"])

    inst = nodes.new("GeometryNodeInstanceOnPoints")
    inst.location = (0, 150)
    links.new(nudge.outputs["Geometry"], inst.inputs["Points"])
    links.new(circle.outputs["Mesh"], inst.inputs["Instance"])
    links.new(named("gs_rot", "QUATERNION", (-300, -150)).outputs["Attribute"], inst.inputs["Rotation"])
    links.new(named("gs_scale", "FLOAT_VECTOR", (-300, -250)).outputs["Attribute"], inst.inputs["Scale"])

    set_disc = nodes.new("GeometryNodeSetMaterial")
    set_disc.location = (250, 150)
    set_disc.inputs["Material"].default_value = disc_material()
    links.new(inst.outputs["Instances"], set_disc.inputs["Geometry"])
    set_point = nodes.new("GeometryNodeSetMaterial")
    set_point.location = (250, -100)
    set_point.inputs["Material"].default_value = point_material()
    links.new(nudge.outputs["Geometry"], set_point.inputs["Geometry"])

    is_vp = nodes.new("GeometryNodeIsViewport")
    is_vp.location = (0, -350)
    b_and = nodes.new("FunctionNodeBooleanMath")
    b_and.operation, b_and.location = "AND", (200, -350)
    links.new(is_vp.outputs[0], b_and.inputs[0])
    links.new(gin.outputs[INPUT_VIEWPORT_POINTS], b_and.inputs[1])
    b_or = nodes.new("FunctionNodeBooleanMath")
    b_or.operation, b_or.location = "OR", (400, -350)
    links.new(b_and.outputs[0], b_or.inputs[0])
    links.new(gin.outputs[INPUT_ALWAYS_POINTS], b_or.inputs[1])

    switch = nodes.new("GeometryNodeSwitch")
    switch.input_type = "GEOMETRY"
    switch.location = (650, 0)
    links.new(b_or.outputs[0], switch.inputs["Switch"])
    links.new(set_disc.outputs["Geometry"], switch.inputs["False"])
    links.new(set_point.outputs["Geometry"], switch.inputs["True"])
    links.new(switch.outputs[0], gout.inputs["Geometry"])
    return ng


JITTER = 0.02  # surfel offset along its normal, in units of its larger tangent scale


def _socket(sockets, identifier: str):
    return next(sk for sk in sockets if sk.identifier == identifier)


def _input_id(ng, name: str) -> str:
    for item in ng.interface.items_tree:
        if getattr(item, "in_out", None) == "INPUT" and item.name == name:
            return item.identifier
    raise KeyError(name)


def set_modifier_input(mod, name: str, value) -> None:
    mod[_input_id(mod.node_group, name)] = value


def get_modifier_input(mod, name: str):
    return mod[_input_id(mod.node_group, name)]


MODIFIER_NAME = "InstaScene Splats"


def add_splat_modifier(obj, viewport_points: bool = False, always_points: bool = False):
    """Attach (or refresh) the splat drawing modifier on a splat mesh object."""
    mod = obj.modifiers.get(MODIFIER_NAME)
    if mod is None or mod.type != "NODES":
        mod = obj.modifiers.new(MODIFIER_NAME, "NODES")
    mod.node_group = splat_node_group()
    set_modifier_input(mod, INPUT_VIEWPORT_POINTS, bool(viewport_points))
    set_modifier_input(mod, INPUT_ALWAYS_POINTS, bool(always_points))
    return mod
