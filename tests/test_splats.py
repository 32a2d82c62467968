"""The splat container's conversions, and the real donut file through load and render."""

from __future__ import annotations

import numpy as np
import torch

from instascene.io.cameras import ring_cameras
from instascene.io.ply import read_ply
from instascene.io.rotations import quat_to_rotmat, rotmat_to_quat
from instascene.io.splats import Splats
from instascene.render import Gaussians, View, contributions, rasterize


def random_3dgs(n=200, seed=0) -> Splats:
    rng = np.random.default_rng(seed)
    return Splats(
        means=rng.normal(size=(n, 3)).astype(np.float32),
        quats=rng.normal(size=(n, 4)).astype(np.float32),
        log_scales=rng.normal(-3, 1, size=(n, 3)).astype(np.float32),
        opacity_logits=rng.normal(size=n).astype(np.float32),
        sh_dc=rng.normal(size=(n, 3)).astype(np.float32),
        sh_rest=np.zeros((n, 0, 3), np.float32),
    )


def test_rotation_quaternion_round_trip():
    q = np.random.default_rng(1).normal(size=(500, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q *= np.sign(q[:, :1])
    np.testing.assert_allclose(rotmat_to_quat(quat_to_rotmat(q)), q, atol=1e-10)


def test_3dgs_flattens_to_surfels_on_the_two_largest_axes():
    s3 = random_3dgs()
    s2 = s3.to_2dgs()
    assert s2.kind == "2dgs" and s3.kind == "3dgs"
    R3 = quat_to_rotmat(s3.unit_quats().astype(np.float64))
    R2 = quat_to_rotmat(s2.unit_quats().astype(np.float64))
    order = np.argsort(-s3.log_scales, axis=1)
    rows = np.arange(len(s3))
    np.testing.assert_allclose(s2.log_scales, s3.log_scales[rows[:, None], order[:, :2]])
    for k in range(3):  # each surfel axis is the matching ellipsoid axis (up to sign)
        dots = np.abs(np.einsum("ni,ni->n", R2[:, :, k], R3[rows, :, order[:, k]]))
        np.testing.assert_allclose(dots, 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(R2), 1.0, atol=1e-5)


def test_donut_loads_and_renders(donut_path):
    splats = read_ply(donut_path)
    assert len(splats) == 45624 and splats.kind == "3dgs"
    g = Gaussians.from_splats(splats)
    lo, hi = splats.bounds()
    center = (lo + hi) / 2
    dist = 1.1 * float(np.linalg.norm(hi - lo))
    cam = ring_cameras(center, dist, 4, 35.0, 96, 96, fov_deg=40.0)[1]
    with torch.no_grad():
        out = rasterize(g, View.from_camera(cam), background=torch.ones(3))
    covered = out.alpha > 0.5
    assert 0.1 < covered.float().mean() < 0.7  # a donut in the middle of the frame
    assert out.alpha[48, 0] < 0.01  # the border is background
    d = out.median_depth[covered]
    assert ((d > dist - 0.2) & (d < dist + 0.2)).float().mean() > 0.99  # surfaces at the right distance
    assert 0.0 <= float(out.rgb.min()) and float(out.rgb.max()) <= 1.5
    front = contributions(g, View.from_camera(cam), "transmittance")
    assert front.gaussian.unique().numel() > 1000
