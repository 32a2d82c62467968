"""Evaluation harness (issue 3): metrics on analytic shapes, the evaluators end to end on a tiny
scene built here (two spheres on a plane), and `instascene eval`."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import trimesh
from PIL import Image

from instascene.cli import main
from instascene.eval.completion import evaluate_completion
from instascene.eval.metrics import (
    chamfer_l1,
    fscore,
    fscore_curve,
    hungarian_miou,
    psnr,
    sample_surface,
    volume_iou,
)
from instascene.eval.segmentation import evaluate_segmentation
from instascene.io.cameras import ring_cameras
from instascene.io.colmap import write_colmap
from instascene.io.masks import write_label_map
from instascene.io.ply import write_ply
from instascene.io.rotations import rotmat_to_quat
from instascene.io.splats import SH_C0, Splats


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """The renders here are tiny: a second torch thread only adds synchronisation, and on a
    shared 2-core machine it can make them several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ------------------------------------------------------------------ geometry metrics


@pytest.fixture(scope="module")
def sphere_pts():
    s = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    return s, sample_surface(s, 40_000, seed=0), sample_surface(s, 40_000, seed=1)


def test_sample_surface_is_area_weighted_and_deterministic():
    box = trimesh.creation.box(extents=(2.0, 1.0, 1.0))  # faces: 2 of area 1, 4 of area 2
    p = sample_surface(box, 50_000, seed=3)
    assert np.array_equal(p, sample_surface(box, 50_000, seed=3))
    assert np.allclose(np.abs(p).max(axis=0), [1.0, 0.5, 0.5])
    on_x_faces = np.isclose(np.abs(p[:, 0]), 1.0).mean()  # the two 1x1 end faces: 2 / 10 of the area
    assert on_x_faces == pytest.approx(0.2, abs=0.01)
    assert sample_surface((np.zeros((3, 3)), np.array([[0, 1, 2]])), 10).shape == (0, 3)  # no area


def test_faces_buried_inside_the_solid_are_not_ground_truth_surface():
    """Two overlapping boxes stitched into one mesh (as a convex decomposition is): the
    end face of each inside the other, 2 of the 20 units of area, is no surface a camera
    sees. A box with a hollow inside keeps its cavity's walls. Winding numbers: 1 in a
    box, 2 where the boxes overlap, 0 outside (the fast form agrees with the exact one)."""
    from instascene.eval.metrics import _solid_angles, outer_surface, winding_numbers

    a = trimesh.creation.box(extents=(2.0, 1.0, 1.0))
    b = trimesh.creation.box(extents=(2.0, 1.0, 1.0))
    b.apply_translation([1.0, 0.0, 0.0])
    union = trimesh.util.concatenate([a, b])  # x from -1 to 2; overlap 0 < x < 1
    q = np.array([[-0.5, 0, 0], [0.5, 0, 0], [1.5, 0, 0], [3.0, 0, 0], [0.5, 0.2, 0.45]])
    w = winding_numbers(q, union)
    assert np.allclose(w, [1, 2, 1, 0, 2], atol=0.05)
    assert np.allclose(w, _solid_angles(q, np.asarray(union.vertices), np.asarray(union.faces)), atol=0.05)
    pts, buried = outer_surface(union, 20_000)
    assert buried == pytest.approx(0.1, abs=0.01)
    inside_other = (np.isclose(pts[:, 0], 1.0) | np.isclose(pts[:, 0], 0.0)) & (np.abs(pts[:, 1]) < 0.49) & (
        np.abs(pts[:, 2]) < 0.49)
    assert not inside_other.any()
    shell = trimesh.creation.box(extents=(2.0, 2.0, 2.0))
    cavity = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    cavity.invert()
    hollow = trimesh.util.concatenate([shell, cavity])
    pts, buried = outer_surface(hollow, 20_000)
    assert buried == 0.0 and (np.abs(pts).max(axis=1) < 0.51).mean() == pytest.approx(6 / 30, abs=0.01)


