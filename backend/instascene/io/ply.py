"""Gaussian splat PLY files (formats.md §1): read any uncompressed 2DGS/3DGS layout, write the reference one.

The reader builds a numpy structured dtype from the header, so property order and
count come from the file, never from assumptions; binary data is parsed with one
`np.frombuffer`, ASCII with one `np.loadtxt`. Every problem a user can cause
(wrong kind of file, truncation, missing properties, NaN) becomes an
`InstaSceneError` naming the file.

Choices: elements after `vertex` (and bytes after its data) are ignored, because
they cannot change the splats; an element before `vertex` is rejected, because a
Gaussian PLY has none. `nx ny nz` are read as placeholders and dropped.
"""

from __future__ import annotations

import io
import os
import re

import numpy as np

from ..errors import InstaSceneError
from .atomic import atomic_write
from .splats import REST_COUNT_TO_DEGREE, Splats

# PLY scalar type names (both spellings) -> numpy type, without byte order
_PLY_TYPES = {
    "char": "i1", "int8": "i1",
    "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4",
    "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4",
    "double": "f8", "float64": "f8",
}  # fmt: skip
# numpy type -> the name plyfile writes
_NP_TO_PLY = {
    "i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort",
    "i4": "int", "u4": "uint", "f4": "float", "f8": "double",
}  # fmt: skip
_FORMATS = {"binary_little_endian": "<", "binary_big_endian": ">", "ascii": "<"}
_MAX_HEADER_BYTES = 1 << 20  # a real header is a few KiB; stop scanning binary junk early

_REQUIRED = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1",
             "rot_0", "rot_1", "rot_2", "rot_3"]  # fmt: skip
_NORMALS = ("nx", "ny", "nz")
_REST_RE = re.compile(r"f_rest_(\d+)$")
_RESERVED_RE = re.compile(r"f_rest_\d+$|scale_2$|packed_")  # extras that would change how the file reads back
_EXPECTED = (
    "expected an uncompressed 3DGS/2DGS Gaussian PLY with vertex properties "
    "x y z, f_dc_0..2, opacity, scale_0..1 (2DGS) or scale_0..2 (3DGS), rot_0..3"
)


def looks_like_ply(path: str | os.PathLike) -> bool:
    """Cheap magic check (first line is `ply`), so a loader can pick a reader without parsing."""
    try:
        with open(path, "rb") as f:
            head = f.read(5)
    except OSError:
        return False
    return head[:4] == b"ply\n" or head == b"ply\r\n"


# ---------------------------------------------------------------------- reading
def _parse_header(f, path) -> tuple[str, list[tuple[str, int, list]]]:
    """Read header lines from `f` up to `end_header`; return (format, [(element, count, props)]).

    props are (name, numpy type) for scalars and (name, None) for list properties.
    """
    magic = f.readline(16)
    if magic.rstrip(b"\r\n") != b"ply":
        raise InstaSceneError(f"not a PLY file (it does not start with 'ply'; starts with {magic[:8]!r})", path)
    fmt, elements, used = None, [], len(magic)
    while True:
        raw = f.readline(_MAX_HEADER_BYTES)
        used += len(raw)
        if not raw or used > _MAX_HEADER_BYTES:
            raise InstaSceneError("PLY header never ends (no 'end_header' line)", path)
        try:
            words = raw.decode("ascii").split()
        except UnicodeDecodeError:
            msg = "PLY header is corrupt or never ends (non-text bytes before any 'end_header' line)"
            raise InstaSceneError(msg, path) from None
        if not words or words[0] in ("comment", "obj_info"):
            continue
        key = words[0]
        if key == "end_header":
            break
        if key == "format" and len(words) == 3:
            if words[1] not in _FORMATS:
                raise InstaSceneError(f"unsupported PLY format {words[1]!r} (expected binary_little_endian, "
                                      "binary_big_endian or ascii)", path)
            fmt = words[1]
        elif key == "element" and len(words) == 3 and words[2].isdigit():
            elements.append((words[1], int(words[2]), []))
        elif key == "property" and elements and len(words) >= 3:
            props = elements[-1][2]
            if words[1] == "list" and len(words) == 5:
                props.append((words[4], None))
            elif words[1] in _PLY_TYPES and len(words) == 3:
                props.append((words[2], _PLY_TYPES[words[1]]))
            else:
                raise InstaSceneError(f"bad PLY header line {raw.decode().strip()!r} (unknown property type)", path)
        else:
            raise InstaSceneError(f"bad PLY header line {raw.decode().strip()!r}", path)
    if fmt is None:
        raise InstaSceneError("PLY header has no 'format' line", path)
    return fmt, elements


