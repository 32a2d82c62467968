"""The built-in scene: deterministic, loadable, and its ground truth agrees with its splats."""

from __future__ import annotations

import filecmp
import json

import numpy as np
import pytest
import torch

from instascene.errors import InstaSceneError
from instascene.io.masks import read_label_map
from instascene.io.ply import read_ply
from instascene.io.scene import load_scene
from instascene.render import Gaussians, View, contributions, rasterize
from instascene.synth.generate import BACKGROUND_RGB, SynthOptions, generate_scene

SMALL = SynthOptions(seed=3, objects=3, views=6, width=96, height=72)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "scene"
    generate_scene(out, SMALL)
    return out


def test_same_seed_same_scene(scene, tmp_path):
    again = tmp_path / "again"
    generate_scene(again, SMALL)
    for rel in ("point_cloud.ply", "sparse/0/cameras.bin", "sparse/0/images.bin", "cameras.json",
                "gt/gaussian_instances.npy", "gt/instances.json", "sam/mask/frame_0002.png", "gt/views/frame_0004.png",
                "gt/meshes/1.ply", "gt/objects/2.ply"):
        assert filecmp.cmp(scene / rel, again / rel, shallow=False), rel
    a = np.asarray(__import__("PIL.Image").Image.open(scene / "images/frame_0001.png"), dtype=int)
    b = np.asarray(__import__("PIL.Image").Image.open(again / "images/frame_0001.png"), dtype=int)
    assert np.abs(a - b).max() <= 1


def test_other_seed_other_scene(scene, tmp_path):
    other = tmp_path / "other"
    generate_scene(other, SynthOptions(**{**SMALL.__dict__, "seed": 4}))
    assert not filecmp.cmp(scene / "point_cloud.ply", other / "point_cloud.ply", shallow=False)


def test_folder_loads_through_the_scene_loader(scene):
    s = load_scene(scene)
    assert s.splats.kind == "2dgs" and len(s.cameras) == 6 and len(s.mask_paths) == 6 and s.has_gt
    gt = np.load(scene / "gt/gaussian_instances.npy")
    assert gt.shape == (len(s.splats),) and set(np.unique(gt)) == {-1, 0, 1, 2}
    objects = json.loads((scene / "gt/instances.json").read_text())["objects"]
    assert [o["id"] for o in objects] == [0, 1, 2] and all(o["watertight"] for o in objects)
    assert all(0.0 <= o["unseen_fraction"] < 1.0 for o in objects)
    # unseen surfels are missing from the reconstruction, present in the complete object
    full = read_ply(scene / "gt/objects/0.ply")
    assert (full.extra["seen"] == 0).any() and len(full) > objects[0]["observed_gaussians"]


def test_ground_truth_records_the_complete_support_surface(scene):
    """gt/instances.json "support" is the table disc; gt/background.ply holds every table surfel,
    the seen ones being exactly the scene's background Gaussians (what `eval layout` relies on)."""
    from instascene.eval.layout import _estimate_disc, coverage, support_of
    from instascene.eval.segmentation import load_gt

    data = json.loads((scene / "gt/instances.json").read_text())
    assert data["background_id"] == -1 and data["support"]["kind"] == "disc"
    c, r = np.asarray(data["support"]["center"]), data["support"]["radius"]
    assert c[2] == 0.0 and r > 0
    full = read_ply(scene / "gt/background.ply")
    seen = full.extra["seen"] > 0
    assert 0 < seen.sum() < len(full)  # the table under the objects was never seen
    assert np.all(np.linalg.norm(full.means[:, :2] - c[:2], axis=1) <= r + 1e-5) and np.all(full.means[:, 2] == 0)
    s = load_scene(scene)
    gi = np.load(scene / "gt/gaussian_instances.npy")
    observed = s.splats.means[gi < 0]
    key = lambda m: m[np.lexsort(m.T)]  # noqa: E731
    np.testing.assert_array_equal(key(full.means[seen]), key(observed))
    gt = load_gt(scene / "gt")
    sup = support_of(gt)
    assert sup.source == "gt/instances.json" and sup.size == r
    est = _estimate_disc(gt, s.splats)  # what scenes made before "support" was recorded fall back to
    assert np.linalg.norm(est.center - c) < 0.01 * r and abs(est.size - r) < 0.01 * r
    assert coverage(full, sup)["fraction"] > 0.99
    assert coverage(s.splats.subset(gi < 0), sup)["fraction"] < coverage(full, sup)["fraction"]


