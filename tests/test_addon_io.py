"""The add-on's io/ layer (numpy + stdlib, no bpy): formats, cameras, run folders, SH rotation,
baking, and the HTTP client, checked against the backend's own readers and writers.

Also holds the scene/run-folder builders the Blender tests (test_addon_blender.py) use.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from instascene.io.cameras import Camera, intrinsics, look_at  # noqa: E402
from instascene.io.cameras_json import read_cameras_json as backend_read_cameras_json  # noqa: E402
from instascene.io.cameras_json import write_cameras_json  # noqa: E402
from instascene.io.colmap import read_colmap as backend_read_colmap  # noqa: E402
from instascene.io.colmap import write_colmap  # noqa: E402
from instascene.io.ply import read_ply, write_ply  # noqa: E402
from instascene.io.splats import Splats  # noqa: E402
from instascene_blender.io import cameras as acam  # noqa: E402
from instascene_blender.io import mesh_ply, run_folder, service, transform  # noqa: E402
from instascene_blender.io import ply as aply  # noqa: E402

DONUT = ROOT.parent / "shared" / "data" / "donut_3dgs.ply"
ARRAYS = ("means", "quats", "log_scales", "opacity_logits", "sh_dc", "sh_rest")


# ====================================================================== builders (shared)
def make_splats(n=50, kind="2dgs", degree=3, segfeat=True, seed=0, center=(0, 0, 0), spread=1.0) -> Splats:
    rng = np.random.default_rng(seed)
    f = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    return Splats(
        means=(f(n, 3) * spread + np.asarray(center, np.float32)).astype(np.float32),
        quats=f(n, 4) * 3,
        log_scales=f(n, 2 if kind == "2dgs" else 3) * 0.3 - 3.0,
        opacity_logits=f(n) + 2.0,
        sh_dc=f(n, 3),
        sh_rest=f(n, (degree + 1) ** 2 - 1, 3) * 0.1,
        extra={f"segfeat_{i}": f(n) for i in range(4)} if segfeat else {},
    )


def make_cameras(width=64, height=48, count=3, fx=60.0, fy=60.0, cx=30.0, cy=26.0) -> list[Camera]:
    cams = []
    for i in range(count):
        a = 2 * np.pi * i / count
        eye = (3 * np.cos(a), 3 * np.sin(a), 1.5)
        cams.append(Camera(f"view_{i:02d}", width, height, intrinsics(fx, fy, cx, cy), look_at(eye, (0, 0, 0)),
                           f"view_{i:02d}.png"))
    return cams


def make_scene(folder: Path, n=300, cameras="colmap", seed=0) -> tuple[Path, Splats, list[Camera]]:
    """A scene folder: point_cloud.ply (2DGS, SH degree 3, segfeat) + sparse/0 or cameras.json."""
    folder.mkdir(parents=True, exist_ok=True)
    splats = make_splats(n, seed=seed, spread=0.5)
    write_ply(folder / "point_cloud.ply", splats)
    cams = make_cameras()
    if cameras == "colmap":
        write_colmap(folder / "sparse" / "0", cams)
    elif cameras == "colmap_txt":
        write_colmap(folder / "sparse" / "0", cams, binary=False)
    elif cameras == "json":
        write_cameras_json(folder / "cameras.json", cams)
    return folder, splats, cams


def write_mesh(path: Path, center, size=0.2, colors=True, ascii=False) -> None:
    c = np.asarray(center, np.float32)
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32) * size + c
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.int32)
    col = np.array([[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 1], [1, 1, 1, 1]], np.float32) if colors else None
    mesh_ply.write_mesh_ply(path, mesh_ply.MeshData(v, faces, col), ascii=ascii)


INSTANCE_CENTERS = {1: (1.0, 0.0, 0.0), 2: (-1.0, 0.5, 0.0), 3: (0.0, -1.0, 0.5)}


def make_run(folder: Path, mesh_for=(1,), scene: Path | None = None) -> Path:
    """A run folder per contracts.md: instances.json, instances/<id>/observed.ply (+ mesh.ply),
    background.ply, labels.npy. Instance i's Gaussians lie around INSTANCE_CENTERS[i]."""
    records, labels = [], []
    for iid, c in INSTANCE_CENTERS.items():
        s = make_splats(40, seed=iid, center=c, spread=0.1)
        d = folder / "instances" / str(iid)
        d.mkdir(parents=True, exist_ok=True)
        write_ply(d / "observed.ply", s)
        files = ["observed.ply"]
        if iid in mesh_for:
            write_mesh(d / "mesh.ply", c)
            files.append("mesh.ply")
        lo, hi = s.means.min(0), s.means.max(0)
        records.append({"id": iid, "gaussians": len(s), "bbox_min": lo.tolist(), "bbox_max": hi.tolist(),
                        "centroid": s.means.astype(np.float64).mean(0).tolist(), "files": files})
        labels += [iid] * len(s)
    bg = make_splats(30, seed=99, center=(0, 0, -1), spread=1.0)
    write_ply(folder / "background.ply", bg)
    labels += [-1] * len(bg)
    np.save(folder / "labels.npy", np.asarray(labels, np.int32))
    if scene is None:  # the minimal form: a bare list of records
        (folder / "instances.json").write_text(json.dumps(records))
    else:  # the form the backend's segmentation writes
        doc = {"scene": str(scene), "gaussians": len(labels), "instances": records,
               "background": {"gaussians": len(bg), "file": "background.ply"}}
        (folder / "instances.json").write_text(json.dumps(doc))
    return folder