def _check_gaussian_layout(elements, path) -> tuple[int, list]:
    """Reject compressed, mesh, point-cloud and malformed layouts; return the vertex (count, props)."""
    names = [e[0] for e in elements]
    vprops = next((e[2] for e in elements if e[0] == "vertex"), [])
    if "chunk" in names or any(p[0].startswith("packed_") for p in vprops):
        raise InstaSceneError(
            "this looks like a compressed PlayCanvas/SuperSplat PLY ('chunk' element, packed_* properties); "
            f"decompress it first (re-export it as a plain, uncompressed PLY); {_EXPECTED}", path)
    if "vertex" not in names:
        found = ", ".join(names) or "none"
        raise InstaSceneError(f"PLY has no 'vertex' element (elements: {found}); {_EXPECTED}", path)
    if names[0] != "vertex":
        raise InstaSceneError(f"unexpected PLY element {names[0]!r} before 'vertex'; {_EXPECTED}", path)
    count, props = elements[0][1], elements[0][2]
    lists = [n for n, t in props if t is None]
    if lists:
        raise InstaSceneError(f"list property {lists[0]!r} in the vertex element is not supported; {_EXPECTED}", path)
    pnames = [n for n, _ in props]
    dup = sorted({n for n in pnames if pnames.count(n) > 1})
    if dup:
        raise InstaSceneError(f"duplicate vertex property {dup[0]!r}", path)
    if not any(n in pnames for n in ("opacity", "scale_0", "rot_0", "f_dc_0")):
        what = "a mesh (vertex + face elements)" if "face" in names else "a plain point cloud"
        raise InstaSceneError(
            f"not a Gaussian splat PLY: it looks like {what} with vertex properties "
            f"{' '.join(pnames[:8])}{' ...' if len(pnames) > 8 else ''}; {_EXPECTED}", path)
    missing = [n for n in _REQUIRED if n not in pnames]
    if missing:
        s = "y" if len(missing) == 1 else "ies"
        raise InstaSceneError(
            f"missing propert{s} {', '.join(repr(m) for m in missing)} in the vertex element; {_EXPECTED}", path)
    return count, props


def _rest_names(pnames, path) -> list[str]:
    """f_rest_0..M-1 in index order; M must be 0, 9, 24 or 45 (SH degree 0..3)."""
    idx = sorted(int(m.group(1)) for m in map(_REST_RE.match, pnames) if m)
    if len(idx) not in REST_COUNT_TO_DEGREE:
        raise InstaSceneError(
            f"unsupported SH layout: {len(idx)} f_rest_* properties (expected 0, 9, 24 or 45 for SH degree 0-3)", path)
    if idx != list(range(len(idx))):
        raise InstaSceneError(f"f_rest_* properties are not numbered f_rest_0..f_rest_{len(idx) - 1}", path)
    return [f"f_rest_{i}" for i in idx]


