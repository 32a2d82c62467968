"""`instascene eval layout` (issue 18, the measuring part): coverage of the support surface by
the background surfels and PSNR of the layout with every object moved aside, on tiny scenes
built here (a built-in-style disc table with gt/background.ply, and a practice-style slab
rendered with pybullet)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from instascene.cli import main
from instascene.errors import InstaSceneError
from instascene.eval.layout import Support, coverage, evaluate_layout, support_alpha, support_of
from instascene.eval.segmentation import load_gt
from instascene.io.cameras import ring_cameras
from instascene.io.colmap import write_colmap
from instascene.io.masks import write_label_map
from instascene.io.ply import write_ply
from instascene.io.rotations import rotmat_to_quat
from instascene.io.splats import SH_C0, Splats
from instascene.synth.surfels import tangent_frames


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny renders: a second torch thread only adds synchronisation on a shared 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _surfels(means, normals, sigma, opacity, rgb=(0.5, 0.5, 0.5)) -> Splats:
    means = np.asarray(means, np.float64)
    n = len(means)
    rgb = np.broadcast_to(np.asarray(rgb, np.float64), (n, 3))
    return Splats(
        means=means.astype(np.float32),
        quats=rotmat_to_quat(tangent_frames(np.asarray(normals, np.float64))).astype(np.float32),
        log_scales=np.full((n, 2), math.log(sigma), np.float32),
        opacity_logits=np.full(n, math.log(opacity / (1 - opacity)), np.float32),
        sh_dc=((rgb - 0.5) / SH_C0).astype(np.float32),
        sh_rest=np.zeros((n, 0, 3), np.float32),
    )


def _flat(xy, sigma, opacity, z=0.0, rgb=(0.5, 0.5, 0.5)) -> Splats:
    xy = np.asarray(xy, np.float64)
    return _surfels(np.c_[xy, np.full(len(xy), z)], np.tile([0.0, 0.0, 1.0], (len(xy), 1)), sigma, opacity, rgb)


def _concat(parts) -> Splats:
    return Splats(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                    ("means", "quats", "log_scales", "opacity_logits", "sh_dc", "sh_rest")))


def _lattice(half, pitch, offset=(0.0, 0.0)):
    g = np.arange(-half + pitch / 2, half, pitch)
    return np.stack(np.meshgrid(g, g), -1).reshape(-1, 2) + np.asarray(offset)


def _brute_alpha(points, means, sigma, opacity):
    """The definition, written out for flat surfels: a = 1 - Π(1 - o exp(-d²/2σ²)) over d <= 3σ."""
    d2 = ((points[:, None, :] - means[None, :, :2]) ** 2).sum(-1)
    g = np.where(d2 <= 9 * sigma * sigma, opacity * np.exp(-d2 / (2 * sigma * sigma)), 0.0)
    return 1.0 - np.prod(1.0 - g, axis=1)


SQUARE = Support("square", np.zeros(3), 0.1, "test")


# ------------------------------------------------------------------ coverage


def test_one_surfel_covers_its_projected_gaussian():
    sigma, o = 0.004, 0.6
    one = _flat([[0.0123, -0.0211]], sigma, o)
    alpha, inside, s = support_alpha(one, SQUARE, 0.0005)
    assert inside.all() and s == pytest.approx(0.0005)
    n = alpha.shape[0]
    c = -0.1 + (np.arange(n) + 0.5) * s
    xy = np.stack(np.meshgrid(c, c), -1).reshape(-1, 2)
    np.testing.assert_allclose(alpha.reshape(-1), _brute_alpha(xy, one.means.astype(np.float64), sigma, o), atol=1e-5)
    # its integral: o · 2π s0 s1 · |n_z| (inside 3 σ: 1 - e^-4.5 of the mass)
    flat_mass = alpha.sum() * s * s
    assert flat_mass == pytest.approx(o * 2 * math.pi * sigma**2 * (1 - math.exp(-4.5)), rel=1e-3)
    t = math.radians(60.0)  # a tilted surfel covers its projection ...
    tilted = _surfels([[0.0, 0.0, 0.0]], [[0.0, math.sin(t), math.cos(t)]], 0.001, o)
    a, _, _ = support_alpha(tilted, SQUARE, 0.0001)
    assert a.sum() * 1e-8 == pytest.approx(o * 2 * math.pi * 1e-6 * math.cos(t) * (1 - math.exp(-4.5)), rel=0.02)
    upright = _surfels([[0.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]], 0.001, o)  # ... a vertical one nothing
    assert support_alpha(upright, SQUARE, 0.0001)[0].max() == 0.0
    above = _flat([[0.0, 0.0]], sigma, o, z=0.02)  # off the plane: no cover
    assert support_alpha(above, SQUARE)[0].max() == 0.0


def test_isolated_surfels_cover_exactly_their_half_opacity_discs():
    sigma = 0.004  # o ≈ 1: covered where exp(-d²/2σ²) >= 1/2, a disc of radius σ √(2 ln 2); no overlaps
    xy = _lattice(0.1, 0.03, offset=(0.0011, -0.0007))
    r = coverage(_flat(xy, sigma, 0.99999), SQUARE, 0.0004)
    expected = len(xy) * math.pi * 2 * math.log(2) * sigma**2 / 0.04
    assert r["samples"] == 500 * 500
    assert r["fraction"] == pytest.approx(expected, rel=0.03)


def test_a_square_hole_is_measured_and_filling_it_restores_full_coverage():
    pitch, sigma, o = 0.0025, 0.002, 0.95
    xy = _lattice(0.1, pitch)
    hole = (np.abs(xy) < 0.03).all(1)
    full, holed = _flat(xy, sigma, o), _flat(xy[~hole], sigma, o)
    assert coverage(full, SQUARE)["fraction"] == 1.0
    r = coverage(holed, SQUARE)
    assert r["spacing"] == pytest.approx(0.002) and r["samples"] == 100 * 100
    # the uncovered square: where the alpha profile across the hole (the definition, brute
    # force over the surfels near that line) stays below 1/2
    line = np.c_[np.linspace(-0.05, 0.05, 4001), np.zeros(4001)]
    near = xy[~hole][np.abs(xy[~hole][:, 1]) < 4 * sigma]
    inside = _brute_alpha(line, near, sigma, o) < 0.5
    width = inside.sum() * (line[1, 0] - line[0, 0])
    assert 0.05 < width < 0.06
    expected = 1.0 - width**2 / 0.04
    assert r["fraction"] < 0.95
    assert r["fraction"] == pytest.approx(expected, abs=0.004)
    # filling the hole with other surfels (a completion) restores the coverage
    fill = _flat(xy[hole] + 0.0007, sigma, o)
    assert coverage(_concat([holed, fill]), SQUARE)["fraction"] == 1.0
    # the default grid: max(2 mm, extent / 400)
    assert Support("disc", np.zeros(3), 1.0, "test").grid()[2] == pytest.approx(2.0 / 400)


# ------------------------------------------------------------------ a built-in-style scene

CENTER, RADIUS, PITCH = np.array([0.01, -0.02, 0.0]), 0.12, 0.005
BOX = 0.025  # half side of the box standing on the table at CENTER
W, H = 64, 48


def _table(rng):
    g = np.arange(-RADIUS, RADIUS + 1e-9, PITCH)
    xy = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    xy = xy + rng.uniform(-0.3, 0.3, xy.shape) * PITCH
    xy = xy[np.linalg.norm(xy, axis=1) <= RADIUS] + CENTER[:2]
    rgb = np.where(((xy // 0.03).sum(1) % 2 == 0)[:, None], [0.8, 0.6, 0.4], [0.3, 0.2, 0.1])  # a checker
    return xy, rgb


def _cameras(prefix):
    cams = ring_cameras(CENTER, 0.45, 3, 50.0, W, H, fov_deg=50.0, prefix=prefix)
    for cam in cams:
        cam.image_name = f"{cam.name}.png"
    return cams


def _scene_files(scene, splats, cams, images=None):
    write_ply(scene / "point_cloud.ply", splats)
    (scene / "sparse" / "0").mkdir(parents=True)
    write_colmap(scene / "sparse" / "0", cams)
    (scene / "images").mkdir()
    for i, cam in enumerate(cams):
        img = images[i] if images is not None else np.full((H, W, 3), 255, np.uint8)
        Image.fromarray(img).save(scene / "images" / f"{cam.name}.png")


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
    """SCENE with a disc table (support recorded, gt/background.ply = every table surfel) and a
    box on it; RUN: background.ply = the table seen (no surfel under the box) and
    background_completed.ply = those, then the missing ones."""
    root = tmp_path_factory.mktemp("layoutworld")
    scene, gt, run = root / "scene", root / "scene" / "gt", root / "run"
    rng = np.random.default_rng(0)
    xy, rgb = _table(rng)
    table = _flat(xy, 0.9 * PITCH, 0.97, rgb=rgb)
    under = (np.abs(xy - CENTER[:2]) < BOX).all(1)
    top = _flat(_lattice(BOX, 0.004) + CENTER[:2], 0.004, 0.97, z=0.05, rgb=(0.1, 0.3, 0.9))
    seen = table.subset(~under)
    _scene_files(scene, _concat([seen, top]), _cameras("frame"))
    gt.mkdir()
    np.save(gt / "gaussian_instances.npy", np.r_[np.full(len(seen), -1), np.zeros(len(top))].astype(np.int32))
    support = {"kind": "disc", "center": CENTER.tolist(), "radius": RADIUS}
    (gt / "instances.json").write_text(json.dumps({"objects": [{"id": 0, "name": "box"}], "background_id": -1,
                                                   "support": support}))
    full = table.subset(np.r_[np.flatnonzero(~under), np.flatnonzero(under)])
    full.extra["seen"] = np.r_[np.ones((~under).sum()), np.zeros(under.sum())].astype(np.float32)
    write_ply(gt / "background.ply", full)
    run.mkdir()
    write_ply(run / "background.ply", seen)
    write_ply(run / "background_completed.ply", _concat([seen, table.subset(under)]))
    return scene, gt, run, under


def test_builtin_layout_observed_vs_completed(builtin):
    scene, gt, run, under = builtin
    r = evaluate_layout(run, gt, device="cpu")
    json.dumps(r, allow_nan=False)
    assert r["support"] == {"kind": "disc", "center": CENTER.tolist(), "radius": RADIUS, "z": 0.0,
                            "source": "gt/instances.json"}
    hole = (2 * BOX) ** 2 / (math.pi * RADIUS**2)  # share of the disc under the box
    cov = r["coverage"]
    assert cov["completed"] > 0.99
    assert 0.5 * hole < cov["completed"] - cov["observed"] < hole  # the surfels at its rim reach into it
    p = r["psnr"]
    assert r["views"] == 3 and p["reference"] == "gt/background.ply" and p["pixels"] > 1000
    assert p["completed"] > 60  # the same surfels as the reference
    assert p["observed"] < p["completed"] - 20  # the hole shows the void
    assert "psnr_note" not in r
    # no completion yet: completed is null; the stride picks every second view
    only = run.parent / "run_observed"
    only.mkdir()
    (only / "background.ply").write_bytes((run / "background.ply").read_bytes())
    r2 = evaluate_layout(only, gt, device="cpu", view_stride=2)
    assert r2["coverage"]["completed"] is None and r2["psnr"]["completed"] is None
    assert r2["coverage"]["observed"] == cov["observed"] and r2["views"] == 2


def test_support_estimated_for_scenes_made_before_it_was_recorded(builtin, tmp_path):
    scene, gt, run, _ = builtin
    import shutil

    old = tmp_path / "scene"
    shutil.copytree(scene, old)
    data = json.loads((old / "gt/instances.json").read_text())
    del data["support"]
    (old / "gt/instances.json").write_text(json.dumps(data))
    (old / "gt/background.ply").unlink()
    sup = support_of(load_gt(old / "gt"))
    assert sup.source == "estimated" and sup.kind == "disc"
    np.testing.assert_allclose(sup.center, CENTER, atol=0.003)
    assert sup.size == pytest.approx(RADIUS, abs=0.003)
    r = evaluate_layout(run, old / "gt", device="cpu")
    assert r["support"]["source"] == "estimated" and "estimated" in r["support_note"]
    assert r["coverage"]["completed"] > 0.98
    assert r["psnr"]["observed"] is None and "gt/background.ply" in r["psnr_note"]


# ------------------------------------------------------------------ a practice-style scene

SLAB = {"id": 0, "name": "table", "source_obj": "table/table.obj", "half_extent": 0.1, "thickness": 0.02,
        "top_z": 0.0}
LIGHT = {"light_direction": [0.45, -0.35, 1.0], "light_ambient": 0.55, "light_diffuse": 0.55,
         "light_specular": 0.05, "shadow": 1, "near": 0.02, "far": 5.0}


def _practice(root, images_like_reference: bool):
    from instascene.eval.layout import _PybulletReference

    scene, gt = root / "scene", root / "scene" / "gt"
    cams = ring_cameras(np.zeros(3), 0.35, 2, 45.0, W, H, fov_deg=50.0, prefix="view")
    for i, cam in enumerate(cams):
        cam.name, cam.image_name = f"view_{i:03d}", f"view_{i:03d}.png"
    sup = Support("square", np.zeros(3), SLAB["half_extent"], "test")
    if images_like_reference:
        ref = _PybulletReference(SLAB, LIGHT)
        try:
            images = [(ref.render(cam, sup)[0] * 255).round().astype(np.uint8) for cam in cams]
        finally:
            ref.close()
    else:
        images = [np.full((H, W, 3), 90, np.uint8) for _ in cams]
    table = _flat(_lattice(0.1, 0.004), 0.0035, 0.95, rgb=(0.85, 0.75, 0.6))
    _scene_files(scene, table, cams, images)
    gt.mkdir()
    np.save(gt / "gaussian_instance.npy", np.zeros(len(table), np.int32))
    (gt / "instances.json").write_text(json.dumps({"background": SLAB, "objects": [{"id": 1, "name": "x"}]}))
    (gt / "scene.json").write_text(json.dumps({"scene_params": LIGHT}))
    for cam in cams:
        write_label_map(gt / "masks" / f"{cam.name}.png", np.zeros((H, W), np.int32))
    run = root / "run"
    run.mkdir()
    write_ply(run / "background.ply", table)
    return gt, run


def test_practice_psnr_only_with_a_reference_that_reproduces_the_images(tmp_path):
    gt, run = _practice(tmp_path / "good", images_like_reference=True)
    r = evaluate_layout(run, gt, device="cpu")
    assert r["support"]["kind"] == "square" and r["support"]["half_extent"] == 0.1
    assert r["coverage"]["observed"] == 1.0
    p = r["psnr"]
    assert p["reference"] == "pybullet TinyRenderer" and p["reference_check"]["psnr"] > 40
    assert p["observed"] is not None and 10 < p["observed"] < 60 and r["views"] == 2
    gt, run = _practice(tmp_path / "bad", images_like_reference=False)
    r = evaluate_layout(run, gt, device="cpu")
    assert r["psnr"]["observed"] is None and r["psnr"]["reference_check"]["psnr"] < 28
    assert "does not reproduce" in r["psnr_note"]
    json.dumps(r, allow_nan=False)


# ------------------------------------------------------------------ command line and errors


def test_cli_prints_json_and_fails_cleanly(builtin, tmp_path, capsys):
    _, gt, run, _ = builtin
    assert main(["eval", "layout", str(run), "--gt", str(gt), "--no-render"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"support", "coverage", "psnr", "views"}
    assert out["coverage"]["completed"] > out["coverage"]["observed"] and out["psnr"]["observed"] is None

    empty = tmp_path / "norun"
    empty.mkdir()
    assert main(["eval", "layout", str(empty), "--gt", str(gt)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("instascene eval: error:") and "background.ply" in err
    assert main(["eval", "layout", str(tmp_path / "missing"), "--gt", str(gt)]) == 2
    assert "run folder not found" in capsys.readouterr().err
    (empty / "background.ply").write_text("not a ply\n")
    assert main(["eval", "layout", str(empty), "--gt", str(gt)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(empty / "background.ply") in err
    assert main(["eval", "layout", str(run), "--gt", str(tmp_path)]) == 2
    assert "instances.json" in capsys.readouterr().err
    assert main(["eval", "layout", str(run), "--gt", str(gt), "--view-stride", "0"]) == 2
    assert "--view-stride" in capsys.readouterr().err
    assert main(["eval", "layout", str(run), "--gt", str(gt), "--spacing", "-1"]) == 2
    assert "--spacing" in capsys.readouterr().err
    assert main(["eval", "layout", str(run), "--gt", str(gt), "--spacing", "1e-6", "--no-render"]) == 2
    assert "larger spacing" in capsys.readouterr().err
    with pytest.raises(InstaSceneError, match="half_extent|positive"):
        bad = tmp_path / "badgt"
        bad.mkdir()
        (bad / "instances.json").write_text(json.dumps({"objects": [], "support": {"kind": "square",
                                                                                  "center": [0, 0, 0],
                                                                                  "half_extent": -1}}))
        np.save(bad / "gaussian_instances.npy", np.zeros(0, np.int32))
        support_of(load_gt(bad))


def test_cli_stdout_stays_json_when_pybullet_renders_the_reference(tmp_path):
    """pybullet prints its build time on stdout at import; a script reading the JSON must not see it."""
    import subprocess
    import sys

    gt, run = _practice(tmp_path / "good", images_like_reference=True)
    r = subprocess.run([sys.executable, "-m", "instascene", "eval", "layout", str(run), "--gt", str(gt),
                        "--device", "cpu"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["psnr"]["reference"] == "pybullet TinyRenderer"
