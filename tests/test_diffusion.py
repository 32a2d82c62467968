"""Zero123-family diffusion generator on tiny random weights (offline): loading, warp geometry,
multi-condition guidance and latent replacement on an analytically rendered sphere ring."""

import json
import os
import shutil

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch

from instascene.complete.diffusion import (
    DiffusionGenerator,
    Zero123Pipeline,
    build_tiny_weights,
    load_pipeline,
    plan_warp,
    relative_poses,
    warp_to_view,
)
from instascene.complete.generator import GenerationTask
from instascene.errors import InstaSceneError

SIZE = 32  # task images; the tiny model works at 32 px (16 latents)
RADIUS, DIST, FOV = 0.6, 2.0, 49.1


def look_at(azimuth_deg, elevation_deg, dist):
    """OpenCV world-to-camera looking at the origin, world z up."""
    a, e = np.radians(azimuth_deg), np.radians(elevation_deg)
    C = dist * np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
    z = -C / np.linalg.norm(C)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = R, -R @ C
    return w2c


def sphere_task(n_views=8, size=SIZE, conditions=(0, 2), targets=(1, 4, 6)) -> GenerationTask:
    """A sphere coloured by its normal, ray-cast on a ring at elevation 30°, white background."""
    f = 0.5 * size / np.tan(np.radians(FOV) / 2)
    K = np.array([[f, 0, (size - 1) / 2], [0, f, (size - 1) / 2], [0, 0, 1.0]])
    az = np.arange(n_views) * 360.0 / n_views
    el = np.full(n_views, 30.0)
    w2c = np.stack([look_at(a, e, DIST) for a, e in zip(az, el)])
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    rays_c = np.stack([(u - K[0, 2]) / f, (v - K[1, 2]) / f, np.ones_like(u)], -1)  # z = 1
    images, alpha, depth, normals = [], [], [], []
    for P in w2c:
        R, t = P[:3, :3], P[:3, 3]
        C = -R.T @ t
        d = rays_c @ R  # world directions (unnormalised, camera z = 1)
        a_ = (d * d).sum(-1)
        b_ = 2 * (d @ C)
        c_ = C @ C - RADIUS**2
        disc = b_ * b_ - 4 * a_ * c_
        hit = disc > 0
        s = np.where(hit, (-b_ - np.sqrt(np.maximum(disc, 0))) / (2 * a_), 0.0)  # = camera z depth
        X = C + s[..., None] * d
        n = X / RADIUS
        col = np.where(hit[..., None], 0.5 + 0.45 * n, 1.0)
        images.append(col)
        alpha.append(hit)
        depth.append(np.where(hit, s, 0.0))
        normals.append(np.where(hit[..., None], n, 0.0))
    alpha = np.stack(alpha)
    return GenerationTask(
        images=np.stack(images).astype(np.float32),
        alpha=alpha.astype(np.float32),
        depth=np.stack(depth).astype(np.float32),
        normals=np.stack(normals).astype(np.float32),
        known=alpha.copy(),
        unknown=np.zeros_like(alpha),
        completed_alpha=alpha.copy(),
        completed_depth=np.stack(depth).astype(np.float32),
        K=K.astype(np.float32),
        world_to_camera=w2c.astype(np.float32),
        azimuth_deg=az.astype(np.float32),
        elevation_deg=el.astype(np.float32),
        conditions=list(conditions),
        targets=list(targets),
        seed=0,
    )


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return build_tiny_weights(tmp_path_factory.mktemp("zero123") / "tiny", image_size=SIZE)


@pytest.fixture(scope="module")
def gen(weights):
    return DiffusionGenerator(weights, steps=4, guidance=3.0, device="cpu")


@pytest.fixture(scope="module")
def task():
    return sphere_task()


# ----------------------------------------------------------------- loading


def test_missing_folder_names_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(InstaSceneError) as e:
        load_pipeline(missing)
    assert e.value.path == str(missing) and "does not exist" in str(e.value)