def test_splat_discs_are_sampled_by_area():
    """A surfel with 8x the radius gets 64x the points: the score weighs surface, not
    surfels (a cap per surfel made a few big observed discs count less than the many
    small new ones)."""
    from instascene.eval.completion import splat_surface_points
    from instascene.io.splats import Splats

    n = 2
    s = Splats(means=np.array([[0, 0, 0], [1, 0, 0]], np.float32), quats=np.tile([1, 0, 0, 0], (n, 1)).astype(np.float32),
               log_scales=np.log(np.array([[0.01, 0.01], [0.08, 0.08]], np.float32)),
               opacity_logits=np.full(n, 5.0, np.float32), sh_dc=np.zeros((n, 3), np.float32),
               sh_rest=np.zeros((n, 0, 3), np.float32))
    pts = splat_surface_points(s, spacing=0.002)
    small, big = (pts[:, 0] < 0.5).sum(), (pts[:, 0] > 0.5).sum()
    assert big / small == pytest.approx(64, rel=0.05)


def test_chamfer_analytic(sphere_pts):
    _, a, b = sphere_pts
    same = chamfer_l1(a, b)
    assert same.chamfer < 0.01  # sampling noise only (~ half the sample spacing)
    d = 0.1
    bigger = sample_surface(trimesh.creation.icosphere(subdivisions=4, radius=1.0 + d), 40_000, seed=2)
    c = chamfer_l1(bigger, b)
    assert c.chamfer == pytest.approx(d, abs=0.01)
    assert c.accuracy == pytest.approx(d, abs=0.01) and c.completeness == pytest.approx(d, abs=0.01)
    assert math.isinf(chamfer_l1(np.zeros((0, 3)), b).chamfer)


def test_fscore_analytic(sphere_pts):
    _, a, b = sphere_pts
    assert fscore(a, b, 0.05).f == pytest.approx(1.0, abs=1e-3)
    half = a[a[:, 2] > 0]
    tau = 0.1
    p, r, f = fscore(half, b, tau)
    # every predicted point lies on the GT; a GT point at angle phi below the equator is
    # 2 sin(phi/2) from it, so recall = 1/2 + sin(phi0)/2 with 2 sin(phi0/2) = tau
    phi0 = 2 * math.asin(tau / 2)
    assert p == pytest.approx(1.0, abs=1e-3)
    assert r == pytest.approx(0.5 + math.sin(phi0) / 2, abs=0.01)
    assert f == pytest.approx(2 * p * r / (p + r), abs=1e-9)
    curve = fscore_curve(half, b, diag=2 * math.sqrt(3))
    assert [row["fraction"] for row in curve] == [0.005, 0.01, 0.02, 0.05, 0.1]
    assert all(x["recall"] <= y["recall"] for x, y in zip(curve, curve[1:]))


def test_volume_iou_analytic():
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    shifted = box.copy()
    shifted.apply_translation((0.5, 0.0, 0.0))
    assert volume_iou(box, box) == pytest.approx(1.0, abs=0.01)
    assert volume_iou(shifted, box) == pytest.approx(1 / 3, abs=0.03)  # 0.5 / 1.5
    small = trimesh.creation.icosphere(subdivisions=3, radius=0.8)
    big = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    assert volume_iou(small, big) == pytest.approx(0.8**3, abs=0.05)
    # an open surface (the upper half of the sphere) encloses nothing and scores low
    upper = trimesh.Trimesh(big.vertices, big.faces[big.triangles_center[:, 2] > 0])
    assert volume_iou(upper, big) < 0.2


def test_psnr_known_mse():
    a = np.full((8, 8, 3), 0.5)
    b = a + 0.1  # MSE 0.01 -> 20 dB
    assert psnr(a, b) == pytest.approx(20.0)
    mask = np.zeros((8, 8), bool)
    mask[:2] = True
    b2 = a.copy()
    b2[mask] += 0.01  # MSE 1e-4 inside the mask -> 40 dB; outside ignored
    b2[~mask] = 0.0
    assert psnr(a, b2, mask) == pytest.approx(40.0)
    assert psnr(a, b, np.zeros((8, 8), bool)) is None
    assert psnr(a, a) == pytest.approx(100.0)  # MSE floored, finite
    assert psnr(a, np.full_like(a, np.nan)) is None


