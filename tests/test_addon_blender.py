"""The add-on inside headless Blender (bpy 5.0.1): registration, import, cameras, materialize,
export round trip, a Cycles render, and backend jobs through the queue/drain path.

bpy is imported once per process and the add-on registered once (module fixture);
every test starts from `read_factory_settings(use_empty=True)`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

bpy = pytest.importorskip("bpy")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from instascene.io.ply import read_ply, write_ply  # noqa: E402
from test_addon_io import (  # noqa: E402
    DONUT,
    INSTANCE_CENTERS,
    FakeBackend,
    make_run,
    make_scene,
    make_splats,
)

import instascene_blender  # noqa: E402

SH_C0 = 0.28209479177387814


@pytest.fixture(scope="module", autouse=True)
def addon():
    instascene_blender.register()
    yield
    instascene_blender.unregister()


@pytest.fixture(autouse=True)
def fresh():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    yield


def attr(obj, name):
    a = obj.data.attributes[name]
    key = {"FLOAT": "value", "INT": "value", "FLOAT_VECTOR": "vector", "FLOAT_COLOR": "color",
           "QUATERNION": "value"}[a.data_type]
    width = {"FLOAT": 1, "INT": 1, "FLOAT_VECTOR": 3, "FLOAT_COLOR": 4, "QUATERNION": 4}[a.data_type]
    out = np.empty(len(obj.data.vertices) * width, np.int32 if a.data_type == "INT" else np.float32)
    a.data.foreach_get(key, out)
    return out.reshape(-1, width) if width > 1 else out


def splat_objects():
    return [o for o in bpy.data.objects if o.get("instascene_splats")]


# ---------------------------------------------------------------------- registration
def test_register_unregister_twice():
    for _ in range(2):
        instascene_blender.unregister()
        assert not hasattr(bpy.types.Scene, "instascene") and not hasattr(bpy.types, "VIEW3D_PT_instascene")
        assert not hasattr(bpy.types, "INSTASCENE_OT_import_scene")
        instascene_blender.register()
        assert hasattr(bpy.types.Scene, "instascene") and hasattr(bpy.types.WindowManager, "instascene")
        assert hasattr(bpy.types, "INSTASCENE_OT_import_scene")
    ops = {"import_scene", "materialize", "export_layout", "connect", "start_backend", "segment", "complete",
           "run", "cancel", "set_display", "select_at_cursor"}
    assert ops <= set(dir(bpy.ops.instascene))
    assert hasattr(bpy.types, "VIEW3D_PT_instascene")
    assert bpy.types.VIEW3D_PT_instascene.bl_category == "InstaScene"


def test_operator_errors_are_reports(tmp_path):
    with pytest.raises(RuntimeError, match="no scene given"):
        bpy.ops.instascene.import_scene(filepath="")
    with pytest.raises(RuntimeError, match="no such file"):
        bpy.ops.instascene.import_scene(filepath=str(tmp_path / "missing.ply"))
    (tmp_path / "bad.ply").write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n1\n")
    with pytest.raises(RuntimeError, match="not a Gaussian splat PLY"):
        bpy.ops.instascene.import_scene(filepath=str(tmp_path / "bad.ply"))
    with pytest.raises(RuntimeError, match="no instances.json"):
        bpy.ops.instascene.materialize(run_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="no InstaScene splat objects"):
        bpy.ops.instascene.export_layout(filepath=str(tmp_path / "out.ply"))
    with pytest.raises(RuntimeError, match="no scene"):
        bpy.ops.instascene.segment()


# ---------------------------------------------------------------------- import
def test_import_donut_attributes():
    if not DONUT.exists():
        pytest.skip(f"missing {DONUT}")
    assert bpy.ops.instascene.import_scene(filepath=str(DONUT)) == {"FINISHED"}
    (obj,) = splat_objects()
    ref = read_ply(DONUT)  # the backend's numpy reader
    assert len(obj.data.vertices) == 45624 == len(ref)
    rows = [0, 1, 777, 45623]
    assert np.array_equal(attr(obj, "position")[rows], ref.means[rows])
    assert np.allclose(attr(obj, "gs_opacity")[rows], 1 / (1 + np.exp(-ref.opacity_logits[rows])), atol=1e-6)
    srgb = np.clip(0.5 + SH_C0 * ref.sh_dc[rows], 0, 1)  # display colour, stored scene-linear
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    assert np.allclose(attr(obj, "gs_color")[rows, :3], linear, atol=3e-5)
    assert bpy.context.scene.view_settings.view_transform == "Standard"
    assert np.array_equal(attr(obj, "gs_rot_raw")[rows], ref.quats[rows])
    assert np.array_equal(attr(obj, "gs_log_scale")[rows], ref.log_scales[rows])
    assert np.array_equal(attr(obj, "gs_f_dc")[rows], ref.sh_dc[rows])
    # display frame (3DGS): unit quaternion; the disc spans the two largest axes
    q, sc = attr(obj, "gs_rot")[rows], attr(obj, "gs_scale")[rows]
    assert np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-5)
    from instascene_blender.io.transform import quat_to_matrix

    def disc_cov(R, s):
        L = R[:, :, :2] * s[:, None, :2]
        return L @ L.transpose(0, 2, 1)

    R0 = quat_to_matrix(ref.quats[rows])
    order = np.argsort(-ref.log_scales[rows], axis=1)
    want = disc_cov(np.take_along_axis(R0, order[:, None, :], 2), np.exp(np.take_along_axis(
        ref.log_scales[rows].astype(np.float64), order, 1)))
    assert np.allclose(disc_cov(quat_to_matrix(q), sc.astype(np.float64)), want, rtol=1e-4, atol=1e-10)
    assert np.all(sc[:, 2] < 1e-5)
    mod = obj.modifiers["InstaScene Splats"]
    assert mod.type == "NODES" and mod.node_group.name == "InstaScene Splats"
    # the evaluated geometry holds one disc instance per splat
    deps = bpy.context.evaluated_depsgraph_get()
    n_inst = sum(1 for i in deps.object_instances if i.is_instance and i.parent and i.parent.original == obj)
    assert n_inst == 45624


def _world_to_pixel(scene, cam_obj, p):
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    co = world_to_camera_view(scene, cam_obj, Vector(p))
    W, H = scene.render.resolution_x, scene.render.resolution_y
    return np.array([co.x * W, (1 - co.y) * H])


@pytest.mark.parametrize("source", ["colmap", "json"])
def test_import_scene_folder_with_cameras(tmp_path, source):
    folder, splats, cams = make_scene(tmp_path / "scene", n=200, cameras=source)
    assert bpy.ops.instascene.import_scene(filepath=str(folder)) == {"FINISHED"}
    (obj,) = splat_objects()
    assert len(obj.data.vertices) == 200 and obj.users_collection[0].name == "scene"
    assert np.array_equal(attr(obj, "position"), splats.means)
    for k in range(1, 16):  # SH rest kept per coefficient (R, G, B)
        assert np.array_equal(attr(obj, f"gs_sh_{k}"), splats.sh_rest[:, k - 1])
    assert np.array_equal(attr(obj, "gs_x_segfeat_3"), splats.extra["segfeat_3"])
    cam_objs = sorted((o for o in bpy.data.objects if o.type == "CAMERA"), key=lambda o: o.name)
    assert [o.name for o in cam_objs] == [c.name for c in cams]
    scene = bpy.context.scene
    assert bpy.context.scene.instascene.scene_path == str(folder)
    pts = np.array([[0.1, -0.2, 0.3], [0.0, 0.0, 0.0], [-0.3, 0.25, -0.1]])
    for cam, o in zip(cams, cam_objs):
        from instascene_blender.blender.cameras import use_camera_render_settings

        use_camera_render_settings(scene, o)
        K = cam.K
        cx = K[0, 2] if source == "colmap" else cam.width / 2  # cameras.json has no principal point
        cy = K[1, 2] if source == "colmap" else cam.height / 2
        for p in pts:
            c = cam.world_to_camera[:3, :3] @ p + cam.world_to_camera[:3, 3]
            want = [K[0, 0] * c[0] / c[2] + cx, K[1, 1] * c[1] / c[2] + cy]
            assert np.allclose(_world_to_pixel(scene, o, p), want, atol=1e-3)


def test_camera_projection_portrait_and_aspect(tmp_path):
    from instascene.io.cameras import Camera, intrinsics, look_at
    from instascene.io.colmap import write_colmap

    folder = tmp_path / "s"
    write_ply(folder / "point_cloud.ply", make_splats(10))
    cams = [Camera("tall", 40, 80, intrinsics(70.0, 70.0, 17.0, 45.0), look_at((2, 1, 1), (0, 0, 0))),
            Camera("wide", 90, 50, intrinsics(50.0, 60.0, 47.0, 22.0), look_at((-2, 1, 0.5), (0, 0, 0)))]
    write_colmap(folder / "sparse" / "0", cams)
    bpy.ops.instascene.import_scene(filepath=str(folder))
    from instascene_blender.blender.cameras import use_camera_render_settings

    for cam in cams:
        o = bpy.data.objects[cam.name]
        use_camera_render_settings(bpy.context.scene, o)
        for p in ([0.1, -0.2, 0.3], [-0.2, 0.1, 0.0]):
            c = cam.world_to_camera[:3, :3] @ np.array(p) + cam.world_to_camera[:3, 3]
            want = [cam.fx * c[0] / c[2] + cam.cx, cam.fy * c[1] / c[2] + cam.cy]
            assert np.allclose(_world_to_pixel(bpy.context.scene, o, p), want, atol=1e-3), cam.name


# ---------------------------------------------------------------------- materialize
def test_materialize_run_twice(tmp_path):
    run = make_run(tmp_path / "run_a")
    for _ in range(2):
        assert bpy.ops.instascene.materialize(run_dir=str(run)) == {"FINISHED"}
        coll = bpy.data.collections["run_a"]
        names = sorted(o.name for o in coll.objects)
        assert names == ["background", "instance_1", "instance_1_splats", "instance_2", "instance_3"]
        assert len(bpy.data.objects) == 5 and len(bpy.data.meshes) == 5
    recs = {str(r["id"]): r for r in json.loads((run / "instances.json").read_text())}
    for iid in INSTANCE_CENTERS:
        obj = bpy.data.objects[f"instance_{iid}"]
        assert obj["instascene_instance"] == str(iid)
        assert np.allclose(obj.matrix_world.translation, recs[str(iid)]["centroid"], atol=1e-5)
    mesh_obj = bpy.data.objects["instance_1"]
    assert mesh_obj.type == "MESH" and len(mesh_obj.data.polygons) == 4
    assert mesh_obj.data.color_attributes.get("gs_vertex_color") is not None
    assert mesh_obj.material_slots[0].material.name == "InstaScene Vertex Colour"
    child = bpy.data.objects["instance_1_splats"]
    assert child.parent == mesh_obj
    # splats keep their world positions: local + centroid
    world = attr(child, "position").astype(np.float64) + np.array(child.matrix_world.translation)
    assert np.allclose(world, read_ply(run / "instances" / "1" / "observed.ply").means, atol=1e-5)
    assert len(bpy.data.objects["background"].data.vertices) == 30
    # a completed background (the table closed under the objects) replaces the observed one
    write_ply(run / "background_completed.ply", make_splats(45, seed=98, center=(0, 0, -1), spread=1.0))
    assert bpy.ops.instascene.materialize(run_dir=str(run)) == {"FINISHED"}
    bg = bpy.data.objects["background"]
    assert len(bg.data.vertices) == 45 and bg["instascene_background_completed"] == 1
    assert bpy.ops.instascene.materialize(run_dir=str(run), observed_background=True) == {"FINISHED"}
    assert len(bpy.data.objects["background"].data.vertices) == 30


# ---------------------------------------------------------------------- export
def test_export_round_trip_move_and_rotate(tmp_path):
    from instascene_blender.io.transform import quat_to_matrix, sh_eval

    folder, splats, _ = make_scene(tmp_path / "scene", n=120, cameras="none")
    bpy.ops.instascene.import_scene(filepath=str(folder))
    (obj,) = splat_objects()
    out0 = tmp_path / "same.ply"
    bpy.ops.instascene.export_layout(filepath=str(out0))
    same = read_ply(out0)  # identity transform: bit-exact, extras kept
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh_dc", "sh_rest"):
        assert getattr(same, name).tobytes() == getattr(splats, name).tobytes(), name
    assert list(same.extra) == list(splats.extra)

    obj.location = (1.0, 2.0, 3.0)
    obj.rotation_euler = (0.0, 0.0, np.pi / 2)
    bpy.context.view_layer.update()
    out = tmp_path / "moved.ply"
    assert bpy.ops.instascene.export_layout(filepath=str(out)) == {"FINISHED"}
    moved = read_ply(out)
    Rz = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]])
    assert np.allclose(moved.means, splats.means @ Rz.T + [1, 2, 3], atol=1e-5)
    assert np.allclose(quat_to_matrix(moved.quats), Rz @ quat_to_matrix(splats.quats), atol=1e-5)
    assert np.allclose(moved.log_scales, splats.log_scales, atol=1e-6)
    assert np.array_equal(moved.sh_dc, splats.sh_dc) and np.array_equal(moved.opacity_logits, splats.opacity_logits)
    # view-dependent colour: seen from Rz·d after the move == seen from d before (degrees 1-3)
    d = np.random.default_rng(1).normal(size=(len(splats), 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    after = sh_eval(moved.sh_dc, moved.sh_rest, d @ Rz.T)
    before = sh_eval(splats.sh_dc, splats.sh_rest, d)
    assert np.abs(after - before).max() < 1e-5
    deg1_only = sh_eval(moved.sh_dc, moved.sh_rest[:, :3], d @ Rz.T) - sh_eval(splats.sh_dc, splats.sh_rest[:, :3], d)
    assert np.abs(deg1_only).max() < 1e-5
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temporary file


def test_export_materialized_layout(tmp_path):
    run = make_run(tmp_path / "run_b")
    bpy.ops.instascene.materialize(run_dir=str(run))
    bpy.data.objects["instance_1"].location.x += 5.0  # moving the mesh moves its splats
    bpy.context.view_layer.update()
    out = tmp_path / "layout.ply"
    bpy.ops.instascene.export_layout(filepath=str(out))
    s = read_ply(out)
    assert len(s) == 40 * 3 + 30
    obs = read_ply(run / "instances" / "1" / "observed.ply").means
    hit = np.isclose(s.means[:, None, :], obs[None] + [5, 0, 0], atol=1e-5).all(-1).any(0)
    assert hit.all()


def test_materialize_hides_the_scene_it_replaces(tmp_path):
    folder, splats, _ = make_scene(tmp_path / "scene", n=60, cameras="none")
    bpy.ops.instascene.import_scene(filepath=str(folder))
    whole = bpy.data.objects["scene_splats"]
    bpy.ops.instascene.materialize(run_dir=str(make_run(tmp_path / "run", scene=folder)))
    assert whole.hide_get() and whole.hide_render
    bpy.ops.instascene.export_layout(filepath=str(tmp_path / "out.ply"))
    assert len(read_ply(tmp_path / "out.ply")) == 3 * 40 + 30  # the pieces, not the whole scene again
    run_coll = bpy.data.collections["run"]  # the user deletes the run: the scene exports again
    for obj in list(run_coll.objects):
        bpy.data.objects.remove(obj)
    bpy.data.collections.remove(run_coll)
    bpy.ops.instascene.export_layout(filepath=str(tmp_path / "out2.ply"))
    assert len(read_ply(tmp_path / "out2.ply")) == 60


# ---------------------------------------------------------------------- render
@pytest.mark.parametrize("what,display", [("import", "DISCS"), ("import", "POINTS_ALWAYS"),
                                          ("materialize", "DISCS")])
def test_cycles_render_not_empty(tmp_path, what, display):
    scene = bpy.context.scene
    if what == "import":
        folder, _, _ = make_scene(tmp_path / "scene", n=150, cameras="colmap")
        bpy.ops.instascene.import_scene(filepath=str(folder), display=display)
    else:
        bpy.ops.instascene.materialize(run_dir=str(make_run(tmp_path / "run")), display=display)
        cam = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
        scene.collection.objects.link(cam)
        cam.location = (0.0, -4.0, 2.0)
        cam.rotation_euler = (np.deg2rad(63.4), 0.0, 0.0)  # looking at the origin
        scene.camera = cam
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 4
    scene.render.resolution_x = scene.render.resolution_y = 32
    scene.render.filepath = str(tmp_path / "r.png")
    scene.render.image_settings.file_format = "PNG"
    bpy.ops.render.render(write_still=True)
    img = bpy.data.images.load(str(tmp_path / "r.png"))
    px = np.array(img.pixels[:]).reshape(-1, 4)
    background = np.zeros(3)  # empty factory scene: no world, black background
    differs = np.abs(px[:, :3] - background).max(axis=1) > 0.02
    assert differs.sum() >= 5, differs.sum()


_EEVEE = """
import sys, bpy
sys.path.insert(0, sys.argv[1])
import instascene_blender
instascene_blender.register()
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.instascene.import_scene(filepath=sys.argv[2], display="DISCS")
scene = bpy.context.scene
engines = [e.identifier for e in scene.render.bl_rna.properties["engine"].enum_items]
scene.render.engine = next(e for e in ("BLENDER_EEVEE", "BLENDER_EEVEE_NEXT") if e in engines)
scene.render.resolution_x = scene.render.resolution_y = 32
scene.render.filepath = sys.argv[3]
scene.render.image_settings.file_format = "PNG"
bpy.ops.render.render(write_still=True)
"""


def test_eevee_render_not_empty(tmp_path):
    """The disc material also renders in EEVEE (dithered). EEVEE needs an OpenGL/EGL
    context, which a bare machine may lack: it runs in its own process, so that a
    missing context can only skip this test, never crash the others."""
    import subprocess

    folder, _, _ = make_scene(tmp_path / "scene", n=150, cameras="colmap")
    out = tmp_path / "r.png"
    r = subprocess.run([sys.executable, "-c", _EEVEE, str(ROOT), str(folder), str(out)],
                       capture_output=True, text=True, timeout=300)
    if not out.exists() and (r.returncode < 0 or "EGL" in r.stderr or "OpenGL" in r.stderr):
        pytest.skip(f"no GPU context for EEVEE on this machine: {r.stderr.strip()[-300:]}")
    assert r.returncode == 0 and out.exists(), r.stderr[-2000:]
    img = bpy.data.images.load(str(out))
    px = np.array(img.pixels[:]).reshape(-1, 4)
    assert (np.abs(px[:, :3]).max(axis=1) > 0.02).sum() >= 5


_RASTER = """
import sys, numpy as np, torch
from instascene.io.scene import load_scene
from instascene.render.rasterize import rasterize
from instascene.render.surfels import Gaussians, View
scene = load_scene(sys.argv[1])
with torch.no_grad():
    r = rasterize(Gaussians.from_splats(scene.splats), View.from_camera(scene.cameras[0]), background=torch.zeros(3))
