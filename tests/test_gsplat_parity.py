"""gsplat (CUDA) against the torch rasterizer. Skipped where CUDA or gsplat's kernels are absent."""

from __future__ import annotations

import pytest
import torch

from instascene.render import contributions, rasterize
from instascene.render import gsplat_backend

pytestmark = pytest.mark.skipif(not gsplat_backend.available(), reason=f"gsplat unusable: {gsplat_backend.why_unavailable()}")


@pytest.fixture(scope="module")
def scene():
    from instascene.cli.bench import synthetic_scene

    return synthetic_scene(20_000, 320, 240, device="cuda")


def test_gsplat_search_gives_the_torch_pairs(scene):
    g, view = scene
    a = contributions(g, view, criterion=None, backend="torch")
    b = contributions(g, view, criterion=None, backend="gsplat")
    assert len(a) > 100_000
    same = torch.equal(a.pixel, b.pixel) and torch.equal(a.gaussian, b.gaussian)
    if not same:  # gsplat stops a pixel at T ≤ 1e-4 counting out-of-box pairs too: allow a sliver
        ka = set(zip(a.pixel.tolist(), a.gaussian.tolist()))
        kb = set(zip(b.pixel.tolist(), b.gaussian.tolist()))
        assert len(ka ^ kb) <= 1e-4 * len(ka)
    for crit in ("transmittance", "crossing", "weight"):
        ca, cb = (contributions(g, view, crit, backend=k) for k in ("torch", "gsplat"))
        sa, sb = set(zip(ca.pixel.tolist(), ca.gaussian.tolist())), set(zip(cb.pixel.tolist(), cb.gaussian.tolist()))
        assert len(sa ^ sb) <= 1e-3 * len(sa)


def test_gsplat_images_match_torch(scene):
    g, view = scene
    a = rasterize(g, view, backend="torch")
    b = rasterize(g, view, backend="gsplat")
    for x, y in ((a.rgb, b.rgb), (a.alpha, b.alpha), (a.depth, b.depth), (a.normals, b.normals)):
        assert (x - y).abs().mean() < 1e-4 and (x - y).abs().max() < 1e-2


def test_gsplat_fused_renderer_close_to_torch(scene):
    """Fused kernels evaluate whole tiles and use fast-math exp: close, not identical."""
    g, view = scene
    a = rasterize(g, view, backend="torch")
    rgb, feats, alpha, normals = gsplat_backend.rasterize_fused(g, view, features=torch.randn(len(g), 16, device="cuda"))
    assert (rgb - a.rgb).abs().mean() < 1e-3
    assert (alpha - a.alpha).abs().mean() < 1e-3
    assert (normals - a.normals).abs().mean() < 1e-3
    assert feats.shape == (view.height, view.width, 16)


def test_gsplat_feature_gradients_match_torch(scene):
    g, view = scene
    F = torch.randn(len(g), 16, device="cuda", requires_grad=True)
    target = torch.randn(view.height, view.width, 16, device="cuda")
    grads = []
    for backend in ("torch", "gsplat"):
        out = rasterize(g, view, features=F, rgb=False, backend=backend).features
        grads.append(torch.autograd.grad((out * target).sum(), F)[0])
    assert (grads[0] - grads[1]).abs().max() < 1e-3