def assert_same(a, b) -> None:
    for name in ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.shape == y.shape and x.dtype == y.dtype == np.float32, name
        assert x.tobytes() == y.tobytes(), name
    assert list(a.extra) == list(b.extra)
    for k in a.extra:
        assert np.asarray(a.extra[k]).tobytes() == np.asarray(b.extra[k]).tobytes(), k


def to_addon(s: Splats) -> aply.SplatData:
    return aply.SplatData(s.means, s.quats, s.log_scales, s.opacity_logits, s.sh_dc, s.sh_rest, dict(s.extra))


# ====================================================================== PLY codec
@pytest.mark.parametrize("kind,degree", [("2dgs", 3), ("3dgs", 0), ("2dgs", 1), ("3dgs", 2)])
def test_ply_backend_writes_addon_reads_and_back(tmp_path, kind, degree):
    s = make_splats(37, kind=kind, degree=degree)
    s.extra["label"] = np.arange(37, dtype=np.int32) - 5
    s.extra["big"] = np.arange(37, dtype=np.uint32) * 100_000_000
    write_ply(tmp_path / "b.ply", s)
    a = aply.read_splat_ply(tmp_path / "b.ply")
    assert_same(a, s)
    assert a.kind == kind and a.sh_degree == degree
    aply.write_splat_ply(tmp_path / "a.ply", a)
    # same bytes as the backend writer (exact reference order), and the backend reads it back
    assert (tmp_path / "a.ply").read_bytes() == (tmp_path / "b.ply").read_bytes()
    assert_same(read_ply(tmp_path / "a.ply"), s)


def test_ply_reads_ascii_and_big_endian(tmp_path):
    s = make_splats(9, degree=1)
    write_ply(tmp_path / "t.ply", s, ascii=True)
    assert_same(aply.read_splat_ply(tmp_path / "t.ply"), s)
    # big endian: rewrite the binary file's header and swap the records
    write_ply(tmp_path / "le.ply", s)
    raw = (tmp_path / "le.ply").read_bytes()
    head, body = raw.split(b"end_header\n", 1)
    rec = np.frombuffer(body, np.float32).byteswap()
    (tmp_path / "be.ply").write_bytes(head.replace(b"binary_little_endian", b"binary_big_endian") +
                                      b"end_header\n" + rec.tobytes())
    assert_same(aply.read_splat_ply(tmp_path / "be.ply"), s)