def test_images_are_renders_of_the_splats(scene):
    s = load_scene(scene)
    g = Gaussians.from_splats(s.splats)
    cam = s.cameras[2]
    with torch.no_grad():
        rgb = rasterize(g, View.from_camera(cam), background=torch.tensor(BACKGROUND_RGB)).rgb
    diff = np.abs(np.round(rgb.clamp(0, 1).numpy() * 255) - s.image(cam.name).astype(float))
    assert diff.max() <= 1


def test_ground_truth_maps_agree_with_visible_surfels(scene):
    """Each object surfel that a view shows projects (centre, through the COLMAP camera)
    onto its own instance in that view's ground-truth map."""
    s = load_scene(scene)
    g = Gaussians.from_splats(s.splats)
    gt = np.load(scene / "gt/gaussian_instances.npy")
    agree = total = 0
    for cam in s.cameras:
        shown = np.unique(contributions(g, View.from_camera(cam), "crossing").gaussian.numpy())
        shown = shown[gt[shown] >= 0]
        pc = s.splats.means[shown].astype(np.float64) @ cam.world_to_camera[:3, :3].T + cam.world_to_camera[:3, 3]
        u = np.floor(cam.fx * pc[:, 0] / pc[:, 2] + cam.cx).astype(int)
        v = np.floor(cam.fy * pc[:, 1] / pc[:, 2] + cam.cy).astype(int)
        inside = (u >= 0) & (u < cam.width) & (v >= 0) & (v < cam.height)
        truth = read_label_map(scene / "gt/views" / f"{cam.name}.png")
        agree += int((truth[v[inside], u[inside]] == gt[shown[inside]] + 1).sum())
        total += int(inside.sum())
    assert total > 1000 and agree / total >= 0.95


def test_masks_are_noisy_but_cover_the_objects(scene):
    truth = read_label_map(scene / "gt/views/frame_0000.png")
    sam = read_label_map(scene / "sam/mask/frame_0000.png")
    assert sam.shape == truth.shape and sam.max() >= 2
    assert not np.array_equal(sam > 0, truth > 0)  # background masks exist


def test_zero_noise_masks_follow_the_truth(tmp_path):
    out = tmp_path / "clean"
    generate_scene(out, SynthOptions(seed=5, objects=2, views=3, width=64, height=48, mask_noise=0.0))
    for name in ("frame_0000", "frame_0001", "frame_0002"):
        truth = read_label_map(out / "gt/views" / f"{name}.png")
        sam = read_label_map(out / "sam/mask" / f"{name}.png")
        for k in np.unique(truth[truth > 0]):  # every object is exactly one mask
            ids = np.unique(sam[truth == k])
            assert len(ids) == 1 and ((sam == ids[0]) == (truth == k)).all()


def test_refuses_to_overwrite(scene):
    with pytest.raises(InstaSceneError, match="--force"):
        generate_scene(scene, SMALL)


def test_detail_makes_a_denser_scene_of_the_same_layout(scene, tmp_path):
    """`synth --detail 2`: the same objects in the same poses with about four times the
    surfels (how a scale benchmark gets a real capture's 300k+ Gaussians)."""
    dense = tmp_path / "dense"
    generate_scene(dense, SynthOptions(**{**SMALL.__dict__, "detail": 2.0}))
    base, more = json.loads((scene / "synth.json").read_text()), json.loads((dense / "synth.json").read_text())
    assert 3.0 < more["gaussians"] / base["gaussians"] < 5.0
    objects = [json.loads((d / "gt/instances.json").read_text())["objects"] for d in (scene, dense)]
    assert [o["name"] for o in objects[0]] == [o["name"] for o in objects[1]]
    for a, b in zip(*objects):
        assert np.allclose(a["centroid"], b["centroid"], atol=1e-3)
    with pytest.raises(InstaSceneError, match="--detail"):
        generate_scene(tmp_path / "bad", SynthOptions(**{**SMALL.__dict__, "detail": 0.0}))
