"""Gaussian splat PLY codec for the add-on (numpy + stdlib; formats.md §1).

The add-on cannot import the backend, so this is its own compact reader/writer. It
reads any uncompressed 3DGS/2DGS layout (binary little/big endian or ASCII) through
a numpy structured dtype built from the header (property order and count come from
the file), and writes the reference layout in exactly the backend's order:

    x y z nx ny nz f_dc_0..2 f_rest_0..M-1 opacity scale_0..(1|2) rot_0..3 [extras]

all `float` (normals written as zeros), extras (e.g. InstaScene's `segfeat_*`) after
`rot_3` with their own scalar type. Values are kept raw (log-scales, logit opacity,
unnormalised quaternions, SH coefficients), so read -> write is bit-exact; the
tests prove compatibility with `instascene.io.ply` in both directions.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .atomic import atomic_write

SH_C0 = 0.28209479177387814
REST_COUNT_TO_DEGREE = {0: 0, 9: 1, 24: 2, 45: 3}

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
_NP_TO_PLY = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort",
              "i4": "int", "u4": "uint", "f4": "float", "f8": "double"}  # fmt: skip
_FORMATS = {"binary_little_endian": "<", "binary_big_endian": ">", "ascii": "<"}
_REQUIRED = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1",
             "rot_0", "rot_1", "rot_2", "rot_3")  # fmt: skip
_NORMALS = ("nx", "ny", "nz")
_REST_RE = re.compile(r"f_rest_(\d+)$")
_EXPECTED = ("expected an uncompressed 3DGS/2DGS Gaussian PLY with vertex properties "
             "x y z, f_dc_0..2, opacity, scale_0..1 (2DGS) or scale_0..2 (3DGS), rot_0..3")


class PlyError(ValueError):
    """A file a user gave us is not what we can read; the message names the file."""

    def __init__(self, message: str, path=None):
        self.path = None if path is None else os.fspath(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


@dataclass
class SplatData:
    """Raw splat values as stored on disk (same meaning as the backend's `Splats`)."""

    means: np.ndarray  # [N, 3] float32
    quats: np.ndarray  # [N, 4] float32, (w, x, y, z), not normalised
    log_scales: np.ndarray  # [N, 2] (2DGS) or [N, 3] (3DGS) float32
    opacity_logits: np.ndarray  # [N] float32
    sh_dc: np.ndarray  # [N, 3] float32
    sh_rest: np.ndarray  # [N, K-1, 3] float32 (K = (degree+1)^2); may be a strided view (see reader)
    extra: dict = field(default_factory=dict)  # name -> [N] array of a PLY scalar type, file order

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def kind(self) -> str:
        return "2dgs" if self.log_scales.shape[1] == 2 else "3dgs"

    @property
    def sh_degree(self) -> int:
        return int(round(np.sqrt(self.sh_rest.shape[1] + 1))) - 1

    def base_colors(self) -> np.ndarray:
        return np.clip(0.5 + SH_C0 * self.sh_dc, 0.0, 1.0)

    def opacities(self) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.opacity_logits))

    def unit_quats(self) -> np.ndarray:
        n = np.linalg.norm(self.quats, axis=1, keepdims=True)
        return self.quats / np.maximum(n, 1e-12)