def test_ply_donut_matches_numpy(tmp_path):
    if not DONUT.exists():
        pytest.skip(f"missing {DONUT}")
    a = aply.read_splat_ply(DONUT)
    b = read_ply(DONUT)
    assert len(a) == 45624 and a.kind == "3dgs" and a.sh_degree == 0
    assert_same(a, b)


def test_ply_errors_are_clear(tmp_path):
    p = tmp_path / "mesh.ply"
    write_mesh(p, (0, 0, 0))
    with pytest.raises(aply.PlyError, match="not a Gaussian splat PLY.*mesh"):
        aply.read_splat_ply(p)
    (tmp_path / "c.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement chunk 1\nproperty float "
                                     b"min_x\nelement vertex 1\nproperty uint packed_position\nend_header\n" +
                                     b"\0" * 8)
    with pytest.raises(aply.PlyError, match="compressed"):
        aply.read_splat_ply(tmp_path / "c.ply")
    s = make_splats(5)
    write_ply(tmp_path / "t.ply", s)
    (tmp_path / "trunc.ply").write_bytes((tmp_path / "t.ply").read_bytes()[:-10])
    with pytest.raises(aply.PlyError, match="truncated"):
        aply.read_splat_ply(tmp_path / "trunc.ply")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(aply.PlyError, match="not a PLY"):
        aply.read_splat_ply(tmp_path / "x.txt")


def test_concatenate_mixed_layouts():
    a, b = to_addon(make_splats(5, kind="2dgs", degree=1)), to_addon(make_splats(4, kind="3dgs", degree=3))
    c = aply.concatenate([a, b])
    assert len(c) == 9 and c.log_scales.shape == (9, 3) and c.sh_rest.shape == (9, 15, 3)
    assert np.allclose(c.log_scales[:5, 2], np.log(1e-6))
    assert np.array_equal(c.sh_rest[:5, :3], a.sh_rest) and not c.sh_rest[:5, 3:].any()


# ====================================================================== mesh PLY
@pytest.mark.parametrize("ascii", [False, True])
def test_mesh_ply_roundtrip(tmp_path, ascii):
    write_mesh(tmp_path / "m.ply", (1, 2, 3), ascii=ascii)
    m = mesh_ply.read_mesh_ply(tmp_path / "m.ply")
    assert m.vertices.shape == (4, 3) and m.faces.shape == (4, 3) and m.colors.shape == (4, 4)
    assert np.allclose(m.vertices[0], (1, 2, 3)) and np.allclose(m.colors[1], (0, 1, 0, 1))


@pytest.mark.parametrize("encoding", ["binary", "ascii"])
def test_mesh_ply_reads_trimesh_output(tmp_path, encoding):
    trimesh = pytest.importorskip("trimesh")
    box = trimesh.creation.box(extents=(1, 2, 3))
    box.visual.vertex_colors = np.tile(np.array([[10, 200, 30, 255]], np.uint8), (len(box.vertices), 1))
    box.export(tmp_path / "box.ply", encoding=encoding)
    m = mesh_ply.read_mesh_ply(tmp_path / "box.ply")
    assert np.allclose(m.vertices, box.vertices) and np.array_equal(m.faces, box.faces)
    assert np.allclose(m.colors[0], np.array([10, 200, 30, 255]) / 255)