def test_hungarian_miou_hand_built():
    gt = np.array([-1] * 10 + [0] * 10 + [1] * 20 + [2] * 30)
    r = hungarian_miou(gt, gt)
    assert r.miou == 1.0 and list(r.matched_pred) == [0, 1, 2]
    perm = np.where(gt >= 0, np.array([7, 3, 5])[np.maximum(gt, 0)], -1)  # renamed instances
    r = hungarian_miou(perm, gt)
    assert r.miou == 1.0 and r.pred_to_gt() == {7: 0, 3: 1, 5: 2}
    merged = np.where(gt == 1, 0, gt)  # objects 0 (10) and 1 (20) predicted as one instance
    r = hungarian_miou(merged, gt)
    assert r.miou == pytest.approx((20 / 30 + 0 + 1) / 3)  # the merge matches the larger object
    assert list(r.matched_pred) == [-1, 0, 2]
    swallow = np.where(gt == -1, 0, gt)  # instance 0 also takes the 10 background Gaussians
    assert hungarian_miou(swallow, gt).miou == pytest.approx((10 / 20 + 1 + 1) / 3)
    nothing = np.full_like(gt, -1)
    r = hungarian_miou(nothing, gt)
    assert r.miou == 0.0 and list(r.matched_pred) == [-1, -1, -1]
    assert hungarian_miou(gt, gt, gt_ids=[0, 1, 2, 9]).miou == pytest.approx(3 / 4)  # absent object scores 0


# ------------------------------------------------------------------ a tiny scene with ground truth

SPHERES = [((-0.12, 0.0, 0.1), 0.1), ((0.12, 0.0, 0.1), 0.1)]
PLANE_HALF = 0.4
W, H = 128, 96


def _frames(normals):
    a = np.where(np.abs(normals[:, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]])
    t1 = np.cross(normals, a)
    t1 /= np.linalg.norm(t1, axis=1, keepdims=True)
    t2 = np.cross(normals, t1)
    return rotmat_to_quat(np.stack([t1, t2, normals], axis=2)).astype(np.float32)


def _surfels(means, normals, sigma, rgb, seen=None) -> Splats:
    n = len(means)
    s = Splats(
        means=means.astype(np.float32),
        quats=_frames(normals),
        log_scales=np.full((n, 2), math.log(sigma), np.float32),
        opacity_logits=np.full(n, 4.0, np.float32),
        sh_dc=np.tile((np.asarray(rgb, np.float32) - 0.5) / SH_C0, (n, 1)),
        sh_rest=np.zeros((n, 0, 3), np.float32),
    )
    if seen is not None:
        s.extra["seen"] = seen.astype(np.uint8)
    return s


def _concat(parts) -> Splats:
    return Splats(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                    ("means", "quats", "log_scales", "opacity_logits", "sh_dc", "sh_rest")))