def test_missing_parts_are_named(weights, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(weights, broken)
    shutil.rmtree(broken / "unet")
    (broken / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(InstaSceneError) as e:
        load_pipeline(broken)
    assert e.value.path == str(broken)
    listed = e.value.problem.split("missing:")[1].split("(")[0]  # the list before the layout hint
    assert [p.strip() for p in listed.split(",")] == ["unet/", "scheduler/scheduler_config.json"]


def test_wrong_config_is_a_user_error(weights, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(weights, bad)
    cfg = json.loads((bad / "scheduler" / "scheduler_config.json").read_text())
    cfg["_class_name"] = "NoSuchScheduler"
    (bad / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg))
    with pytest.raises(InstaSceneError, match="NoSuchScheduler"):
        load_pipeline(bad)


def test_tiny_weights_round_trip(weights):
    pipe = load_pipeline(weights)
    assert pipe.resolution == SIZE
    assert pipe.unet.config.in_channels == 8 and pipe.unet.config.out_channels == 4
    size_mb = sum(p.stat().st_size for p in weights.rglob("*") if p.is_file()) / 2**20
    assert size_mb < 20
    # the plain diffusers loader reads the same folder back with identical parameters
    again = Zero123Pipeline.from_pretrained(weights, local_files_only=True)
    for a, b in zip(pipe.unet.state_dict().values(), again.unet.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(pipe.cc_projection.proj.weight, again.cc_projection.proj.weight)


def test_kxic_camera_projection_layout(weights, tmp_path):
    """A published checkpoint's `CCProjection` (in_channel/out_channel, keys projection.*) maps onto ours."""
    ext = tmp_path / "ext"
    shutil.copytree(weights, ext)
    proj = ext / "cc_projection"
    W = torch.randn(32, 36)
    shutil.rmtree(proj)
    proj.mkdir()
    (proj / "config.json").write_text(json.dumps({"_class_name": "CCProjection", "in_channel": 36, "out_channel": 32}))
    torch.save({"projection.weight": W, "projection.bias": torch.zeros(32)}, proj / "diffusion_pytorch_model.bin")
    pipe = load_pipeline(ext)
    assert torch.equal(pipe.cc_projection.proj.weight, W)


# ----------------------------------------------------------------- geometry


def test_self_warp_covers_the_object_exactly(task):
    uv, valid = warp_to_view(task.depth[:1], task.normals[:1], task.world_to_camera[:1],
                             task.depth[:1], task.world_to_camera[:1], task.K, (16, 16))
    rows = cols = (np.arange(16) * 2 + 1)  # cell-centre pixels of 2-px cells
    object_cells = torch.as_tensor(task.depth[0][rows][:, cols] > 0)
    valid = valid[0, 0]
    assert valid[object_cells].float().mean() >= 0.9 and not valid[~object_cells].any()
    u, v = np.meshgrid(cols, rows)
    err = (uv[0, 0] - torch.as_tensor(np.stack([u, v], -1), dtype=uv.dtype)).norm(dim=-1)
    assert err[valid].max() < 1e-3


def test_warp_coverage_falls_with_angle(task):
    # targets 0; sources: itself, 45°, 90°, 180° away
    src = [0, 1, 2, 4]
    _, valid = warp_to_view(task.depth[:1], task.normals[:1], task.world_to_camera[:1],
                            task.depth[src], task.world_to_camera[src], task.K, (16, 16))
    cover = valid[0].flatten(1).float().mean(1)
    assert cover[0] > cover[1] > cover[2] > cover[3]
    assert cover[1] > 0.5 * cover[0] and cover[3] < 0.05 * cover[0]


def test_warp_lands_on_the_same_surface_point(task):
    """A cell copied from another view carries that view's colour of the same sphere point."""
    warp = plan_warp(task, [1], [0, 2], (16, 16))
    assert set(warp.source[warp.mask].tolist()) == {0, 1}  # both neighbours contribute
    # warp the condition images themselves (as 3-channel 'latents' sampled at cell centres)
    px = torch.as_tensor(task.images[[0, 2]]).permute(0, 3, 1, 2)[:, :, 1::2, 1::2]
    warped, mask = warp.apply(px)
    target = torch.as_tensor(task.images[[1]]).permute(0, 3, 1, 2)[:, :, 1::2, 1::2]
    err = (warped - target).abs().amax(1)[mask[:, 0] > 0]
    assert mask.mean() > 0.3 and err.mean() < 0.05  # colour = normal: same point, same colour


def test_relative_pose_on_the_ring(task):
    pose = relative_poses(task, [1, 4], [0])
    assert torch.allclose(pose[:, 0], torch.tensor([[0.0, np.sin(np.pi / 4), np.cos(np.pi / 4), 0.0],
                                                    [0.0, 0.0, -1.0, 0.0]], dtype=pose.dtype), atol=1e-6)


# ----------------------------------------------------------------- generation


def test_generate_shapes_range_determinism_and_progress(gen, task):
    calls = []
    out = gen.generate(task, progress=lambda i, n, msg: calls.append((i, n)))
    assert out.views == [1, 4, 6]
    assert out.images.shape == (3, SIZE, SIZE, 3) and out.images.dtype == np.float32
    assert np.isfinite(out.images).all() and out.images.min() >= 0 and out.images.max() <= 1
    outside = ~task.completed_alpha[[1, 4, 6]]
    assert (out.images[outside] == 1).all()  # white background
    assert calls == [(i, 4) for i in range(1, 5)]
    again = gen.generate(task)
    assert np.array_equal(out.images, again.images)
    other = gen.generate(GenerationTask(**{**task.__dict__, "seed": 1}))
    assert not np.allclose(out.images, other.images)


def test_generate_at_a_larger_task_size(gen):
    """The production ring is 256²; images are resized to the model's resolution and back."""
    big = sphere_task(size=48, targets=(3,))
    out = gen.generate(big)
    assert out.images.shape == (1, 48, 48, 3) and np.isfinite(out.images).all()


@pytest.mark.parametrize("mode", ["average", "alternate"])
def test_identical_conditions_equal_one(gen, task, mode):
    gen.mode = mode
    try:
        one = gen.generate(GenerationTask(**{**task.__dict__, "conditions": [2]}))
        three = gen.generate(GenerationTask(**{**task.__dict__, "conditions": [2, 2, 2]}))
    finally:
        gen.mode = "average"
    np.testing.assert_allclose(one.images, three.images, atol=1e-4)


def test_latent_replacement_constrains_known_cells(gen):
    t = sphere_task(targets=(1,), conditions=(0, 2))
    cond = gen.prepare(t)
    known = cond.mask[:, 0] > 0
    assert known.float().mean() > 0.2

    def error(fraction):
        gen.warp_fraction = fraction
        z = gen.denoise(t, cond)
        return (z - cond.warped).norm(dim=1)[known].mean().item()

    try:
        free, held = error(0.0), error(1.0)
    finally:
        gen.warp_fraction = 0.6
    assert held < 0.5 * free, (held, free)


def test_bad_options_are_user_errors(weights):
    with pytest.raises(InstaSceneError, match="mode"):
        DiffusionGenerator(weights, mode="sum")
    with pytest.raises(InstaSceneError, match="warp_fraction"):
        DiffusionGenerator(weights, warp_fraction=1.5)


@pytest.mark.parametrize("scheduler", ["EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler"])
def test_other_schedulers(gen, task, scheduler):
    import diffusers

    ddim = gen.pipe.scheduler
    gen.pipe.scheduler = getattr(diffusers, scheduler).from_config(ddim.config)
    try:
        a, b = gen.generate(task), gen.generate(task)
    finally:
        gen.pipe.scheduler = ddim
    assert np.isfinite(a.images).all() and a.images.min() >= 0 and a.images.max() <= 1
    assert np.array_equal(a.images, b.images)