def test_mesh_ply_float_colours_quads_and_extra_props(tmp_path):
    text = """ply
format ascii 1.0
element vertex 4
property float x
property float y
property float z
property float nx
property float ny
property float nz
property float red
property float green
property float blue
element face 1
property list uchar int vertex_indices
end_header
0 0 0 0 0 1 0.5 0.25 1
1 0 0 0 0 1 0 0 0
1 1 0 0 0 1 0 0 0
0 1 0 0 0 1 0 0 0
4 0 1 2 3
"""
    (tmp_path / "q.ply").write_text(text)
    m = mesh_ply.read_mesh_ply(tmp_path / "q.ply")
    assert m.faces.tolist() == [[0, 1, 2], [0, 2, 3]]
    assert np.allclose(m.colors[0], (0.5, 0.25, 1, 1))
    # binary with uint counts/indices and a per-face property -> generic path
    hdr = ("ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
           "property float z\nelement face 1\nproperty list uint uint vertex_indices\nproperty uchar flag\n"
           "end_header\n").encode()
    body = np.arange(9, dtype="<f4").tobytes() + np.array([3, 0, 1, 2], "<u4").tobytes() + b"\x07"
    (tmp_path / "b.ply").write_bytes(hdr + body)
    m = mesh_ply.read_mesh_ply(tmp_path / "b.ply")
    assert m.faces.tolist() == [[0, 1, 2]] and m.colors is None
    with pytest.raises(aply.PlyError, match="no 'face'"):
        write_ply(tmp_path / "s.ply", make_splats(3))
        mesh_ply.read_mesh_ply(tmp_path / "s.ply")


# ====================================================================== cameras
@pytest.mark.parametrize("source", ["colmap", "colmap_txt", "json"])
def test_cameras_match_backend(tmp_path, source):
    folder, _, cams = make_scene(tmp_path / "scene", n=10, cameras=source)
    sp = acam.find_scene(folder)
    assert sp.ply == str(folder / "point_cloud.ply") and len(sp.cameras) == 3
    ref = backend_read_colmap(folder / "sparse" / "0") if source != "json" else \
        backend_read_cameras_json(folder / "cameras.json")
    for a, b in zip(sp.cameras, ref):
        assert a.name == b.name and (a.width, a.height) == (b.width, b.height)
        assert np.allclose([a.fx, a.fy, a.cx, a.cy], [b.fx, b.fy, b.cx, b.cy])
        assert np.allclose(a.world_to_camera, b.world_to_camera, atol=1e-12)
        p = np.array([[0.1, -0.2, 0.3]])
        c = p @ b.world_to_camera[:3, :3].T + b.world_to_camera[:3, 3]
        assert np.allclose(a.project(p)[0], [b.fx * c[0, 0] / c[0, 2] + b.cx, b.fy * c[0, 1] / c[0, 2] + b.cy])