# --------------------------------------------------------------------- header
def read_header(f, path) -> tuple[str, list]:
    """(format, [(element name, count, [(prop, numpy type | None for lists, list types)])])."""
    magic = f.readline(16)
    if magic.rstrip(b"\r\n") != b"ply":
        raise PlyError(f"not a PLY file (starts with {magic[:8]!r})", path)
    fmt, elements, used = None, [], 0
    while True:
        raw = f.readline(65536)
        used += len(raw)
        if not raw or used > (1 << 20):
            raise PlyError("PLY header never ends (no 'end_header' line)", path)
        try:
            words = raw.decode("ascii").split()
        except UnicodeDecodeError:
            raise PlyError("PLY header is corrupt (non-text bytes before 'end_header')", path) from None
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            break
        if words[0] == "format" and len(words) == 3:
            if words[1] not in _FORMATS:
                raise PlyError(f"unsupported PLY format {words[1]!r}", path)
            fmt = words[1]
        elif words[0] == "element" and len(words) == 3 and words[2].isdigit():
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property" and elements and len(words) >= 3:
            if words[1] == "list" and len(words) == 5 and words[2] in _PLY_TYPES and words[3] in _PLY_TYPES:
                elements[-1][2].append((words[4], None, (_PLY_TYPES[words[2]], _PLY_TYPES[words[3]])))
            elif words[1] in _PLY_TYPES and len(words) == 3:
                elements[-1][2].append((words[2], _PLY_TYPES[words[1]], None))
            else:
                raise PlyError(f"bad PLY header line {raw.decode().strip()!r}", path)
        else:
            raise PlyError(f"bad PLY header line {raw.decode().strip()!r}", path)
    if fmt is None:
        raise PlyError("PLY header has no 'format' line", path)
    return fmt, elements


def _read_records(path, f, fmt: str, count: int, dtype: np.dtype) -> np.ndarray:
    """`count` records of `dtype`: binary files are memory-mapped (no copy: only the pages
    touched are read, without zero-filling a 250 MB buffer first); ASCII via loadtxt."""
    if fmt != "ascii":
        want, start = count * dtype.itemsize, f.tell()
        left = os.fstat(f.fileno()).st_size - start
        if left < want:
            raise PlyError(f"truncated PLY: {want} bytes of vertex data expected, found {left}", path)
        if count == 0:
            return np.zeros(0, dtype=dtype)
        return np.memmap(f, dtype=dtype, mode="r", offset=start, shape=(count,))
    out = np.zeros(count, dtype=dtype)
    if count == 0:
        return out
    try:
        table = np.loadtxt(f, dtype=np.float64, ndmin=2, max_rows=count, comments=None)
    except ValueError as e:
        raise PlyError(f"ASCII PLY data is not numeric or rows have the wrong length ({e})", path) from None
    if table.shape != (count, len(dtype.names)):
        raise PlyError(f"ASCII PLY: expected {count} rows of {len(dtype.names)} values, got {table.shape}", path)
    for i, name in enumerate(dtype.names):
        out[name] = table[:, i]
    return out


MEANS = ("x", "y", "z")
QUATS = ("rot_0", "rot_1", "rot_2", "rot_3")
DC = ("f_dc_0", "f_dc_1", "f_dc_2")