def _label_map(cam) -> np.ndarray:
    """The true instance map of a view by ray casting the analytic geometry (0 bg, k + 1 object k)."""
    j, i = np.meshgrid(np.arange(cam.width) + 0.5, np.arange(cam.height) + 0.5)
    pix = np.stack([j, i, np.ones_like(j)], -1).reshape(-1, 3)
    R = cam.world_to_camera[:3, :3]
    d = (pix @ np.linalg.inv(cam.K).T) @ R  # world directions
    o = cam.center
    best = np.full(len(d), np.inf)
    label = np.zeros(len(d), np.int64)
    tz = -o[2] / d[:, 2]
    hit = (tz > 0) & (np.abs(o[0] + tz * d[:, 0]) < PLANE_HALF) & (np.abs(o[1] + tz * d[:, 1]) < PLANE_HALF)
    best[hit] = tz[hit]
    for k, (c, r) in enumerate(SPHERES):
        oc = o - np.asarray(c)
        a, b, cc = (d * d).sum(1), (d @ oc), oc @ oc - r * r
        disc = b * b - a * cc
        t = (-b - np.sqrt(np.maximum(disc, 0))) / a
        ok = (disc > 0) & (t > 0) & (t < best)
        best[ok], label[ok] = t[ok], k + 1
    return label.reshape(cam.height, cam.width)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """SCENE (point_cloud.ply, images/, sparse/0/, gt/) and RUN with perfect labels:
    instance 5 = object 0 with completed.ply = its complete surfels; instance 9 = object 1
    with only observed.ply."""
    from surfel_splats import sphere_directions

    root = tmp_path_factory.mktemp("evalworld")
    scene, gt, run = root / "scene", root / "scene" / "gt", root / "run"
    dirs = sphere_directions(700)
    objects, scene_parts, gi, objs_meta = [], [], [], []
    colours = [(0.9, 0.2, 0.2), (0.2, 0.8, 0.3)]
    for k, (c, r) in enumerate(SPHERES):
        seen = dirs[:, 2] > -0.5  # the bottom (a quarter of the surface) is never seen
        full = _surfels(np.asarray(c) + r * dirs, dirs, 0.009, colours[k], seen)
        objects.append(full)
        scene_parts.append(full.subset(seen))
        gi.append(np.full(int(seen.sum()), k))
        m = trimesh.creation.icosphere(subdivisions=3, radius=r)
        m.apply_translation(c)
        (gt / "meshes").mkdir(parents=True, exist_ok=True)
        m.export(gt / "meshes" / f"{k}.ply")
        write_ply(gt / "objects" / f"{k}.ply", full)
        objs_meta.append({"id": k, "name": f"sphere{k}", "watertight": True, "unseen_fraction": 0.25,
                          "bbox_min": list(np.asarray(c) - r), "bbox_max": list(np.asarray(c) + r), "centroid": list(c)})
    g = np.linspace(-PLANE_HALF + 0.017, PLANE_HALF - 0.017, 24)
    xy = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    plane = _surfels(np.c_[xy, np.zeros(len(xy))], np.tile([0.0, 0, 1], (len(xy), 1)), 0.02, (0.6, 0.6, 0.6))
    scene_parts.append(plane)
    gi.append(np.full(len(plane), -1))
    splats, gi = _concat(scene_parts), np.concatenate(gi).astype(np.int32)
    write_ply(scene / "point_cloud.ply", splats)

    cams = ring_cameras((0, 0, 0.05), 0.9, 6, 35.0, W, H, fov_deg=50.0, prefix="view")
    for cam in cams:
        cam.image_name = f"{cam.name}.png"
    (scene / "sparse" / "0").mkdir(parents=True)
    write_colmap(scene / "sparse" / "0", cams)
    (scene / "images").mkdir()
    for cam in cams:
        Image.new("RGB", (W, H), (255, 255, 255)).save(scene / "images" / f"{cam.name}.png")
        write_label_map(gt / "views" / f"{cam.name}.png", _label_map(cam))
    (gt / "instances.json").write_text(json.dumps({"objects": objs_meta}))
    np.save(gt / "gaussian_instances.npy", gi)

    ids = {0: 5, 1: 9}
    labels = np.array([ids.get(int(x), -1) for x in gi], dtype=np.int32)
    run.mkdir()
    np.save(run / "labels.npy", labels)
    (run / "instances.json").write_text(json.dumps({"instances": [{"id": 5}, {"id": 9}]}))
    for k, p in ids.items():
        write_ply(run / "instances" / str(p) / "observed.ply", splats.subset(labels == p))
    write_ply(run / "instances" / "5" / "completed.ply", objects[0])
    return scene, gt, run


def test_evaluate_segmentation_perfect_labels(world):
    _, gt, run = world
    r = evaluate_segmentation(run, gt)
    assert r["miou_3d"] == 1.0
    assert r["views"] == 6 and r["objects"] == 2
    assert r["miou_2d"] > 0.8  # not 1: splat silhouettes are about a pixel wider than the true ones
    assert {o["pred_id"] for o in r["per_object"]} == {5, 9}
    assert all(o["iou_2d"] > 0.8 for o in r["per_object"])
    json.dumps(r, allow_nan=False)


