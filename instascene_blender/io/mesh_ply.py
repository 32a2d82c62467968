"""Vertex-coloured triangle meshes in PLY (the `mesh.ply` a completion writes).

Reads binary (either byte order) and ASCII files: vertex `x y z` plus optional
`red green blue [alpha]` (uchar 0..255 or float 0..1), other vertex properties
ignored; a `face` element with a `vertex_indices` (or `vertex_index`) list.
Polygons with more than three corners are fan-triangulated. Faces that all have
three corners and no other properties (what Open3D, trimesh and our backend write)
are read with one `np.fromfile`; anything else goes through a slower generic path.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np

from .ply import PlyError, read_header

_FORMATS = {"binary_little_endian": "<", "binary_big_endian": ">", "ascii": "<"}


@dataclass
class MeshData:
    vertices: np.ndarray  # [V, 3] float32
    faces: np.ndarray  # [F, 3] int32
    colors: np.ndarray | None = None  # [V, 4] float32 RGBA in 0..1, or None

    def __len__(self) -> int:
        return int(self.vertices.shape[0])


def _fan(polys: list) -> np.ndarray:
    tris = [(p[0], p[i], p[i + 1]) for p in polys for i in range(1, len(p) - 1)]
    return np.asarray(tris, dtype=np.int64).reshape(-1, 3)


def _scalar_dtype(props, order) -> np.dtype:
    return np.dtype([(name, order + t) for name, t, _ in props])


def _read_binary_element(f, order, count, props, path):
    """Records of one element: a structured array, or (for list elements) a list of dicts-of-lists."""
    if all(t is not None for _, t, _ in props):
        dt = _scalar_dtype(props, order)
        want = dt.itemsize * count
        if os.fstat(f.fileno()).st_size - f.tell() < want:
            raise PlyError(f"truncated mesh PLY ({want} bytes expected for {count} records)", path)
        return np.fromfile(f, dtype=dt, count=count)
    # fast path: a single list property whose counts are all 3
    if len(props) == 1 and count > 0:
        (name, _, (ct, it)) = props[0]
        dt = np.dtype([("n", order + ct), ("i", order + it, (3,))])
        start = f.tell()
        if os.fstat(f.fileno()).st_size - start >= dt.itemsize * count:
            rec = np.fromfile(f, dtype=dt, count=count)
            if (rec["n"] == 3).all():
                return {name: rec["i"].astype(np.int64)}
        f.seek(start)
    # generic: read record by record
    out = {name: [] for name, _, _ in props}
    for _ in range(count):
        for name, t, lt in props:
            if t is not None:
                st = struct.Struct(order + t.replace("f4", "f").replace("f8", "d").replace("i1", "b")
                                   .replace("u1", "B").replace("i2", "h").replace("u2", "H")
                                   .replace("i4", "i").replace("u4", "I"))
                raw = f.read(st.size)
                if len(raw) < st.size:
                    raise PlyError("truncated mesh PLY (inside a list element)", path)
                out[name].append(st.unpack(raw)[0])
            else:
                cdt, idt = np.dtype(order + lt[0]), np.dtype(order + lt[1])
                raw = f.read(cdt.itemsize)
                if len(raw) < cdt.itemsize:
                    raise PlyError("truncated mesh PLY (inside a list element)", path)
                n = int(np.frombuffer(raw, cdt)[0])
                raw = f.read(idt.itemsize * n)
                if len(raw) < idt.itemsize * n:
                    raise PlyError("truncated mesh PLY (inside a list element)", path)
                out[name].append(np.frombuffer(raw, idt).astype(np.int64).tolist())
    return out


def _read_ascii(f, elements, path) -> dict:
    tokens = f.read().split()
    pos, out = 0, {}
    for name, count, props in elements:
        if all(t is not None for _, t, _ in props):
            k = len(props)
            block = np.asarray(tokens[pos:pos + k * count], dtype=np.float64)
            if block.size != k * count:
                raise PlyError(f"truncated ASCII mesh PLY in element {name!r}", path)
            pos += k * count
            table = block.reshape(count, k)
            out[name] = {p[0]: table[:, i] for i, p in enumerate(props)}
            continue
        rec = {p[0]: [] for p in props}
        try:
            for _ in range(count):
                for pname, t, _lt in props:
                    if t is not None:
                        rec[pname].append(float(tokens[pos]))
                        pos += 1
                    else:
                        n = int(tokens[pos])
                        rec[pname].append([int(v) for v in tokens[pos + 1:pos + 1 + n]])
                        if len(rec[pname][-1]) != n:
                            raise IndexError
                        pos += 1 + n
        except (IndexError, ValueError):
            raise PlyError(f"truncated or malformed ASCII mesh PLY in element {name!r}", path) from None
        out[name] = rec
    return out


def _colors(get, names, types) -> np.ndarray | None:
    if not all(c in names for c in ("red", "green", "blue")):
        return None
    chans = ["red", "green", "blue"] + (["alpha"] if "alpha" in names else [])
    cols = np.stack([np.asarray(get(c), dtype=np.float32) for c in chans], axis=1)
    if types.get("red", "u1")[0] in "iu":
        cols /= 255.0
    if cols.shape[1] == 3:
        cols = np.concatenate([cols, np.ones((len(cols), 1), np.float32)], axis=1)
    return np.ascontiguousarray(cols, dtype=np.float32)


def read_mesh_ply(path) -> MeshData:
    """Triangle mesh with optional vertex colours; PlyError for anything else."""
    try:
        with open(path, "rb") as f:
            fmt, elements = read_header(f, path)
            names = [e[0] for e in elements]
            if "vertex" not in names:
                raise PlyError("mesh PLY has no 'vertex' element", path)
            if "face" not in names:
                raise PlyError("not a mesh PLY: no 'face' element (a splat or point cloud file?)", path)
            if fmt == "ascii":
                data = _read_ascii(f, elements, path)
            else:
                data, order = {}, _FORMATS[fmt]
                for name, count, props in elements:
                    data[name] = _read_binary_element(f, order, count, props, path)
                    if "vertex" in data and "face" in data:
                        break  # trailing elements (edges, materials) are not needed
    except OSError as e:
        raise PlyError(f"cannot read PLY file: {e.strerror or e}", path) from None

    vprops = next(e[2] for e in elements if e[0] == "vertex")
    vnames = [p[0] for p in vprops]
    vtypes = {p[0]: p[1] for p in vprops}
    if not all(c in vnames for c in "xyz"):
        raise PlyError("mesh PLY vertices lack x, y or z", path)
    vert = data["vertex"]

    def get(c):
        return vert[c]

    vertices = np.ascontiguousarray(np.stack([np.asarray(get(c), np.float32) for c in "xyz"], axis=1))
    colors = _colors(get, vnames, vtypes)

    face = data["face"]
    fprops = next(e[2] for e in elements if e[0] == "face")
    list_name = next((p[0] for p in fprops if p[0] in ("vertex_indices", "vertex_index") and p[1] is None), None)
    if list_name is None:
        raise PlyError("mesh PLY faces have no 'vertex_indices' list", path)
    idx = face[list_name]
    if isinstance(idx, np.ndarray):
        faces = idx.reshape(-1, 3)
    elif all(len(p) == 3 for p in idx):
        faces = np.asarray(idx, dtype=np.int64).reshape(-1, 3)
    else:
        faces = _fan(idx)
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise PlyError(f"face indices out of range (mesh has {len(vertices)} vertices)", path)
    return MeshData(vertices, np.ascontiguousarray(faces, dtype=np.int32), colors)


def write_mesh_ply(path, mesh: MeshData, ascii: bool = False) -> None:
    """Binary or ASCII PLY with uchar colours (used by tests and exports)."""
    from .atomic import atomic_write

    v, fcs = np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int32)
    header = ["ply", f"format {'ascii' if ascii else 'binary_little_endian'} 1.0", f"element vertex {len(v)}",
              "property float x", "property float y", "property float z"]
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if mesh.colors is not None:
        header += ["property uchar red", "property uchar green", "property uchar blue"]
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    header += [f"element face {len(fcs)}", "property list uchar int vertex_indices", "end_header"]
    vrec = np.empty(len(v), np.dtype(fields))
    for i, c in enumerate("xyz"):
        vrec[c] = v[:, i]
    if mesh.colors is not None:
        c8 = np.clip(np.round(np.asarray(mesh.colors)[:, :3] * 255), 0, 255).astype(np.uint8)
        for i, c in enumerate(("red", "green", "blue")):
            vrec[c] = c8[:, i]
    frec = np.empty(len(fcs), np.dtype([("n", "u1"), ("i", "<i4", (3,))]))
    frec["n"], frec["i"] = 3, fcs
    with atomic_write(path) as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        if ascii:
            for row in vrec:
                f.write((" ".join(repr(float(x)) if isinstance(x, np.floating) else str(int(x))
                                  for x in row) + "\n").encode())
            for tri in fcs:
                f.write(f"3 {tri[0]} {tri[1]} {tri[2]}\n".encode())
        else:
            f.write(vrec.tobytes())
            f.write(frec.tobytes())