def _read_records(f, fmt, count, dtype, path) -> np.ndarray:
    """The vertex records as a structured array (file byte order for binary)."""
    if fmt != "ascii":
        want, found = count * dtype.itemsize, os.fstat(f.fileno()).st_size - f.tell()
        if found < want:  # checked before reading, so a bogus huge count allocates nothing
            raise InstaSceneError(
                f"truncated PLY: {count} vertices x {dtype.itemsize} bytes = {want} bytes of data expected, "
                f"found {found}", path)
        return np.frombuffer(f.read(want), dtype=dtype, count=count)
    try:
        text = f.read().decode("ascii")
    except UnicodeDecodeError:
        raise InstaSceneError("ASCII PLY data contains non-text bytes", path) from None
    nprop = len(dtype.names)
    if count == 0:
        return np.zeros(0, dtype=dtype)
    try:
        # float64 holds every PLY scalar type exactly; '%.9g' float32 text rounds back bit-exactly
        table = np.loadtxt(io.StringIO(text), dtype=np.float64, ndmin=2, max_rows=count, comments=None)
    except ValueError as e:
        raise InstaSceneError(f"ASCII PLY vertex data is not numeric or rows have the wrong number of values ({e})",
                              path) from None
    if table.shape[0] < count:
        raise InstaSceneError(f"truncated ASCII PLY: header says {count} vertices, found {table.shape[0]} rows", path)
    if table.shape[1] != nprop:
        raise InstaSceneError(f"ASCII PLY vertex rows have {table.shape[1]} values, header declares {nprop} properties",
                              path)
    out = np.empty(count, dtype=dtype)
    for i, name in enumerate(dtype.names):
        out[name] = table[:, i]
    return out


def _block(rec: np.ndarray, names: list[str]) -> np.ndarray:
    """[N, len(names)] of the named fields: a strided view (no copy) when they are adjacent
    fields of one float type, as the reference layout has them; else a stacked copy."""
    if not names:
        return np.zeros((len(rec), 0), np.float32)
    dt, first = rec.dtype, rec.dtype[names[0]]
    start, size = dt.fields[names[0]][1], first.itemsize * len(names)
    adjacent = [dt.fields[n][1] for n in names] == list(range(start, start + size, first.itemsize))
    if first.kind == "f" and adjacent and all(dt[n] == first for n in names):
        return rec.view(np.uint8).reshape(len(rec), dt.itemsize)[:, start : start + size].view(first)
    return np.stack([rec[n] for n in names], axis=1)