def test_evaluate_segmentation_penalises_merge(world, tmp_path):
    _, gt, run = world
    bad = tmp_path / "run"
    shutil.copytree(run, bad)
    labels = np.load(run / "labels.npy")
    np.save(bad / "labels.npy", np.where(labels == 9, 5, labels))
    r = evaluate_segmentation(bad, gt)
    assert r["miou_3d"] == pytest.approx(0.25, abs=0.01)  # equal objects merged: IoU 1/2 for one, 0 for the other
    assert r["miou_2d"] < 0.4


def test_evaluate_completion(world):
    _, gt, run = world
    r = evaluate_completion(run, gt, views=4, size=48, samples=20_000)
    json.dumps(r, allow_nan=False)
    o0, o1 = r["objects"]
    assert o0["pred_id"] == 5 and o1["pred_id"] == 9
    assert o0["needs_completion"] and o1["needs_completion"]
    c, b = o0["completed"], o0["observed"]
    assert c["source"] == "completed.ply" and b["source"] == "observed.ply"
    assert c["chamfer"] < b["chamfer"] and c["fscore_curve"][-1]["f"] > b["fscore_curve"][-1]["f"]
    assert c["volume_iou"] > 0.8 > 0.3 > b["volume_iou"]  # the open observed surface encloses nothing
    assert c["psnr_known"] > 60 and c["psnr_unknown"] > 60  # the GT surfels themselves
    assert b["psnr_known"] > 20 and b["psnr_unknown"] < b["psnr_known"] - 10
    assert o0["render"]["pixels_unknown"] > 0
    assert o1["completed"] is None and o1["observed"]["volume_iou"] < 0.3
    discs = evaluate_completion(run, gt, samples=20_000, render=False, splat_points="discs", instances=[0])
    d = discs["objects"][0]
    assert d["observed"]["recall"] > b["recall"] and d["completed"]["fscore"] > 0.9  # surfel discs, not centres
    assert "psnr_known" not in d["observed"]
    s = r["summary"]["all"]
    assert s["n_matched"] == 2 and s["n_completed"] == 1 and s["completed_beats_observed"]["chamfer"] == 1
    assert s["completed"]["volume_iou"] > 0.8 and s["observed"]["volume_iou"] < 0.3


def test_cli_eval_prints_json_and_fails_cleanly(world, tmp_path, capsys):
    _, gt, run = world
    assert main(["eval", "seg", str(run), "--gt", str(gt), "--no-views"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["miou_3d"] == 1.0
    assert main(["eval", "complete", str(run), "--gt", str(gt), "--no-render", "--samples", "5000",
                 "--instances", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [o["id"] for o in out["objects"]] == [1]
    empty = tmp_path / "norun"
    empty.mkdir()
    assert main(["eval", "seg", str(empty), "--gt", str(gt)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "labels.npy" in err and err.startswith("instascene eval: error:")


def test_evaluate_completion_with_meshes_only_as_the_practice_scenes(world, tmp_path):
    """The practice scenes ship complete meshes but no complete surfels: geometry is scored,
    PSNR is skipped with a note (it was an error), and their 'visible fraction' gives unseen."""
    import shutil

    _, gt, run = world
    meshes_only = tmp_path / "gt"
    shutil.copytree(gt, meshes_only, ignore=shutil.ignore_patterns("objects"))
    doc = json.loads((meshes_only / "instances.json").read_text())
    for o in doc["objects"]:
        o["visible_fraction_of_visual_mesh"] = 1.0 - o.pop("unseen_fraction")
    (meshes_only / "instances.json").write_text(json.dumps(doc))
    r = evaluate_completion(run, meshes_only, views=4, size=48, samples=20_000)
    o0 = r["objects"][0]
    assert o0["completed"]["volume_iou"] > 0.8 and "psnr_known" not in o0["completed"]
    assert "no complete ground-truth surfels" in o0["render_note"] and o0["needs_completion"]
