"""The demo's Blender half (instascene_blender/demo.py) in headless bpy: a tiny run folder is
materialized into a .blend and rendered before/after with Cycles on the CPU.

bpy state is process-global and tests/test_addon_blender.py registers the add-on in a module
fixture: these tests register it only when it is not registered, unregister what they
registered, and start from read_factory_settings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

bpy = pytest.importorskip("bpy")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from test_addon_io import INSTANCE_CENTERS, make_run, make_scene, write_mesh  # noqa: E402

import instascene_blender  # noqa: E402
from instascene_blender import demo  # noqa: E402

W, H = 64, 48


def _registered() -> bool:
    return "materialize" in dir(bpy.ops.instascene)


@pytest.fixture(autouse=True)
def addon_state():
    was = _registered()
    bpy.ops.wm.read_factory_settings(use_empty=True)
    yield
    bpy.ops.wm.read_factory_settings(use_empty=True)
    if _registered() and not was:
        instascene_blender.unregister()


def _tiny_run(tmp_path: Path) -> tuple[Path, Path]:
    scene, _, _ = make_scene(tmp_path / "scene", n=150, cameras="colmap")
    run = make_run(tmp_path / "run", mesh_for=(1, 2, 3), scene=scene)
    for iid, c in INSTANCE_CENTERS.items():  # larger coloured tetrahedra than make_run's, centred
        write_mesh(run / "instances" / str(iid) / "mesh.ply", np.asarray(c) - 0.25, size=0.7)
    return scene, run


def _load_png(path: Path) -> np.ndarray:
    img = bpy.data.images.load(str(path), check_existing=False)
    try:
        w, h = img.size
        px = np.empty(w * h * img.channels, np.float32)
        img.pixels.foreach_get(px)
        return px.reshape(h, w, img.channels)[:, :, :3].copy()
    finally:
        bpy.data.images.remove(img)


def test_build_demo_blend_and_picture(tmp_path):
    scene, run = _tiny_run(tmp_path)
    blend, png = tmp_path / "out" / "demo.blend", tmp_path / "out" / "demo.png"
    res = demo.build_demo(scene, run, blend, png, samples=2, size=(W, H), spread=1.6)

    assert res["blend"] == str(blend) and res["picture"] == str(png)
    assert res["instances"] == ["instance_1", "instance_2", "instance_3"]
    assert res["objects"] == 4 and res["meshes"] == 3 and res["background"] == "background"
    assert res["picture_size"] == [2 * W, H]
    assert res["render_seconds"]["total"] > 0
    assert blend.is_file() and png.is_file()
    assert sorted(p.name for p in blend.parent.iterdir()) == ["demo.blend", "demo.png"]  # no temporaries

    pic = _load_png(png)
    assert pic.shape == (H, 2 * W, 3)
    before, after = pic[:, :W - 1], pic[:, W + 1:]  # without the divider
    assert before.std() > 0.015 and after.std() > 0.015  # neither half is flat
    changed = np.abs(before[:, :after.shape[1]] - after[:, :before.shape[1]]).max(axis=2) > 0.1
    assert changed.mean() > 0.01, changed.mean()  # the objects moved

    bpy.ops.wm.open_mainfile(filepath=str(blend))
    objs = bpy.data.objects
    for iid in INSTANCE_CENTERS:
        obj = objs.get(f"instance_{iid}")
        assert obj is not None and obj.type == "MESH" and str(obj["instascene_instance"]) == str(iid)
        assert not obj.hide_render
        assert all(c.hide_render for c in obj.children)  # the completed splats: viewport only
    assert objs.get("background") is not None and objs["background"].get("instascene_background")
    cams = [o for o in objs if o.type == "CAMERA"]
    assert len(cams) == 3 + 1  # the scene's three cameras and the demo camera
    assert bpy.context.scene.camera.name == demo.DEMO_CAMERA
    assert bpy.context.scene.render.engine == "CYCLES"
    # saved in the original layout: each instance at its centroid
    for iid in INSTANCE_CENTERS:
        rec = json.loads((run / "instances.json").read_text())["instances"][iid - 1]
        assert np.allclose(tuple(objs[f"instance_{iid}"].location), rec["centroid"], atol=1e-5)


def test_spread_offsets_and_up_axis():
    up = np.array([0.0, 0.0, 1.0])
    loc = np.array([[1.0, 0.0, 0.3], [-1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, -2.0, 0.0]])
    moves = demo.spread_offsets(loc, up, 1.5)
    assert np.allclose(moves[:, 2], 0.0)  # along the support plane
    assert np.allclose(moves[:, :2], 1.5 * loc[:, :2])  # spread x the distance from the centroid
    pic = demo.compose(np.zeros((4, 6, 3), np.uint8), np.full((4, 6, 3), 9, np.uint8))
    assert pic.shape == (4, 12, 3) and (pic[:, 5:7] == 255).all() and (pic[:, :5] == 0).all()


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "instascene_blender.demo", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_errors_are_one_line(tmp_path):
    scene, run = _tiny_run(tmp_path)
    cases = [
        (tmp_path / "missing", run, "scene folder not found"),
        (scene, tmp_path / "missing_run", "run folder not found"),
        (scene, scene, "not a run folder"),
    ]
    for s, r, words in cases:
        p = _cli(s, r, tmp_path / "x.blend", tmp_path / "x.png")
        assert p.returncode == 2, p.stderr
        assert p.stdout == ""
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in p.stderr and words in lines[0], p.stderr
    assert not (tmp_path / "x.blend").exists() and not (tmp_path / "x.png").exists()


def test_cli_prints_one_json_line(tmp_path):
    scene, run = _tiny_run(tmp_path)
    p = _cli(scene, run, tmp_path / "d.blend", tmp_path / "d.png", "--samples", "1", "--size", "32x24")
    assert p.returncode == 0, p.stderr[-2000:]
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1, p.stdout
    res = json.loads(lines[0])
    assert res["picture_size"] == [64, 24] and os.path.isfile(res["blend"]) and os.path.isfile(res["picture"])