class SplatTable:
    """An opened Gaussian PLY whose columns are copied out on demand.

    Binary files are memory-mapped, so a caller that streams columns straight into
    their destination (the Blender importer) never holds a second copy of the file;
    `gather` copies block by block so each slice of records is read from the cache
    (column after column over the whole file would stream all of it once per column).
    `read_splat_ply` = open + `to_data()`.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                fmt, elements = read_header(f, self.path)
                props, count = self._check(elements)
                dtype = np.dtype([(p[0], _FORMATS[fmt] + p[1]) for p in props])
                self.rec = _read_records(self.path, f, fmt, count, dtype)
        except OSError as e:
            raise PlyError(f"cannot read PLY file: {e.strerror or e}", self.path) from None
        self.count = count
        pnames = list(dtype.names)
        idx = sorted(int(m.group(1)) for m in map(_REST_RE.match, pnames) if m)
        if len(idx) not in REST_COUNT_TO_DEGREE or idx != list(range(len(idx))):
            raise PlyError(f"unsupported SH layout: {len(idx)} f_rest_* properties (expected 0, 9, 24 or 45, "
                           "numbered from 0)", self.path)
        self.k1 = len(idx) // 3  # SH coefficients beyond band 0
        self.scales = ("scale_0", "scale_1") + (("scale_2",) if "scale_2" in pnames else ())
        known = {*_REQUIRED, *(f"f_rest_{i}" for i in idx), *self.scales, *_NORMALS}
        self.extras = [(n, dtype[n].newbyteorder("=")) for n in pnames if n not in known]
        self._col = {n: i for i, n in enumerate(pnames)}
        first = dtype[pnames[0]]
        self._uniform = first.kind == "f" and all(dtype[n] == first for n in pnames) and \
            dtype.itemsize == first.itemsize * len(pnames)

    def _check(self, elements):
        path = self.path
        names = [e[0] for e in elements]
        vprops = next((e[2] for e in elements if e[0] == "vertex"), [])
        if "chunk" in names or any(p[0].startswith("packed_") for p in vprops):
            raise PlyError("compressed PlayCanvas/SuperSplat PLY ('chunk' element, packed_* "
                           f"properties): re-export it uncompressed; {_EXPECTED}", path)
        if not names or names[0] != "vertex":
            raise PlyError(f"the first PLY element must be 'vertex' (found {names or 'none'}); {_EXPECTED}", path)
        count, props = elements[0][1], elements[0][2]
        pnames = [p[0] for p in props]
        if any(p[1] is None for p in props) or len(set(pnames)) != len(pnames):
            raise PlyError(f"vertex element has list or duplicate properties; {_EXPECTED}", path)
        if not any(n in pnames for n in ("opacity", "scale_0", "rot_0", "f_dc_0")):
            what = "a mesh" if "face" in names else "a plain point cloud"
            raise PlyError(f"not a Gaussian splat PLY (it looks like {what}); {_EXPECTED}", path)
        missing = [n for n in _REQUIRED if n not in pnames]
        if missing:
            raise PlyError(f"missing vertex properties {', '.join(missing)}; {_EXPECTED}", path)
        return props, count

    # -------------------------------------------------------------- properties
    def __len__(self) -> int:
        return self.count

    @property
    def kind(self) -> str:
        return "2dgs" if len(self.scales) == 2 else "3dgs"

    @property
    def sh_degree(self) -> int:
        return int(round(np.sqrt(self.k1 + 1))) - 1

    def rest_names(self, k: int) -> tuple:
        """The three (R, G, B) file columns of SH coefficient k+1 (channel-major on disk)."""
        return tuple(f"f_rest_{c * self.k1 + k}" for c in range(3))

    # -------------------------------------------------------------- copying out
    def gather(self, groups, block: int = 16384, threads: int | None = None) -> None:
        """groups: (dest, names): dest [N, len(names)], or [N] for one name, any dtype.

        Large tables are split into row ranges copied by one thread per CPU (numpy
        releases the GIL while copying): about 1.7x faster on 2 cores.
        """
        rec, n = self.rec, self.count
        plans = []
        for dest, names in groups:
            cols = [self._col[nm] for nm in names]
            step = cols[1] - cols[0] if len(cols) > 1 else 1
            arith = step > 0 and cols == list(range(cols[0], cols[0] + step * len(cols), step))
            plans.append((dest, names, slice(cols[0], cols[-1] + 1, step) if arith else None))
        flat = rec.view(rec.dtype[0]).reshape(n, len(rec.dtype.names)) if self._uniform and n else None

        def copy_rows(lo: int, hi: int) -> None:
            for r0 in range(lo, hi, block):
                r1 = min(r0 + block, hi)
                b = rec[r0:r1]
                fb = flat[r0:r1] if flat is not None else None
                for dest, names, sl in plans:
                    d = dest[r0:r1]
                    if d.ndim == 1:
                        d[...] = b[names[0]]
                    elif fb is not None and sl is not None:
                        d[...] = fb[:, sl]
                    else:
                        for j, nm in enumerate(names):
                            d[:, j] = b[nm]

        workers = threads or min(os.cpu_count() or 1, 8)
        if workers <= 1 or n < 200_000:
            copy_rows(0, n)
            return
        bounds = [n * i // workers for i in range(workers + 1)]
        with ThreadPoolExecutor(workers) as pool:
            for f in [pool.submit(copy_rows, bounds[i], bounds[i + 1]) for i in range(workers)]:
                f.result()

    def column(self, names, dtype=np.float32) -> np.ndarray:
        out = np.empty((self.count, len(names)) if len(names) > 1 else (self.count,), dtype)
        self.gather([(out, list(names))])
        return out

    def to_data(self) -> SplatData:
        n, f32 = self.count, (lambda *shape: np.empty(shape, np.float32))
        means, quats, log_scales, opacity, dc = f32(n, 3), f32(n, 4), f32(n, len(self.scales)), f32(n), f32(n, 3)
        # coefficient-major buffer: each SH coefficient is one contiguous [N, 3] block
        rest_buf = f32(self.k1, n, 3)
        extra = {nm: np.empty(n, dt) for nm, dt in self.extras}
        groups = [(means, MEANS), (quats, QUATS), (log_scales, self.scales), (opacity, ("opacity",)), (dc, DC)]
        groups += [(rest_buf[k], self.rest_names(k)) for k in range(self.k1)]
        groups += [(a, (nm,)) for nm, a in extra.items()]
        self.gather(groups)
        data = SplatData(means=means, quats=quats, log_scales=log_scales, opacity_logits=opacity, sh_dc=dc,
                         sh_rest=rest_buf.transpose(1, 0, 2), extra=extra)
        check_finite(data.means, "means", self.path)
        for name in ("quats", "log_scales", "opacity_logits", "sh_dc"):
            check_finite(getattr(data, name), name, self.path)
        return data

    def close(self) -> None:
        self.rec = None  # drops the mapping

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def check_finite(a: np.ndarray, name: str, path) -> None:
    if not np.isfinite(a).all():
        bad = ~np.isfinite(a.reshape(len(a), -1)).all(axis=1)
        raise PlyError(f"{int(bad.sum())} Gaussian(s) have NaN or infinite {name} "
                       f"(first at vertex {int(np.argmax(bad))})", path)


def read_splat_ply(path) -> SplatData:
    """Read a 2DGS/3DGS Gaussian PLY; raise PlyError with a clear message otherwise."""
    with SplatTable(path) as table:
        return table.to_data()


# --------------------------------------------------------------------- writing
def _check(data: SplatData) -> None:
    n = len(data)
    want = {"means": (n, 3), "quats": (n, 4), "opacity_logits": (n,), "sh_dc": (n, 3)}
    for name, shape in want.items():
        if np.shape(getattr(data, name)) != shape:
            raise ValueError(f"SplatData.{name} has shape {np.shape(getattr(data, name))}, expected {shape}")
    if np.shape(data.log_scales) not in ((n, 2), (n, 3)):
        raise ValueError(f"SplatData.log_scales has shape {np.shape(data.log_scales)}, expected ({n}, 2|3)")
    r = np.shape(data.sh_rest)
    if len(r) != 3 or r[0] != n or r[2] != 3 or 3 * r[1] not in REST_COUNT_TO_DEGREE:
        raise ValueError(f"SplatData.sh_rest has shape {r}, expected ({n}, 0|3|8|15, 3)")


def splat_dtype(data: SplatData) -> np.dtype:
    """The reference record layout (formats.md §1) followed by the extras."""
    _check(data)
    n_rest, n_scales = 3 * data.sh_rest.shape[1], data.log_scales.shape[1]
    names = ["x", "y", "z", *_NORMALS, "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(n_rest)] + ["opacity"]
    names += [f"scale_{i}" for i in range(n_scales)] + [f"rot_{i}" for i in range(4)]
    fields = [(nm, "<f4") for nm in names]
    for nm, a in data.extra.items():
        a = np.asarray(a)
        code = a.dtype.str[1:]
        if nm in names or _REST_RE.match(nm) or not nm.isascii() or nm.split() != [nm]:
            raise ValueError(f"extra property name {nm!r} clashes with the layout or is not one ASCII word")
        if a.shape != (len(data),) or code not in _NP_TO_PLY:
            raise ValueError(f"extra property {nm!r}: shape {a.shape}, dtype {a.dtype} is not a PLY scalar column")
        fields.append((nm, "<" + code))
    return np.dtype(fields)


def write_splat_ply(path, data: SplatData) -> None:
    """Write binary little-endian PLY in the reference layout, whole or not at all."""
    dtype = splat_dtype(data)
    n, n_rest, n_sc = len(data), 3 * data.sh_rest.shape[1], data.log_scales.shape[1]
    base = [nm for nm in dtype.names if nm not in data.extra]
    table = np.empty((n, len(base)), "<f4")  # the reference columns, all little-endian float32
    r = 9 + n_rest
    table[:, 0:3] = data.means
    table[:, 3:6] = 0.0
    table[:, 6:9] = data.sh_dc
    table[:, 9:r] = np.asarray(data.sh_rest).transpose(0, 2, 1).reshape(n, n_rest)
    table[:, r] = data.opacity_logits
    table[:, r + 1:r + 1 + n_sc] = data.log_scales
    table[:, r + 1 + n_sc:] = data.quats
    if data.extra:
        rec = np.empty(n, dtype=dtype)
        rec.view(np.uint8).reshape(n, dtype.itemsize)[:, :table.itemsize * len(base)] = \
            table.view(np.uint8).reshape(n, table.itemsize * len(base))
        for nm, a in data.extra.items():
            rec[nm] = a
        blob = rec
    else:
        blob = table
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property {_NP_TO_PLY[dtype[nm].str[1:]]} {nm}" for nm in dtype.names]
    with atomic_write(path) as f:
        f.write(("\n".join(header) + "\nend_header\n").encode("ascii"))
        f.write(memoryview(np.ascontiguousarray(blob)).cast("B"))


def concatenate(parts: list[SplatData]) -> SplatData:
    """One SplatData from several: SH padded with zeros to the highest degree; 2DGS and
    3DGS mixed -> three scales, 2DGS parts getting scale_2 = ln(1e-6) as InstaScene's
    `save_ply_as_3dgs` does; extras kept when every part has them with one dtype."""
    if not parts:
        raise ValueError("nothing to concatenate")
    k1 = max(p.sh_rest.shape[1] for p in parts)
    three = any(p.log_scales.shape[1] == 3 for p in parts)

    def scales(p):
        if three and p.log_scales.shape[1] == 2:
            return np.concatenate([p.log_scales, np.full((len(p), 1), np.log(1e-6), np.float32)], axis=1)
        return p.log_scales

    def rest(p):
        if p.sh_rest.shape[1] == k1:
            return p.sh_rest
        out = np.zeros((len(p), k1, 3), np.float32)
        out[:, :p.sh_rest.shape[1]] = p.sh_rest
        return out

    common = [nm for nm, a in parts[0].extra.items()
              if all(nm in p.extra and np.asarray(p.extra[nm]).dtype == np.asarray(a).dtype for p in parts)]
    cat = lambda arrs: np.concatenate(arrs, axis=0)  # noqa: E731
    return SplatData(
        means=cat([p.means for p in parts]).astype(np.float32),
        quats=cat([p.quats for p in parts]).astype(np.float32),
        log_scales=cat([scales(p) for p in parts]).astype(np.float32),
        opacity_logits=cat([p.opacity_logits for p in parts]).astype(np.float32),
        sh_dc=cat([p.sh_dc for p in parts]).astype(np.float32),
        sh_rest=cat([rest(p) for p in parts]).astype(np.float32),
        extra={nm: cat([np.asarray(p.extra[nm]) for p in parts]) for nm in common},
    )