def test_find_scene_training_output_and_single_ply(tmp_path):
    out = tmp_path / "model"
    for it in (7000, 30000):
        (out / "point_cloud" / f"iteration_{it}").mkdir(parents=True)
        write_ply(out / "point_cloud" / f"iteration_{it}" / "point_cloud.ply", make_splats(3 + it // 10000))
    write_cameras_json(out / "cameras.json", make_cameras())
    sp = acam.find_scene(out)
    assert sp.ply.endswith("iteration_30000/point_cloud.ply") and sp.camera_source == "cameras.json"
    sp = acam.find_scene(out / "point_cloud" / "iteration_7000" / "point_cloud.ply")
    assert sp.camera_source == "cameras.json" and sp.name == "model"
    with pytest.raises(acam.SceneError, match="no point_cloud.ply"):
        acam.find_scene(tmp_path)


def test_blender_camera_conversion():
    cam = acam.CameraData("c", 64, 48, 60.0, 60.0, 30.0, 26.0, look_at((3, 0, 1), (0, 0, 0)))
    bc = acam.blender_camera(cam)
    assert bc.sensor_fit == "HORIZONTAL" and np.isclose(bc.lens, 60 * 36 / 64)
    assert np.isclose(bc.shift_x, 2 / 64) and np.isclose(bc.shift_y, 2 / 64)
    # Blender camera looks along its -z: the target lies on -z
    d = -bc.matrix_world[:3, 2]
    assert np.allclose(d, -np.array([3, 0, 1]) / np.linalg.norm([3, 0, 1]))


# ====================================================================== run folder
def test_run_folder_schema(tmp_path):
    run = make_run(tmp_path / "run")
    rf = run_folder.read_run_folder(run)
    assert [r.id for r in rf.instances] == ["1", "2", "3"] and rf.background and rf.labels
    assert rf.background == rf.background_observed == str(run / "background.ply")
    # after completion the closed background is the one shown; the observed one stays at hand
    write_ply(run / "background_completed.ply", make_splats(45, seed=98, center=(0, 0, -1), spread=1.0))
    rf = run_folder.read_run_folder(run)
    assert rf.background == str(run / "background_completed.ply")
    assert rf.background_observed == str(run / "background.ply")
    r1 = rf.instances[0]
    assert set(r1.files) == {"observed", "mesh"} and r1.splat_file.endswith("1/observed.ply")
    assert np.allclose(run_folder.instance_centroid(r1), read_ply(r1.splat_file).means.mean(0), atol=1e-6)
    labels = run_folder.read_labels(rf.labels)
    assert labels.dtype == np.int32 and (labels == -1).sum() == 30
    # an object with an "instances" list, a dict of files, completed.ply preferred
    write_ply(run / "instances" / "2" / "completed.ply", make_splats(7))
    recs = json.loads((run / "instances.json").read_text())
    recs[1]["files"] = {"completed": "instances/2/completed.ply"}
    (run / "instances.json").write_text(json.dumps({"version": 1, "instances": recs}))
    rf = run_folder.read_run_folder(run)
    assert rf.instances[1].splat_file.endswith("2/completed.ply")
    (run / "instances.json").write_text(json.dumps([{"id": "../x"}]))
    with pytest.raises(acam.SceneError, match="not a folder name"):
        run_folder.read_run_folder(run)
    with pytest.raises(acam.SceneError, match="no instances.json"):
        run_folder.read_run_folder(tmp_path)


# ====================================================================== SH rotation and baking
def _rot_z(deg):
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_sh_rotation_exact_all_degrees(degree):
    rng = np.random.default_rng(degree)
    s = to_addon(make_splats(64, degree=degree))
    q = rng.normal(size=4)
    O = transform.quat_to_matrix(q[None])[0]
    for M in (O, O @ np.diag([1, -1, 1])):  # rotation and reflection
        rot = transform.rotate_sh(s.sh_rest, M)
        d = rng.normal(size=(64, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        # colour seen from direction M d after the transform == colour from d before
        after = transform.sh_eval(s.sh_dc, rot, d @ M.T)
        before = transform.sh_eval(s.sh_dc, s.sh_rest, d)
        assert np.abs(after - before).max() < 1e-5


def test_sh_basis_matches_the_rasterizer():
    """The add-on's SH evaluation (used to check exports) is the backend rasterizer's convention."""
    torch = pytest.importorskip("torch")
    from instascene.render.sh import eval_sh

    s = make_splats(50, degree=3)
    d = np.random.default_rng(5).normal(size=(50, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    ref = eval_sh(torch.from_numpy(s.sh_coeffs().astype(np.float64)), torch.from_numpy(d)).numpy()
    assert np.allclose(transform.sh_eval(s.sh_dc, s.sh_rest, d), ref, atol=1e-12)


def test_sh_degree1_closed_form():
    # degree 1 in 3DGS order is (-y, z, -x)·C1: rotating about z by 90 deg maps x->y, y->-x
    sh = np.zeros((1, 3, 3), np.float32)
    sh[0, 2, 0] = 1.0  # coefficient of -x (red)
    rot = transform.rotate_sh(sh, _rot_z(90))
    assert np.allclose(rot[0, :, 0], [1, 0, 0], atol=1e-6)  # -x -> -y


def test_bake_matrix_uniform_and_general():
    s = to_addon(make_splats(30, degree=1))
    M = np.eye(4)
    M[:3, :3] = 2.0 * _rot_z(90)
    M[:3, 3] = (1, 2, 3)
    b = transform.bake_matrix(s, M)
    assert np.allclose(b.means, s.means @ M[:3, :3].T + M[:3, 3], atol=1e-5)
    assert np.allclose(b.log_scales, s.log_scales + np.log(2), atol=1e-6)
    assert np.allclose(np.linalg.norm(b.quats, axis=1), np.linalg.norm(s.quats, axis=1), rtol=1e-5)
    Rb, Rs = transform.quat_to_matrix(b.quats), transform.quat_to_matrix(s.quats)
    assert np.allclose(Rb, _rot_z(90) @ Rs, atol=1e-5)
    assert transform.bake_matrix(s, np.eye(4)) is s  # identity: bit-exact
    # non-uniform scale: the surfel's tangent covariance maps exactly
    A = np.diag([1.0, 3.0, 0.5]) @ _rot_z(30)
    M = np.eye(4)
    M[:3, :3] = A
    g = transform.bake_matrix(s, M)

    def cov(q, ls):
        L = transform.quat_to_matrix(q)[:, :, :2] * np.exp(ls.astype(np.float64))[:, None, :2]
        return L @ L.transpose(0, 2, 1)

    want = np.einsum("ij,njk,lk->nil", A, cov(s.quats, s.log_scales), A)
    assert np.allclose(cov(g.quats, g.log_scales), want, rtol=1e-4, atol=1e-9)


# ====================================================================== the wall
def test_io_layer_imports_without_bpy():
    code = ("import sys; sys.modules['bpy'] = None; sys.modules['torch'] = None; sys.modules['instascene'] = None\n"
            "import instascene_blender, instascene_blender.io.ply, instascene_blender.io.mesh_ply, "
            "instascene_blender.io.cameras, instascene_blender.io.run_folder, instascene_blender.io.transform, "
            "instascene_blender.io.service\nprint('ok')")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


# ====================================================================== HTTP client
class FakeBackend:
    """A stdlib HTTP server speaking the service contract; jobs advance one step per GET.
    POST /query answers `query_answer(body)` -> (status, JSON); its bodies are kept in `queries`."""

    def __init__(self, token="s3cret", run_dir=""):
        self.token, self.run_dir, self.jobs, self.requests = token, run_dir, {}, []
        self.queries, self.query_answer = [], lambda body: (404, {"detail": "not found"})
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, obj):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _authed(self):
                if self.headers.get("Authorization") != f"Bearer {outer.token}":
                    self._send(401, {"detail": "missing or wrong token"})
                    return False
                return True

            def do_GET(self):  # noqa: N802
                outer.requests.append(("GET", self.path))
                if self.path == "/health":
                    return self._send(200, {"status": "ok"})
                if not self._authed():
                    return None
                if self.path == "/capabilities":
                    return self._send(200, {"device": {"type": "cpu", "name": "CPU"}, "version": "0.1.0"})
                if self.path.startswith("/jobs/"):
                    job = outer.jobs.get(self.path.split("/")[2])
                    if job is None:
                        return self._send(404, {"detail": "no such job"})
                    if job["state"] == "queued":
                        job.update(state="running", progress=0.5, stage="tracking", message="half way")
                    elif job["state"] == "running":
                        job.update(state="done", progress=1.0, stage="done", message="finished", run=job["run"])
                    return self._send(200, job)
                return self._send(404, {"detail": "not found"})

            def do_POST(self):  # noqa: N802
                outer.requests.append(("POST", self.path))
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n) or b"{}")
                if not self._authed():
                    return None
                if self.path == "/jobs":
                    if body.get("kind") not in ("segment", "complete", "run"):
                        return self._send(422, {"detail": f"unknown kind {body.get('kind')!r}"})
                    jid = f"job{len(outer.jobs) + 1}"
                    outer.jobs[jid] = {"id": jid, "state": "queued", "progress": 0.0, "stage": "", "message": "",
                                       "kind": body["kind"], "run": body.get("run") or outer.run_dir,
                                       "options": body.get("options")}
                    return self._send(200, {"id": jid})
                if self.path == "/query":
                    outer.queries.append(body)
                    return self._send(*outer.query_answer(body))
                if self.path.endswith("/cancel"):
                    job = outer.jobs[self.path.split("/")[2]]
                    job.update(state="cancelled", message="cancelled by user")
                    return self._send(200, job)
                return self._send(404, {"detail": "not found"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _drain(q):
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out


def test_token_file_discovery(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert service.default_token_file() == str(tmp_path / "instascene" / "token")
    assert service.read_token() is None
    (tmp_path / "instascene").mkdir()
    (tmp_path / "instascene" / "token").write_text("abc\n")
    (tmp_path / "instascene" / "token").chmod(0o600)  # as `instascene serve` writes it
    assert service.read_token() == "abc"


def test_client_job_lifecycle_and_errors(tmp_path):
    import queue

    with FakeBackend(run_dir=str(tmp_path)) as fb:
        q = queue.Queue()
        stop = threading.Event()
        service.check_connection(service.Client(fb.url, "s3cret"), q)
        (msg,) = _drain(q)
        assert msg["state"] == "connected" and "CPU" in msg["message"]
        service.check_connection(service.Client(fb.url, "wrong"), q)
        (msg,) = _drain(q)
        assert msg["state"] == "error" and "401" in msg["message"] and "token" in msg["message"]

        client = service.Client(fb.url, "s3cret")
        service.run_job(client, "segment", "/scene", str(tmp_path), {"x": 1}, q, stop, interval=0.01)
        msgs = _drain(q)
        assert msgs[0] == {"type": "submitted", "id": "job1", "kind": "segment"}
        assert [m["state"] for m in msgs[1:]] == ["running", "done"]
        assert msgs[-1]["run"] == str(tmp_path) and msgs[-1]["progress"] == 1.0
        assert fb.jobs["job1"]["options"] == {"x": 1}

        service.run_job(client, "bogus", None, None, None, q, stop, interval=0.01)
        (msg,) = _drain(q)
        assert msg["type"] == "error" and "422" in msg["message"] and "unknown kind" in msg["message"]
        assert client.cancel("job1")["state"] == "cancelled"

    q = queue.Queue()
    service.check_connection(service.Client(fb.url, "s3cret", timeout=1), q)
    (msg,) = _drain(q)
    assert msg["state"] == "offline" and "cannot reach" in msg["message"]


def test_client_query_sends_the_click():
    with FakeBackend() as fb:
        fb.query_answer = lambda body: (200, {"gaussian": 7, "instance": 2, "instance_gaussians": 40,
                                              "similar_gaussians": 41, "similar_instances": {"2": 40, "-1": 1}})
        client = service.Client(fb.url, "s3cret")
        assert client.query("/runs/a", point=np.array([1, 2, 3.5]))["instance"] == 2
        client.query("/runs/a", view="frame_0000", pixel=(4.0, 5.0), threshold=0.9, max_distance=0.1)
        assert fb.queries == [{"run": "/runs/a", "point": [1.0, 2.0, 3.5]},
                              {"run": "/runs/a", "view": "frame_0000", "pixel": [4, 5], "threshold": 0.9,
                               "max_distance": 0.1}]
        fb.query_answer = lambda body: (400, {"detail": "unknown view 'x'"})
        with pytest.raises(service.ServiceError, match="400 to POST /query: unknown view 'x'"):
            client.query("/runs/a", view="x", pixel=(0, 0))


def test_start_backend_refuses_blenders_python(tmp_path):
    with pytest.raises(service.ServiceError, match="not Blender's own Python"):
        service.start_backend(sys.executable, "http://127.0.0.1:8765", None, None)
    with pytest.raises(service.ServiceError, match="not an executable"):
        service.start_backend(str(tmp_path / "nope"), "http://127.0.0.1:8765", None, None)
    cmd = service.backend_command("/env/bin/python", "http://127.0.0.1:9000", "/data", "/tok")
    assert cmd == ["/env/bin/python", "-m", "instascene", "serve", "--host", "127.0.0.1", "--port", "9000",
                   "--data-root", "/data", "--token-file", "/tok"]
