"""Gaussian PLY reader/writer: reference layout, bit-exact round trips, real data, clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from instascene.errors import InstaSceneError
from instascene.io import ply
from instascene.io.ply import looks_like_ply, read_ply, write_ply
from instascene.io.splats import Splats

DONUT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "donut_3dgs.ply"
ARRAYS = ("means", "quats", "log_scales", "opacity_logits", "sh_dc", "sh_rest")


def make_splats(n=50, kind="2dgs", degree=3, segfeat=True, seed=0) -> Splats:
    rng = np.random.default_rng(seed)
    f = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    extra = {f"segfeat_{i}": f(n) for i in range(16)} if segfeat else {}
    return Splats(
        means=f(n, 3),
        quats=f(n, 4) * 3,  # raw, not unit
        log_scales=f(n, 2 if kind == "2dgs" else 3),
        opacity_logits=f(n),
        sh_dc=f(n, 3),
        sh_rest=f(n, (degree + 1) ** 2 - 1, 3),
        extra=extra,
    )


def assert_same(a: Splats, b: Splats) -> None:
    for name in ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype == np.float32 and x.shape == y.shape, name
        assert x.tobytes() == y.tobytes(), name  # bit-exact, NaN-safe
    assert list(a.extra) == list(b.extra)
    for k in a.extra:
        assert a.extra[k].dtype == b.extra[k].dtype and a.extra[k].tobytes() == b.extra[k].tobytes(), k


def header_lines(path) -> list[str]:
    data = Path(path).read_bytes()
    return data[: data.index(b"end_header\n") + len(b"end_header\n")].decode().splitlines()


def raw_ply(path, names, rows, fmt="binary_little_endian", types=None, count=None, extra_header="") -> Path:
    """A hand-made PLY: `names` float properties (or `types`), `rows` [N, P] values."""
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, len(names))
    types = types or ["float"] * len(names)
    head = ["ply", f"format {fmt} 1.0", f"element vertex {len(rows) if count is None else count}"]
    head += [f"property {t} {n}" for t, n in zip(types, names)]
    head = ("\n".join(head) + "\n" + extra_header + "end_header\n").encode()
    if fmt == "ascii":
        body = "".join(" ".join(repr(float(v)) for v in r) + "\n" for r in rows).encode()
    else:
        order = "<" if fmt == "binary_little_endian" else ">"
        npt = {"float": "f4", "double": "f8", "uchar": "u1", "int": "i4"}
        rec = np.empty(len(rows), dtype=[(n, order + npt[t]) for n, t in zip(names, types)])
        for i, n in enumerate(names):
            rec[n] = rows[:, i]
        body = rec.tobytes()
    path = Path(path)
    path.write_bytes(head + body)
    return path


MIN_3DGS = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
            "rot_0", "rot_1", "rot_2", "rot_3"]  # fmt: skip


def reference_names(kind: str, n_rest: int = 45) -> list[str]:
    scales = [f"scale_{i}" for i in range(2 if kind == "2dgs" else 3)]
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(n_rest)] + ["opacity", *scales]
            + ["rot_0", "rot_1", "rot_2", "rot_3"])  # fmt: skip


# ----------------------------------------------------------------- round trips
@pytest.mark.parametrize("ascii", [False, True])
def test_round_trip_2dgs_sh3_segfeat_bit_exact(tmp_path, ascii):
    s = make_splats()
    s.extra["label"] = np.arange(50, dtype=np.int32) - 7
    s.extra["flag"] = (np.arange(50) % 3).astype(np.uint8)
    s.extra["weight"] = np.linspace(-1, 1, 50) / 3  # float64 -> double
    s.means[0] = [-0.0, 1e-38, 3.4e38]  # edge values survive text too
    path = tmp_path / "s.ply"
    write_ply(path, s, ascii=ascii)
    assert header_lines(path)[1] == ("format ascii 1.0" if ascii else "format binary_little_endian 1.0")
    r = read_ply(path)
    assert r.kind == "2dgs" and r.sh_degree == 3 and len(r) == 50
    assert_same(s, r)
    assert list(r.extra)[:16] == [f"segfeat_{i}" for i in range(16)]


@pytest.mark.parametrize("ascii", [False, True])
def test_round_trip_3dgs(tmp_path, ascii):
    s = make_splats(kind="3dgs", degree=1, segfeat=False, seed=1)
    write_ply(tmp_path / "g.ply", s, ascii=ascii)
    r = read_ply(tmp_path / "g.ply")
    assert r.kind == "3dgs" and r.sh_degree == 1 and r.extra == {}
    assert_same(s, r)


def test_empty_splats_round_trip(tmp_path):
    s = make_splats(n=0, segfeat=False)
    for ascii in (False, True):
        write_ply(tmp_path / "e.ply", s, ascii=ascii)
        r = read_ply(tmp_path / "e.ply")
        assert len(r) == 0 and r.sh_rest.shape == (0, 15, 3)


@pytest.mark.parametrize("kind,nprops,stride", [("2dgs", 61, 244), ("3dgs", 62, 248)])
def test_written_header_is_the_reference_layout(tmp_path, kind, nprops, stride):
    s = make_splats(n=7, kind=kind, segfeat=False)
    path = tmp_path / "h.ply"
    write_ply(path, s)
    names = reference_names(kind)
    assert len(names) == nprops
    expected = ["ply", "format binary_little_endian 1.0", "element vertex 7"]
    expected += [f"property float {n}" for n in names] + ["end_header"]
    assert header_lines(path) == expected
    head = len("\n".join(expected)) + 1
    assert (path.stat().st_size - head) == 7 * stride
    rec = np.frombuffer(path.read_bytes()[head:], dtype=[(n, "<f4") for n in names])
    assert not rec["nx"].any() and not rec["ny"].any() and not rec["nz"].any()
    # channel-major f_rest on disk: f_rest[c * 15 + (k - 1)] = sh_rest[:, k - 1, c]
    assert rec["f_rest_16"].tobytes() == s.sh_rest[:, 1, 1].tobytes()
    assert rec["f_rest_44"].tobytes() == s.sh_rest[:, 14, 2].tobytes()


def test_extras_follow_rot_in_order(tmp_path):
    write_ply(tmp_path / "x.ply", make_splats(n=3))
    lines = header_lines(tmp_path / "x.ply")
    assert lines[-18:-1] == ["property float rot_3"] + [f"property float segfeat_{i}" for i in range(16)]


@pytest.mark.parametrize("degree", [0, 1, 2])
def test_lower_sh_degrees_and_channel_major_mapping(tmp_path, degree):
    k1 = (degree + 1) ** 2 - 1
    names = reference_names("2dgs", 3 * k1)
    rows = np.tile(np.arange(len(names), dtype=np.float64), (4, 1))
    rows[:, names.index("rot_0")] = 1.0
    r = read_ply(raw_ply(tmp_path / f"d{degree}.ply", names, rows))
    assert r.sh_degree == degree and r.sh_rest.shape == (4, k1, 3)
    for k in range(k1):
        for c in range(3):
            assert r.sh_rest[0, k, c] == names.index(f"f_rest_{c * k1 + k}")


def test_no_rest_no_normals_any_order_mixed_types(tmp_path):
    names = ["rot_3", "rot_2", "rot_1", "rot_0", "red", "x", "y", "z", "opacity", "f_dc_2", "f_dc_1", "f_dc_0",
             "scale_1", "scale_0", "density"]  # fmt: skip
    types = ["double"] * 4 + ["uchar"] + ["float"] * 9 + ["int"]
    rows = np.arange(2 * len(names), dtype=np.float64).reshape(2, -1) + 1
    r = read_ply(raw_ply(tmp_path / "o.ply", names, rows, types=types))
    assert r.kind == "2dgs" and r.sh_degree == 0 and r.sh_rest.shape == (2, 0, 3)
    np.testing.assert_array_equal(r.quats[1], [19, 18, 17, 16])
    np.testing.assert_array_equal(r.means[0], [6, 7, 8])
    np.testing.assert_array_equal(r.log_scales[0], [14, 13])
    assert r.quats.dtype == np.float32
    assert list(r.extra) == ["red", "density"]
    assert r.extra["red"].dtype == np.uint8 and r.extra["density"].dtype == np.int32
    assert r.extra["density"].tolist() == [15, 30]


def test_big_endian_is_read(tmp_path):
    rows = np.arange(2 * len(MIN_3DGS), dtype=np.float64).reshape(2, -1) + 0.5
    r = read_ply(raw_ply(tmp_path / "be.ply", MIN_3DGS, rows, fmt="binary_big_endian"))
    assert r.kind == "3dgs" and r.means.dtype == np.float32
    np.testing.assert_array_equal(r.means[1], [14.5, 15.5, 16.5])


def test_trailing_bytes_and_later_elements_are_ignored(tmp_path):
    rows = np.ones((3, len(MIN_3DGS)))
    path = raw_ply(tmp_path / "t.ply", MIN_3DGS, rows, extra_header="element camera 1\nproperty float fx\n")
    with open(path, "ab") as f:
        f.write(b"\x00" * 7)
    assert len(read_ply(path)) == 3


def test_donut_real_file():
    if not DONUT.exists():
        pytest.skip(f"real test file not found at {DONUT} (shared/data is outside the checkout)")
    s = read_ply(DONUT)
    assert len(s) == 45_624 and s.kind == "3dgs" and s.sh_degree == 0 and s.extra == {}
    lo, hi = s.bounds()
    np.testing.assert_allclose(lo, [-0.103, -0.098, -0.009], atol=1e-3)
    np.testing.assert_allclose(hi, [0.105, 0.110, 0.086], atol=1e-3)
    norms = np.linalg.norm(s.quats, axis=1)
    assert norms.min() < 0.7 and norms.max() > 2.6  # raw quaternions kept, not normalised
    assert looks_like_ply(DONUT)


# ----------------------------------------------------------------- bad inputs
def expect_error(path, *phrases):
    with pytest.raises(InstaSceneError) as info:
        read_ply(path)
    msg = str(info.value)
    assert Path(path).name in msg, msg
    for phrase in phrases:
        assert phrase in msg, msg
    return msg


def test_not_a_ply(tmp_path):
    p = tmp_path / "scene.splat"
    p.write_bytes(b"\x00\x01binary splat data")
    expect_error(p, "not a PLY")
    assert not looks_like_ply(p) and not looks_like_ply(tmp_path / "absent.ply")


def test_header_never_ends(tmp_path):
    p = tmp_path / "h.ply"
    p.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\n")
    expect_error(p, "header never ends")
    p.write_bytes(b"ply\nformat binary_little_endian 1.0\n" + bytes(range(128, 256)) * 4)
    expect_error(p, "never ends", "end_header")


def test_compressed_supersplat_ply(tmp_path):
    p = tmp_path / "c.ply"
    p.write_bytes(
        b"ply\nformat binary_little_endian 1.0\nelement chunk 1\nproperty float min_x\n"
        b"element vertex 256\nproperty uint packed_position\nproperty uint packed_rotation\nend_header\n"
    )
    expect_error(p, "compressed", "uncompressed")


@pytest.mark.parametrize("with_faces,phrase", [(True, "mesh"), (False, "point cloud")])
def test_mesh_or_point_cloud(tmp_path, with_faces, phrase):
    head = "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
    if with_faces:
        head += "element face 1\nproperty list uchar int vertex_indices\n"
    p = tmp_path / "m.ply"
    p.write_text(head + "end_header\n0 0 0\n1 0 0\n0 1 0\n" + ("3 0 1 2\n" if with_faces else ""))
    expect_error(p, "not a Gaussian splat PLY", phrase, "expected")


def test_missing_property(tmp_path):
    names = [n for n in MIN_3DGS if n != "opacity"]
    expect_error(raw_ply(tmp_path / "m.ply", names, np.ones((2, len(names)))), "missing property 'opacity'")
    names = [n for n in MIN_3DGS if n not in ("opacity", "rot_3")]
    expect_error(raw_ply(tmp_path / "m2.ply", names, np.ones((2, len(names)))),
                 "missing properties 'opacity', 'rot_3'")


def test_list_property_in_vertex(tmp_path):
    p = raw_ply(tmp_path / "l.ply", MIN_3DGS, np.ones((0, len(MIN_3DGS))),
                extra_header="property list uchar float feats\n")
    expect_error(p, "list property 'feats'")


def test_bad_sh_count(tmp_path):
    names = MIN_3DGS + [f"f_rest_{i}" for i in range(12)]
    expect_error(raw_ply(tmp_path / "sh.ply", names, np.ones((1, len(names)))), "12 f_rest", "0, 9, 24 or 45")


def test_truncated_binary(tmp_path):
    p = raw_ply(tmp_path / "t.ply", MIN_3DGS, np.ones((10, len(MIN_3DGS))))
    p.write_bytes(p.read_bytes()[:-5])
    expect_error(p, "truncated", f"{10 * 56} bytes", f"found {10 * 56 - 5}")


def test_ascii_too_few_rows(tmp_path):
    p = raw_ply(tmp_path / "a.ply", MIN_3DGS, np.ones((3, len(MIN_3DGS))), fmt="ascii", count=5)
    expect_error(p, "truncated", "header says 5 vertices, found 3 rows")


def test_ascii_non_numeric(tmp_path):
    p = raw_ply(tmp_path / "a.ply", MIN_3DGS, np.ones((3, len(MIN_3DGS))), fmt="ascii")
    p.write_text(p.read_text().replace("1.0 1.0 1.0\n", "1.0 abc 1.0\n", 1))
    expect_error(p, "not numeric")


@pytest.mark.parametrize("fmt,bad", [("binary_little_endian", np.nan), ("ascii", np.inf)])
def test_nan_or_inf_values(tmp_path, fmt, bad):
    rows = np.ones((4, len(MIN_3DGS)))
    rows[2, MIN_3DGS.index("opacity")] = bad
    expect_error(raw_ply(tmp_path / "n.ply", MIN_3DGS, rows, fmt=fmt), "NaN or infinite opacity_logits")


def test_missing_or_unreadable_file(tmp_path):
    expect_error(tmp_path / "absent.ply", "cannot read")
    (tmp_path / "dir.ply").mkdir()
    expect_error(tmp_path / "dir.ply", "cannot read")


def test_unknown_format_and_element_before_vertex(tmp_path):
    p = raw_ply(tmp_path / "f.ply", MIN_3DGS, np.ones((1, len(MIN_3DGS))))
    p.write_bytes(p.read_bytes().replace(b"binary_little_endian", b"binary_middle_endian"))
    expect_error(p, "unsupported PLY format")
    p.write_bytes(b"ply\nformat ascii 1.0\nelement camera 1\nproperty float fx\nelement vertex 0\n"
                  + b"".join(b"property float %s\n" % n.encode() for n in MIN_3DGS) + b"end_header\n1\n")
    expect_error(p, "before 'vertex'")


# ----------------------------------------------------------------- writing
def leftovers(folder) -> list[str]:
    return sorted(os.listdir(folder))


def test_invalid_splats_write_nothing(tmp_path):
    s = make_splats(n=5)
    s.opacity_logits = s.opacity_logits[:4]
    with pytest.raises(ValueError, match="opacity_logits"):
        write_ply(tmp_path / "bad.ply", s)
    s = make_splats(n=5)
    s.extra["segfeat_3"] = s.extra["segfeat_3"][:2]
    with pytest.raises(ValueError, match="segfeat_3"):
        write_ply(tmp_path / "bad.ply", s)
    s = make_splats(n=5, segfeat=False)
    s.extra["scale_2"] = np.zeros(5, np.float32)  # would turn a 2DGS file into 3DGS
    with pytest.raises(ValueError, match="scale_2"):
        write_ply(tmp_path / "bad.ply", s)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("ascii", [False, True])
def test_failure_mid_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch, ascii):
    path = tmp_path / "scene.ply"
    write_ply(path, make_splats(n=3, seed=1))
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ply.np if ascii else os, "savetxt" if ascii else "fsync", boom)
    with pytest.raises(InstaSceneError, match="cannot write PLY file: No space left"):
        write_ply(path, make_splats(n=9, seed=2), ascii=ascii)
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == ["scene.ply"]


def test_write_fails_cleanly_on_bad_target(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InstaSceneError, match="cannot write"):
        write_ply(tmp_path / "file" / "out.ply", make_splats(n=2))


def test_overwrite_replaces_atomically(tmp_path):
    path = tmp_path / "scene.ply"
    write_ply(path, make_splats(n=20, seed=3))
    new = make_splats(n=4, kind="3dgs", degree=0, segfeat=False, seed=4)
    write_ply(path, new)
    assert_same(new, read_ply(path))
    assert leftovers(tmp_path) == ["scene.ply"]


def test_huge_declared_count_is_truncation_not_memory_error(tmp_path):
    p = raw_ply(tmp_path / "huge.ply", MIN_3DGS, np.ones((2, len(MIN_3DGS))), count=10**15)
    expect_error(p, "truncated", "found 112")


def test_written_files_have_ordinary_permissions(tmp_path):
    """atomic_write's temporary file is private (mkstemp); the result must not stay so."""
    import os

    from instascene.io.atomic import atomic_write

    with atomic_write(tmp_path / "f.bin") as f:
        f.write(b"x")
    mask = os.umask(0o022)
    os.umask(mask)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o666 & ~mask