np.save(sys.argv[2], r.rgb.clamp(0, 1).numpy())
"""


def test_cycles_render_matches_the_backend_rasterizer(tmp_path):
    """Camera conversion + disc shading + colour management, end to end: Blender's render of an
    imported scene from its own camera vs the project's 2DGS rasterizer (another process)."""
    import subprocess

    from instascene.io.cameras import Camera, intrinsics, look_at
    from instascene.io.colmap import write_colmap
    from instascene.io.splats import Splats

    rng = np.random.default_rng(3)
    g = np.arange(-0.6, 0.6, 0.02)  # a coplanar "table" (the hard case for ray tracing)
    X, Y = np.meshgrid(g, g)
    plane = np.stack([X.ravel(), Y.ravel(), np.zeros(X.size)], 1)
    d = rng.normal(size=(900, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    ball = d * 0.2 + [0.05, 0.0, 0.25]
    from instascene_blender.io.transform import matrix_to_quat

    def frame(n):  # rotation whose third column is n
        a = np.cross(n, [1.0, 0, 0] if abs(n[0]) < 0.9 else [0, 1.0, 0])
        a /= np.linalg.norm(a)
        return np.stack([a, np.cross(n, a), n], axis=1)

    quats = np.concatenate([np.tile([1.0, 0, 0, 0], (len(plane), 1)), matrix_to_quat(np.stack([frame(n) for n in d]))])
    colors = np.concatenate([np.tile([0.85, 0.78, 0.65], (len(plane), 1)),
                             np.clip(0.5 + 0.4 * d[:, [2, 0, 1]], 0, 1)])
    n = len(quats)
    splats = Splats(means=np.concatenate([plane, ball]).astype(np.float32), quats=quats.astype(np.float32),
                    log_scales=np.log(np.concatenate([np.full((len(plane), 2), 0.018), np.full((900, 2), 0.03)]))
                    .astype(np.float32), opacity_logits=np.full(n, 3.0, np.float32),
                    sh_dc=((colors - 0.5) / SH_C0).astype(np.float32), sh_rest=np.zeros((n, 0, 3), np.float32))
    folder = tmp_path / "scene"
    write_ply(folder / "point_cloud.ply", splats)
    cam = Camera("view", 64, 48, intrinsics(55.0, 55.0, 30.0, 25.0), look_at((1.1, -1.0, 0.8), (0, 0, 0.1)))
    write_colmap(folder / "sparse" / "0", [cam])
    r = subprocess.run([sys.executable, "-c", _RASTER, str(folder), str(tmp_path / "ref.npy")],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        pytest.skip(f"backend rasterizer unavailable: {r.stderr[-500:]}")
    ref = np.load(tmp_path / "ref.npy")

    bpy.ops.instascene.import_scene(filepath=str(folder))
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 16
    scene.cycles.filter_width = 0.01  # sample pixel centres, as the rasterizer does
    scene.render.filepath = str(tmp_path / "r.png")
    scene.render.image_settings.file_format = "PNG"
    bpy.ops.render.render(write_still=True)
    img = bpy.data.images.load(str(tmp_path / "r.png"))
    out = np.array(img.pixels[:]).reshape(48, 64, 4)[::-1, :, :3]  # Blender images start at the bottom
    err = (out - ref) ** 2
    # silhouettes differ by about a pixel: the 2DGS rasterizer's screen-space low-pass filter
    # widens edge-on surfels, discs have none; everywhere else the images must agree closely
    lum = np.pad(ref.mean(axis=2), 1, mode="edge")
    around = np.stack([lum[i:i + 48, j:j + 64] for i in range(3) for j in range(3)])
    inner = around.max(0) - around.min(0) < 0.1
    psnr_inner = 10 * np.log10(1.0 / err[inner].mean())
    psnr_all = 10 * np.log10(1.0 / err.mean())
    assert inner.mean() > 0.6 and psnr_inner > 30.0 and psnr_all > 18.0, (psnr_inner, psnr_all)


# ---------------------------------------------------------------------- display and jobs
def test_set_display_points(tmp_path):
    folder, _, _ = make_scene(tmp_path / "scene", n=20, cameras="none")
    bpy.ops.instascene.import_scene(filepath=str(folder), display="POINTS_ALWAYS")
    (obj,) = splat_objects()
    from instascene_blender.blender import nodes

    mod = obj.modifiers[nodes.MODIFIER_NAME]
    assert nodes.get_modifier_input(mod, nodes.INPUT_ALWAYS_POINTS)
    deps = bpy.context.evaluated_depsgraph_get()
    ev = obj.evaluated_get(deps)
    assert ev.evaluated_geometry().pointcloud is not None if hasattr(ev, "evaluated_geometry") else True
    bpy.ops.instascene.set_display(mode="DISCS")
    assert not nodes.get_modifier_input(mod, nodes.INPUT_ALWAYS_POINTS)
    assert not nodes.get_modifier_input(mod, nodes.INPUT_VIEWPORT_POINTS)


def test_segment_job_through_queue_and_drain(tmp_path, monkeypatch):
    from instascene_blender.blender import jobs
    from instascene_blender.preferences import _Defaults

    run = make_run(tmp_path / "run_c")
    (tmp_path / "token").write_text("s3cret\n")
    (tmp_path / "token").chmod(0o600)  # as `instascene serve` writes it
    folder, _, _ = make_scene(tmp_path / "scene", n=10, cameras="none")
    with FakeBackend(run_dir=str(run)) as fb:
        monkeypatch.setattr(_Defaults, "backend_url", fb.url)
        monkeypatch.setattr(_Defaults, "token_file", str(tmp_path / "token"))
        bpy.ops.instascene.connect()
        jobs.MANAGER.join()
        assert jobs.drain() == 1
        st = bpy.context.window_manager.instascene
        assert st.connection == "CONNECTED"

        scn = bpy.context.scene.instascene
        scn.scene_path, scn.run_dir = str(folder), str(run)
        assert bpy.ops.instascene.segment() == {"FINISHED"}
        # the worker polls the backend; timers never fire in background mode -> drain by hand
        jobs.MANAGER.join()
        applied = jobs.drain()
        assert applied == 3  # submitted, running, done
        assert (st.job_id, st.job_kind, st.job_state, st.progress) == ("job1", "segment", "done", 1.0)
        assert st.last_run == str(run) and not st.last_error
        # auto-materialize on success
        assert sorted(o.name for o in bpy.data.collections["run_c"].objects)[:2] == ["background", "instance_1"]
        assert fb.jobs["job1"]["kind"] == "segment"

        # complete of selected instances carries their ids
        bpy.context.view_layer.update()  # objects made outside an operator appear after a sync
        for o in bpy.context.view_layer.objects:
            o.select_set(o.name == "instance_2")
        bpy.ops.instascene.complete(selected_only=True)
        jobs.MANAGER.join()
        jobs.drain()
        assert fb.jobs["job2"]["options"] == {"instances": ["2"]} and st.job_state == "done"

        # cancel: a job that stays queued (no worker polling), then cancel it
        st.job_id, st.job_state = "job2", "running"
        fb.jobs["job2"]["state"] = "running"
        bpy.ops.instascene.cancel()
        jobs.MANAGER.join()
        jobs.drain()
        assert fb.jobs["job2"]["state"] == "cancelled" and ("POST", "/jobs/job2/cancel") in fb.requests


def test_select_at_cursor(tmp_path, monkeypatch):
    from mathutils import Vector

    from instascene_blender.preferences import _Defaults

    run = make_run(tmp_path / "run_q", mesh_for=(1,))
    centroids = {str(r["id"]): np.array(r["centroid"]) for r in json.loads((run / "instances.json").read_text())}
    (tmp_path / "token").write_text("s3cret\n")
    (tmp_path / "token").chmod(0o600)  # as `instascene serve` writes it

    def answer(body):  # the instance whose centroid is within 0.3 of the point; the background below z = -0.5
        if body["run"] != str(run):
            return 403, {"detail": f"run folder {body['run']!r} is outside the data roots"}
        p = np.array(body["point"])
        near = [k for k, c in centroids.items() if np.linalg.norm(p - c) < 0.3]
        inst = int(near[0]) if near else (-1 if p[2] < -0.5 else None)
        return 200, {"gaussian": None if inst is None else 0, "instance": inst, "instance_gaussians": 40,
                     "similar_gaussians": 40, "similar_instances": {} if inst is None else {str(inst): 40}}

    def click(at):
        bpy.context.scene.cursor.location = tuple(float(v) for v in at)
        return bpy.ops.instascene.select_at_cursor()

    with FakeBackend() as fb:
        fb.query_answer = answer
        monkeypatch.setattr(_Defaults, "backend_url", fb.url)
        monkeypatch.setattr(_Defaults, "token_file", str(tmp_path / "token"))
        with pytest.raises(RuntimeError, match="no run folder"):
            bpy.ops.instascene.select_at_cursor()
        bpy.context.scene.instascene.run_dir = str(run)
        with pytest.raises(RuntimeError, match="not materialized"):
            click(centroids["2"])
        assert bpy.ops.instascene.materialize(run_dir=str(run)) == {"FINISHED"}
        bpy.context.view_layer.update()

        assert click(centroids["2"]) == {"FINISHED"}
        assert [o.name for o in bpy.context.selected_objects] == ["instance_2"]
        assert bpy.context.view_layer.objects.active.name == "instance_2"
        assert fb.queries[-1]["run"] == str(run) and np.allclose(fb.queries[-1]["point"], centroids["2"], atol=1e-5)
        assert click(centroids["1"] + 0.05) == {"FINISHED"}  # the mesh object, not its splats child
        assert [o.name for o in bpy.context.selected_objects] == ["instance_1"]

        # a moved and turned instance: the cursor on it is carried back into the scene's coordinates
        moved = bpy.data.objects["instance_3"]
        moved.location = (4.0, 3.0, 2.0)
        moved.rotation_euler = (0.0, 0.0, 1.0)
        bpy.context.view_layer.update()
        assert click(moved.matrix_world @ Vector((0.05, 0.0, 0.0))) == {"FINISHED"}
        assert np.allclose(fb.queries[-1]["point"], centroids["3"] + [0.05, 0, 0], atol=1e-5)
        assert [o.name for o in bpy.context.selected_objects] == ["instance_3"]

        # nothing there, the background: reported, the selection stays
        assert click((20.0, 20.0, 20.0)) == {"FINISHED"} and fb.queries[-1]["point"] == [20.0, 20.0, 20.0]
        assert click((0.0, 0.0, -1.0)) == {"FINISHED"}
        assert [o.name for o in bpy.context.selected_objects] == ["instance_3"]

        # backend errors are reports
        fb.query_answer = lambda body: (400, {"detail": "pixel (96, 1) is outside view 'v' (96x72)"})
        with pytest.raises(RuntimeError, match=r"400 to POST /query: pixel \(96, 1\) is outside"):
            click(centroids["2"])
        fb.query_answer = lambda body: (403, {"detail": f"run folder {body['run']!r} is outside the data roots"})
        with pytest.raises(RuntimeError, match="403 to POST /query: run folder .* is outside the data roots"):
            click(centroids["2"])
        bpy.context.scene.instascene.run_dir = str(tmp_path / "elsewhere")
        with pytest.raises(RuntimeError, match="run folder not found"):
            click(centroids["2"])
    bpy.context.scene.instascene.run_dir = str(run)
    with pytest.raises(RuntimeError, match="cannot reach the backend"):
        click(centroids["2"])


def test_drain_applies_messages_directly():
    from instascene_blender.blender import jobs

    st = bpy.context.window_manager.instascene
    jobs.MANAGER.queue.put({"type": "submitted", "id": "j9", "kind": "complete"})
    jobs.MANAGER.queue.put({"type": "job", "id": "j9", "state": "running", "progress": 0.25, "stage": "mesh",
                            "message": "object 1 of 4", "run": ""})
    assert jobs.drain() == 2
    assert (st.job_state, st.progress, st.stage, st.message) == ("running", 0.25, "mesh", "object 1 of 4")
    assert jobs.progress_text(st) == "mesh 25%"  # no estimate from the backend yet
    jobs.MANAGER.queue.put({"type": "job", "id": "j9", "state": "running", "progress": 0.5, "stage": "mesh",
                            "message": "object 2 of 4", "run": "", "seconds_left": 65.4})
    jobs.drain()
    assert jobs.progress_text(st) == "mesh 50%, about 1 min 05 s left"
    jobs.MANAGER.queue.put({"type": "job", "id": "j9", "state": "failed", "progress": 0.25, "stage": "mesh",
                            "message": "out of memory", "run": ""})
    jobs.MANAGER.queue.put({"type": "job", "id": "old", "state": "done", "progress": 1, "stage": "", "message": "",
                            "run": ""})
    jobs.drain()
    assert st.job_state == "failed" and st.last_error == "out of memory"
    jobs.MANAGER.queue.put({"type": "error", "message": "cannot reach the backend"})
    jobs.drain()
    assert st.last_error == "cannot reach the backend"
    # the panel draws in every state without errors
    panel_draw_smoke()


def panel_draw_smoke():
    """Call the panel's draw() with a stand-in layout (no UI in background mode)."""
    from instascene_blender.panel import VIEW3D_PT_instascene

    class Layout:
        def __getattr__(self, name):
            return lambda *a, **k: self

        def operator(self, *a, **k):
            return type("Op", (), {})()

    class Ctx:
        window_manager = bpy.context.window_manager
        scene = bpy.context.scene

    VIEW3D_PT_instascene.draw(type("P", (), {"layout": Layout()})(), Ctx())


class _RecordingLayout:
    """A stand-in UI layout that records, per operator drawn, whether its row was enabled,
    and every label and property text."""

    def __init__(self, log=None, parent=None):
        self.log = log if log is not None else {"operators": [], "labels": [], "props": []}
        self.parent, self.enabled = parent, True

    def _on(self):
        return self.enabled and (self.parent is None or self.parent._on())

    def row(self, *a, **k):
        return _RecordingLayout(self.log, self)

    column = box = row

    def operator(self, idname, text=None, **k):
        self.log["operators"].append((idname, text, self._on()))
        return type("Op", (), {})()

    def label(self, text="", **k):
        self.log["labels"].append(text)

    def prop(self, data, name, text=None, **k):
        self.log["props"].append((name, text))

    def __getattr__(self, name):
        return lambda *a, **k: None


def draw_panel() -> dict:
    from instascene_blender.panel import VIEW3D_PT_instascene

    class Ctx:
        window_manager = bpy.context.window_manager
        scene = bpy.context.scene

    layout = _RecordingLayout()
    VIEW3D_PT_instascene.draw(type("P", (), {"layout": layout})(), Ctx())
    return layout.log


def test_segment_waits_for_a_scene_and_fields_say_what_they_are(tmp_path, monkeypatch):
    from instascene_blender.blender import jobs

    monkeypatch.setattr(jobs, "unavailable", lambda context: {})
    bpy.context.scene.instascene.scene_path = ""
    bpy.context.scene.instascene.run_dir = ""
    log = draw_panel()
    enabled = {op: on for op, _, on in log["operators"]}
    assert enabled["instascene.segment"] is False and enabled["instascene.run"] is False
    assert enabled["instascene.complete"] is False  # no scene and no run folder yet
    assert enabled["instascene.import_scene"] is True
    assert any("Import a scene first" in t for t in log["labels"])
    assert ("scene_path", "Scene") in log["props"] and ("run_dir", "Run") in log["props"]
    bpy.context.scene.instascene.scene_path = str(make_scene(tmp_path / "s", n=20)[0])
    enabled = {op: on for op, _, on in draw_panel()["operators"]}
    assert enabled["instascene.segment"] is True and enabled["instascene.run"] is True


def test_materialize_again_keeps_the_artists_moves_and_its_own_name(tmp_path):
    from mathutils import Matrix

    bpy.data.collections.new("run_k")  # e.g. the imported scene's collection of the same name
    run = make_run(tmp_path / "run_k")
    assert bpy.ops.instascene.materialize(run_dir=str(run)) == {"FINISHED"}
    assert "run_k objects" in bpy.data.collections and "run_k.001" not in bpy.data.collections
    obj = bpy.data.objects["instance_2"]
    moved = Matrix.Translation((0.3, -0.2, 0.1)) @ obj.matrix_world @ Matrix.Rotation(0.5, 4, "Z")
    obj.matrix_world = moved
    assert bpy.ops.instascene.materialize(run_dir=str(run)) == {"FINISHED"}
    again = bpy.data.objects["instance_2"]
    assert np.allclose(np.array(again.matrix_world), np.array(moved), atol=1e-5)
    assert np.allclose(bpy.data.objects["instance_3"].matrix_world.translation,
                       run_folder_centroid(run, "3"), atol=1e-5)  # an object not moved stays put
    assert bpy.ops.instascene.materialize(run_dir=str(run), keep_moves=False) == {"FINISHED"}
    assert np.allclose(bpy.data.objects["instance_2"].matrix_world.translation, run_folder_centroid(run, "2"),
                       atol=1e-5)


def run_folder_centroid(run, iid: str):
    return next(r["centroid"] for r in json.loads((run / "instances.json").read_text()) if str(r["id"]) == iid)


def test_without_numpy_the_panel_and_preferences_say_why(monkeypatch):
    """Some distribution builds of Blender lack numpy: enabling the add-on shows what to do."""
    instascene_blender.unregister()
    monkeypatch.setattr(instascene_blender, "_numpy_available", lambda: False)
    try:
        instascene_blender.register()
        assert not hasattr(bpy.types, "INSTASCENE_OT_segment") and "segment" not in dir(bpy.ops.instascene)
        from instascene_blender import missing

        for cls in missing.CLASSES:
            assert cls.is_registered
            layout = _RecordingLayout()
            cls.draw(type("P", (), {"layout": layout})(), bpy.context)
            text = " ".join(layout.log["labels"])
            assert "no numpy" in text and "apt install python3-numpy" in text and "official build" in text
    finally:
        instascene_blender.unregister()
        monkeypatch.undo()
        instascene_blender.register()
    assert hasattr(bpy.types, "INSTASCENE_OT_segment")


def test_picking_cameras_json_in_the_browser_imports_its_folder(tmp_path):
    """The import browser shows *.json too; picking a scene's cameras.json imports the scene folder."""
    from instascene_blender.operators import INSTASCENE_OT_import_scene

    assert "*.json" in INSTASCENE_OT_import_scene.__annotations__["filter_glob"].keywords["default"]
    folder, splats, cams = make_scene(tmp_path / "scene", n=40, cameras="json")
    assert bpy.ops.instascene.import_scene(filepath=str(folder / "cameras.json")) == {"FINISHED"}
    assert bpy.context.scene.instascene.scene_path == str(folder)
    assert sum(o.type == "CAMERA" for o in bpy.data.objects) == len(cams)
