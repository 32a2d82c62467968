"""Splat mesh objects: SplatData -> a loose-vertex mesh with point attributes, and back.

Built with float32 `foreach_set` on whole attributes (blender.md §7): no per-splat
Python loop. Attributes (all on the POINT domain):

  display (drawn by the node group)      raw (what export writes back, bit-exact)
  ------------------------------------   -------------------------------------------
  position     means − origin            gs_rot_raw        QUATERNION  rot_0..3 as stored
  gs_rot       QUATERNION unit w,x,y,z    gs_log_scale      FLOAT_VECTOR scale_0..1(2)
  gs_scale     FLOAT_VECTOR exp(scales)   gs_opacity_logit  FLOAT opacity
  gs_color     FLOAT_COLOR SH-DC colour*  gs_f_dc           FLOAT_VECTOR f_dc_0..2
  gs_opacity   FLOAT sigmoid(opacity)     gs_sh_<k>         FLOAT_VECTOR SH coefficient k (R,G,B), k=1..K-1
                                          gs_x_<name>       FLOAT/INT, other vertex properties

* the base colour clamp(0.5 + C0·f_dc) is a display (sRGB) value; it is stored converted
to scene-linear, so with the Standard view transform (which the importer sets) the
render shows the captured colours.

For 2DGS the third display scale is tiny (1e-6) and gs_log_scale's third component is
ln(1e-6) (not exported: the object remembers its kind). 3DGS ellipsoids are shown as
discs spanned by their two largest axes (display only). Extra properties keep their
PLY type in the object's `instascene_extras` custom property (int types as INT,
uint32 reinterpreted bit-for-bit, double stored as float).
"""

from __future__ import annotations

import json

import bpy
import numpy as np

from ..io.ply import DC, MEANS, QUATS, SH_C0, SplatData, SplatTable, check_finite
from ..io.transform import quat_multiply
from . import nodes

TINY_SCALE = 1e-6
SPLAT_PROP = "instascene_splats"
_KEYS = {"FLOAT": "value", "INT": "value", "FLOAT_VECTOR": "vector", "FLOAT_COLOR": "color", "QUATERNION": "value"}
_WIDTH = {"FLOAT": 1, "INT": 1, "FLOAT_VECTOR": 3, "FLOAT_COLOR": 4, "QUATERNION": 4}


def _set(mesh, name: str, kind: str, values: np.ndarray) -> None:
    attr = mesh.attributes.get(name)
    if attr is not None and (attr.data_type != kind or attr.domain != "POINT"):
        mesh.attributes.remove(attr)
        attr = None
    if attr is None:
        attr = mesh.attributes.new(name, kind, "POINT")
    dtype = np.int32 if kind == "INT" else np.float32
    attr.data.foreach_set(_KEYS[kind], np.ascontiguousarray(values, dtype=dtype).ravel())


def _get(mesh, name: str, kind: str | None = None) -> np.ndarray | None:
    attr = mesh.attributes.get(name)
    if attr is None or attr.domain != "POINT" or (kind is not None and attr.data_type != kind):
        return None
    kind = attr.data_type
    if kind not in _KEYS:
        return None
    n, w = len(mesh.vertices), _WIDTH[kind]
    out = np.empty(n * w, dtype=np.int32 if kind == "INT" else np.float32)
    attr.data.foreach_get(_KEYS[kind], out)
    return out.reshape(n, w) if w > 1 else out


_LUT_SIZE = 65536
_LUT: np.ndarray | None = None


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """Display (sRGB) values in [0, 1] -> scene-linear, via a 65536-entry table (error < 2e-5;
    6x faster than the exact power on millions of values)."""
    global _LUT
    if _LUT is None:
        x = np.linspace(0.0, 1.0, _LUT_SIZE, dtype=np.float64)
        _LUT = np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)
    idx = np.clip(np.asarray(c, np.float32), 0.0, 1.0) * np.float32(_LUT_SIZE - 1)
    idx += np.float32(0.5)
    return _LUT[idx.astype(np.uint16)]


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.clip(np.asarray(c, np.float32), 0.0, None)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055).astype(np.float32)