def read_ply(path: str | os.PathLike) -> Splats:
    """Load a 2DGS (scale_0..1) or 3DGS (scale_0..2) Gaussian PLY, keeping raw stored values.

    Unknown vertex properties (e.g. InstaScene's segfeat_*) go to `Splats.extra`
    in file order with their own dtype, so `write_ply` can put them back.
    """
    try:
        with open(path, "rb") as f:
            fmt, elements = _parse_header(f, path)
            count, props = _check_gaussian_layout(elements, path)
            order = _FORMATS[fmt]
            dtype = np.dtype([(n, order + t) for n, t in props])
            rec = _read_records(f, fmt, count, dtype, path)
    except OSError as e:
        raise InstaSceneError(f"cannot read PLY file: {e.strerror or e}", path) from None

    pnames = list(dtype.names)
    rest = _rest_names(pnames, path)
    scales = ["scale_0", "scale_1"] + (["scale_2"] if "scale_2" in pnames else [])
    known = {*_REQUIRED, *rest, *scales, *_NORMALS}  # everything else goes to `extra`

    def f32(names):  # [N, len(names)] native float32, C order
        return _block(rec, names).astype(np.float32)

    splats = Splats(
        means=f32(["x", "y", "z"]),
        quats=f32(["rot_0", "rot_1", "rot_2", "rot_3"]),
        log_scales=f32(scales),
        opacity_logits=f32(["opacity"])[:, 0],
        sh_dc=f32(["f_dc_0", "f_dc_1", "f_dc_2"]),
        # disk is channel-major: f_rest[c * (K-1) + (k-1)] -> sh_rest[:, k-1, c]
        sh_rest=_block(rec, rest).reshape(count, 3, len(rest) // 3).transpose(0, 2, 1).astype(np.float32, order="C"),
        extra={n: rec[n].astype(rec.dtype[n].newbyteorder("=")) for n in pnames if n not in known},
    )
    splats.check_finite(path)
    return splats


# ---------------------------------------------------------------------- writing
def _record_dtype(splats: Splats) -> np.dtype:
    """The reference property order (formats.md §1) plus extras; raises ValueError on a malformed Splats."""
    n = len(splats)
    shapes = {
        "means": (splats.means, (n, 3)),
        "quats": (splats.quats, (n, 4)),
        "opacity_logits": (splats.opacity_logits, (n,)),
        "sh_dc": (splats.sh_dc, (n, 3)),
    }
    for name, (a, want) in shapes.items():
        if np.shape(a) != want:
            raise ValueError(f"Splats.{name} has shape {np.shape(a)}, expected {want}")
    if np.ndim(splats.log_scales) != 2 or np.shape(splats.log_scales) not in ((n, 2), (n, 3)):
        raise ValueError(f"Splats.log_scales has shape {np.shape(splats.log_scales)}, expected ({n}, 2|3)")
    rest = np.shape(splats.sh_rest)
    if len(rest) != 3 or rest[0] != n or rest[2] != 3 or 3 * rest[1] not in REST_COUNT_TO_DEGREE:
        raise ValueError(f"Splats.sh_rest has shape {rest}, expected ({n}, 0|3|8|15, 3)")
    names = ["x", "y", "z", *_NORMALS, "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * rest[1])] + ["opacity"]
    names += [f"scale_{i}" for i in range(splats.log_scales.shape[1])] + [f"rot_{i}" for i in range(4)]
    fields = [(nm, "<f4") for nm in names]
    for nm, a in splats.extra.items():
        a = np.asarray(a)
        if nm in names or _RESERVED_RE.match(nm) or not nm.isascii() or nm.split() != [nm]:
            raise ValueError(f"extra property name {nm!r} is not one ASCII word or would read back as a known one")
        if a.shape != (n,) or a.dtype.str[1:] not in _NP_TO_PLY:
            raise ValueError(f"extra property {nm!r} has shape {a.shape} and dtype {a.dtype}; "
                             f"expected ({n},) of a PLY scalar type")
        fields.append((nm, "<" + a.dtype.str[1:]))
    return np.dtype(fields)


def write_ply(path: str | os.PathLike, splats: Splats, ascii: bool = False) -> None:
    """Write splats in the reference layout, the way plyfile writes it for 2DGS/3DGS/InstaScene.

    x y z nx ny nz f_dc_0..2 f_rest_* opacity scale_0..(1|2) rot_0..3, all `float`
    (normals as zeros), then `extra` in order and dtype. Written whole or not at all.
    """
    dtype = _record_dtype(splats)
    n, n_rest, n_scales = len(splats), 3 * splats.sh_rest.shape[1], splats.log_scales.shape[1]
    rec = np.empty(n, dtype=dtype)
    table = _block(rec, [nm for nm in dtype.names if nm not in splats.extra])  # [N, M] float32 view
    r = 9 + n_rest
    table[:, 0:3] = splats.means
    table[:, 3:6] = 0.0  # nx ny nz placeholders
    table[:, 6:9] = splats.sh_dc
    table[:, 9:r] = np.asarray(splats.sh_rest).transpose(0, 2, 1).reshape(n, n_rest)  # channel-major on disk
    table[:, r] = splats.opacity_logits
    table[:, r + 1 : r + 1 + n_scales] = splats.log_scales
    table[:, r + 1 + n_scales :] = splats.quats
    for name, values in splats.extra.items():
        rec[name] = values

    header = ["ply", f"format {'ascii' if ascii else 'binary_little_endian'} 1.0", f"element vertex {n}"]
    header += [f"property {_NP_TO_PLY[dtype[nm].str[1:]]} {nm}" for nm in dtype.names]
    header = ("\n".join(header) + "\nend_header\n").encode("ascii")
    try:
        with atomic_write(path) as f:
            f.write(header)
            if ascii:
                # repr-level precision, so text reads back bit-exactly
                fmts = {"f4": "%.9g", "f8": "%.17g"}
                np.savetxt(f, rec, fmt=[fmts.get(dtype[nm].str[1:], "%d") for nm in dtype.names])
            else:
                f.write(memoryview(rec).cast("B"))
    except OSError as e:
        raise InstaSceneError(f"cannot write PLY file: {e.strerror or e}", path) from None


__all__ = ["looks_like_ply", "read_ply", "write_ply"]