class _Source:
    """Uniform column access to a SplatTable (streamed from the file) or a SplatData."""

    def __init__(self, src):
        self.src = src
        self.table = isinstance(src, SplatTable)
        self.count, self.kind, self.sh_degree = len(src), src.kind, src.sh_degree
        self.k1 = src.k1 if self.table else src.sh_rest.shape[1]
        self.extras = list(src.extras) if self.table else [(k, np.asarray(v).dtype) for k, v in src.extra.items()]
        self.path = src.path if self.table else None

    def array(self, key):
        """The source's own array for `key` when it can go to Blender as is (no copy), else None."""
        if self.table:
            return None
        s = self.src
        if isinstance(key, str):
            a = {"means": s.means, "quats": s.quats, "log_scales": s.log_scales, "opacity": s.opacity_logits,
                 "dc": s.sh_dc}[key]
        elif key[0] == "rest":
            a = s.sh_rest[:, key[1]]
        else:
            return None
        a = np.asarray(a)
        return a if a.dtype == np.float32 and a.flags.c_contiguous else None

    def get(self, key, out) -> None:
        s = self.src
        if self.table:
            names = {"means": MEANS, "quats": QUATS, "log_scales": s.scales, "opacity": ("opacity",),
                     "dc": DC}.get(key) if isinstance(key, str) else \
                (s.rest_names(key[1]) if key[0] == "rest" else (key[1],))
            s.gather([(out, names)])
        elif isinstance(key, str):
            out[...] = {"means": s.means, "quats": s.quats, "log_scales": s.log_scales,
                        "opacity": s.opacity_logits, "dc": s.sh_dc}[key]
        else:
            out[...] = s.sh_rest[:, key[1]] if key[0] == "rest" else s.extra[key[1]]


# the axis permutations that make the smallest 3DGS axis the disc normal (local z)
_CYCLE = {0: ((0.5, 0.5, 0.5, 0.5), (1, 2)), 1: ((0.5, -0.5, -0.5, -0.5), (2, 0))}


def fill_mesh(mesh, src, origin=None) -> None:
    """Add one loose vertex per splat of `src` (SplatTable or SplatData) to an empty mesh and
    write every attribute (positions relative to `origin`).

    Columns are streamed through three reused scratch buffers straight into Blender
    attributes, so a 1M-splat import allocates no per-attribute numpy arrays.
    """
    src = _Source(src)
    n, f32 = src.count, np.float32
    s1, s2, s3 = np.empty(4 * n, f32), np.empty(4 * n, f32), np.empty(4 * n, f32)

    def view(buf, w):
        return buf[:n * w].reshape(n, w) if w > 1 else buf[:n]

    def finite(a, what):
        check_finite(a, what, src.path)

    def fetch(key, buf, w):
        """Read-only values for `key`: the source's own array, or `buf` filled from the file."""
        a = src.array(key)
        if a is None:
            a = view(buf, w)
            src.get(key, a)
        return a

    mesh.vertices.add(n)
    m = fetch("means", s1, 3)
    finite(m, "means")
    if origin is not None:
        m = np.subtract(m, np.asarray(origin, np.float64), out=view(s2, 3), casting="unsafe")
    mesh.attributes["position"].data.foreach_set("vector", m.ravel())

    raw_q = fetch("quats", s1, 4)
    finite(raw_q, "quats")
    _set(mesh, "gs_rot_raw", "QUATERNION", raw_q)
    q = view(s2, 4)
    np.divide(raw_q, np.maximum(np.sqrt(np.einsum("ij,ij->i", raw_q, raw_q)), f32(1e-12))[:, None], out=q)

    if src.kind == "2dgs":
        ls = view(s3, 3)
        src.get("log_scales", ls[:, :2])
        ls[:, 2] = np.log(TINY_SCALE)
    else:
        ls = fetch("log_scales", s3, 3)
    finite(ls, "log_scales")
    _set(mesh, "gs_log_scale", "FLOAT_VECTOR", ls)
    sc = np.exp(ls, out=view(s1, 3))
    if src.kind == "3dgs":  # draw the disc across the two largest axes: q' = q * q(cyclic permutation)
        smallest = np.argmin(ls, axis=1)
        for axis, (qp, keep) in _CYCLE.items():
            sel = np.nonzero(smallest == axis)[0]
            if len(sel):
                q[sel] = quat_multiply(q[sel], np.array(qp, f32)).astype(f32)
                sc[sel, 0], sc[sel, 1] = sc[sel, keep[0]], sc[sel, keep[1]]
    sc[:, 2] = TINY_SCALE
    _set(mesh, "gs_rot", "QUATERNION", q)
    _set(mesh, "gs_scale", "FLOAT_VECTOR", sc)

    logit = fetch("opacity", s3, 1)
    finite(logit, "opacity")
    _set(mesh, "gs_opacity_logit", "FLOAT", logit)
    o = np.negative(logit, out=view(s1, 1))
    np.exp(o, out=o)
    o += f32(1.0)
    np.reciprocal(o, out=o)
    _set(mesh, "gs_opacity", "FLOAT", o)

    dc = fetch("dc", s3, 3)
    finite(dc, "sh_dc")
    _set(mesh, "gs_f_dc", "FLOAT_VECTOR", dc)
    rgba = view(s1, 4)
    rgba[:, :3] = srgb_to_linear(f32(0.5) + f32(SH_C0) * dc)
    rgba[:, 3] = 1.0
    _set(mesh, "gs_color", "FLOAT_COLOR", rgba)

    for k in range(src.k1):
        _set(mesh, f"gs_sh_{k + 1}", "FLOAT_VECTOR", fetch(("rest", k), s3, 3))
    for name, dtype in src.extras:
        e = np.empty(n, dtype)
        src.get(("extra", name), e)
        if dtype.kind in "iu":
            _set(mesh, f"gs_x_{name}", "INT", e.view(np.int32) if dtype.str[1:] == "u4" else e.astype(np.int32))
        else:
            _set(mesh, f"gs_x_{name}", "FLOAT", e.astype(np.float32))


def create_splat_object(name: str, data, collection, origin=None, viewport_points: bool = False,
                        always_points: bool = False, source: str = ""):
    """A new mesh object holding `data` (SplatTable or SplatData), with the splat-drawing
    modifier, linked to `collection`."""
    mesh = bpy.data.meshes.new(name)
    try:
        fill_mesh(mesh, data, origin)
    except BaseException:
        bpy.data.meshes.remove(mesh)
        raise
    mesh.update()
    obj = bpy.data.objects.new(name, mesh)
    if origin is not None:
        obj.location = tuple(float(v) for v in origin)
    obj[SPLAT_PROP] = 1
    obj["instascene_kind"] = data.kind
    obj["instascene_sh_degree"] = data.sh_degree
    extras = data.extras if isinstance(data, SplatTable) else [(k, np.asarray(v).dtype) for k, v in data.extra.items()]
    obj["instascene_extras"] = json.dumps([[k, np.dtype(dt).str[1:]] for k, dt in extras])
    if source:
        obj["instascene_source"] = source
    collection.objects.link(obj)
    nodes.add_splat_modifier(obj, viewport_points=viewport_points, always_points=always_points)
    return obj


def is_splat_object(obj) -> bool:
    return obj is not None and obj.type == "MESH" and bool(obj.get(SPLAT_PROP)) and \
        obj.data.attributes.get("position") is not None


def read_splat_object(obj) -> SplatData:
    """The object's splats in its local coordinates (apply obj.matrix_world to place them).

    Raw attributes are preferred; missing ones are rebuilt from the display attributes
    (a mesh made by other tools with gs_rot/gs_scale/gs_color/gs_opacity still exports).
    """
    mesh = obj.data
    n = len(mesh.vertices)
    means = _get(mesh, "position", "FLOAT_VECTOR")
    kind = obj.get("instascene_kind", "2dgs")
    quats = _get(mesh, "gs_rot_raw", "QUATERNION")
    if quats is None:
        quats = _get(mesh, "gs_rot", "QUATERNION")
    if quats is None:
        quats = np.tile(np.array([1, 0, 0, 0], np.float32), (n, 1))
    ls = _get(mesh, "gs_log_scale", "FLOAT_VECTOR")
    if ls is None:
        sc = _get(mesh, "gs_scale", "FLOAT_VECTOR")
        ls = np.log(np.maximum(sc, 1e-30)) if sc is not None else np.full((n, 3), np.log(0.01), np.float32)
    ls = np.ascontiguousarray(ls[:, :2] if kind == "2dgs" else ls, np.float32)
    logit = _get(mesh, "gs_opacity_logit", "FLOAT")
    if logit is None:
        op = _get(mesh, "gs_opacity", "FLOAT")
        op = np.clip(op if op is not None else np.ones(n, np.float32), 1e-6, 1 - 1e-6)
        logit = np.log(op / (1 - op)).astype(np.float32)
    dc = _get(mesh, "gs_f_dc", "FLOAT_VECTOR")
    if dc is None:
        col = _get(mesh, "gs_color", "FLOAT_COLOR")
        dc = ((linear_to_srgb(col[:, :3]) - 0.5) / SH_C0) if col is not None else np.zeros((n, 3), np.float32)
    degree = int(obj.get("instascene_sh_degree", 0))
    k1 = (degree + 1) ** 2 - 1
    rest = np.zeros((n, k1, 3), np.float32)
    for k in range(k1):
        v = _get(mesh, f"gs_sh_{k + 1}", "FLOAT_VECTOR")
        if v is not None:
            rest[:, k] = v
    extra = {}
    try:
        extras = json.loads(obj.get("instascene_extras", "[]"))
    except (TypeError, ValueError):
        extras = []
    for name, code in extras:
        v = _get(mesh, f"gs_x_{name}")
        if v is None:
            continue
        if code == "u4":
            extra[name] = v.astype(np.int32).view(np.uint32)
        else:
            extra[name] = v.astype(np.dtype(code))
    return SplatData(means=means, quats=quats, log_scales=ls, opacity_logits=logit.astype(np.float32),
                     sh_dc=np.ascontiguousarray(dc, np.float32), sh_rest=rest, extra=extra)
