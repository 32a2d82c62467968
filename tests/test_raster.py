"""The torch 2DGS rasterizer against a literal per-pixel loop, its cache, tracking and gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from instascene.render import ContributionCache, Gaussians, View, contributions, rasterize
from instascene.render.rasterize import selection_mask
from raster_reference import reference_render


def random_scene(n=60, seed=0, dtype=torch.float64, sh_degree=1, width=24, height=20):
    """Surfels of assorted sizes and tilts in front of a pinhole camera, overlapping a lot."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=gen, dtype=dtype) * torch.tensor([0.5, 0.4, 0.3], dtype=dtype)
    means[:, 2] += 3.0
    quats = torch.randn(n, 4, generator=gen, dtype=dtype)
    scales = torch.rand(n, 2, generator=gen, dtype=dtype) * 0.15 + 0.01
    opac = torch.rand(n, generator=gen, dtype=dtype) * 0.95 + 0.04
    sh = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=gen, dtype=dtype) * 0.4
    g = Gaussians(means, quats, scales, opac, sh)
    K = torch.tensor([[30.0, 0, width / 2 + 0.3], [0, 31.0, height / 2 - 0.2], [0, 0, 1]], dtype=dtype)
    # a slightly rotated, translated camera
    a = 0.1
    R = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]], dtype=dtype)
    viewmat = torch.eye(4, dtype=dtype)
    viewmat[:3, :3] = R
    viewmat[:3, 3] = torch.tensor([0.05, -0.1, 0.2], dtype=dtype)
    return g, View(viewmat, K, width, height)


def run_reference(g, view, values):
    return reference_render(
        g.means.double().numpy(), g.quats.double().numpy(), g.scales.double().numpy(),
        g.opacities.double().numpy(), values.double().numpy(), view.viewmat.double().numpy(),
        view.K.double().numpy(), view.width, view.height,
    )


@pytest.fixture(scope="module")
def scene64():
    g, view = random_scene()
    feats = torch.randn(len(g), 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    return g, view, feats, run_reference(g, view, feats)


def test_render_matches_literal_loop(scene64):
    g, view, feats, ref = scene64
    out = rasterize(g, view, features=feats, rgb=False, backend="torch")
    assert ref["alpha"].max() > 0.9 and (ref["alpha"] < 1e-6).any()  # the scene has full and empty pixels
    np.testing.assert_allclose(out.features.numpy(), ref["values"], atol=1e-10)
    np.testing.assert_allclose(out.alpha.numpy(), ref["alpha"], atol=1e-10)
    np.testing.assert_allclose(out.depth.numpy(), ref["depth"], atol=1e-9)
    np.testing.assert_allclose(out.median_depth.numpy(), ref["median"], atol=1e-10)
    np.testing.assert_allclose(out.normals.numpy(), ref["normals"], atol=1e-10)


def test_float32_close_to_float64_reference(scene64):
    """float32 rounding: 1e-5 almost everywhere, 1e-4 at worst (ill-conditioned edge-on splats)."""
    g64, view64, feats, ref = scene64
    g = Gaussians(*(t.float() for t in (g64.means, g64.quats, g64.scales, g64.opacities, g64.sh)))
    view = View(view64.viewmat.float(), view64.K.float(), view64.width, view64.height)
    out = rasterize(g, view, features=feats.float(), rgb=False, backend="torch")
    for got, want, scale in ((out.features, ref["values"], 1.0), (out.alpha, ref["alpha"], 1.0),
                             (out.depth, ref["depth"], ref["depth"].max())):
        err = np.abs(got.numpy() - want) / scale
        assert (err <= 1e-5).mean() >= 0.99 and err.max() < 1e-4


def test_contribution_sets_identical_to_literal_loop(scene64):
    g, view, _, ref = scene64
    pairs = np.array(ref["pairs"])
    all_c = contributions(g, view, criterion=None, backend="torch")
    got = np.stack([all_c.pixel.numpy(), all_c.gaussian.numpy()], 1)
    np.testing.assert_array_equal(got, pairs[:, :2].astype(np.int64))  # same pairs, same order
    np.testing.assert_allclose(all_c.transmittance.numpy(), pairs[:, 2], atol=1e-12)
    np.testing.assert_allclose(all_c.weight.numpy(), pairs[:, 3], atol=1e-12)
    for criterion in ("transmittance", "crossing", "weight"):
        keep = selection_mask(criterion, torch.from_numpy(pairs[:, 2]), torch.from_numpy(pairs[:, 3])).numpy()
        c = contributions(g, view, criterion=criterion, backend="torch")
        want = set(map(tuple, pairs[keep][:, :2].astype(np.int64)))
        assert set(zip(c.pixel.tolist(), c.gaussian.tolist())) == want and want


def test_criteria_semantics(scene64):
    g, view, _, _ = scene64
    front = contributions(g, view, "transmittance", backend="torch")
    crossing = contributions(g, view, "crossing", backend="torch")
    heavy = contributions(g, view, "weight", backend="torch")
    assert (front.transmittance > 0.5).all() and (heavy.weight > 0.1).all()
    assert torch.bincount(crossing.pixel).max() == 1  # at most one crossing Gaussian per pixel
    assert set(zip(crossing.pixel.tolist(), crossing.gaussian.tolist())) <= set(
        zip(front.pixel.tolist(), front.gaussian.tolist())
    )
    # the crossing Gaussian is where T goes from above to at/below one half
    t_after = crossing.transmittance - crossing.weight
    assert (t_after < 0.5).all()


def test_render_names_the_crossing_gaussian_of_every_pixel(scene64):
    """`rasterize(...).crossing` is the pair `contributions(..., "crossing")` finds, per
    pixel, in the same pass as the image (-1 where T never drops below one half), also
    when the view is rasterized in row bands."""
    g, view, _, _ = scene64
    c = contributions(g, view, "crossing", backend="torch")
    expected = torch.full((view.height * view.width,), -1, dtype=torch.long)
    expected[c.pixel] = c.gaussian
    assert 0 < (expected >= 0).sum() < len(expected)  # some pixels stay more than half clear
    for kw in ({}, {"max_candidates": 300}):
        assert torch.equal(rasterize(g, view, backend="torch", **kw).crossing.reshape(-1), expected)


def test_mask_gaussian_sets_one_pass(scene64):
    g, view, _, _ = scene64
    c = contributions(g, view, "transmittance", backend="torch")
    labels = np.zeros((view.height, view.width), dtype=np.int32)
    labels[:, : view.width // 2] = 1
    labels[5:15, 10:20] = 7
    sets = c.mask_gaussians(labels)
    flat = labels.reshape(-1)
    for lab in (1, 7):
        in_mask = flat[c.pixel.numpy()] == lab
        want = np.unique(c.gaussian.numpy()[in_mask])
        np.testing.assert_array_equal(sets.of(lab).numpy(), want)
        counts = sets.pixels[sets.label == lab].numpy()
        np.testing.assert_array_equal(counts, [np.sum(c.gaussian.numpy()[in_mask] == gid) for gid in want])
    assert set(sets.label.tolist()) == {1, 7}
    with pytest.raises(ValueError, match="pixels"):
        c.mask_gaussians(labels[:-1])


def test_row_bands_give_the_same_image(scene64):
    g, view, feats, _ = scene64
    whole = rasterize(g, view, features=feats, backend="torch")
    banded = rasterize(g, view, features=feats, backend="torch", max_candidates=300)
    for a, b in ((whole.rgb, banded.rgb), (whole.features, banded.features), (whole.depth, banded.depth)):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_rgb_from_sh_with_background():
    g, view = random_scene(sh_degree=0)
    bg = torch.tensor([0.2, 0.4, 0.9], dtype=torch.float64)
    out = rasterize(g, view, background=bg, backend="torch")
    colors = (0.28209479177387814 * g.sh[:, 0] + 0.5).clamp_min(0)
    ref = run_reference(g, view, colors)
    want = ref["values"] + (1 - ref["alpha"])[..., None] * bg.numpy()
    np.testing.assert_allclose(out.rgb.numpy(), want, atol=1e-10)


def test_cache_equals_full_rendering_forward_and_backward(scene64):
    g, view, _, _ = scene64
    g32 = Gaussians(*(t.float() for t in (g.means, g.quats, g.scales, g.opacities, g.sh)))
    v32 = View(view.viewmat.float(), view.K.float(), view.width, view.height)
    F = torch.nn.functional.normalize(torch.randn(len(g), 16), dim=1).requires_grad_()
    target = torch.randn(view.height, view.width, 16)
    full = rasterize(g32, v32, features=F, rgb=False, backend="torch").features
    (gf,) = torch.autograd.grad((full * target).sum(), F)
    cache = ContributionCache.build(g32, [v32], backend="torch")
    cached = cache.render(0, F)
    (gc,) = torch.autograd.grad((cached * target).sum(), F)
    torch.testing.assert_close(cached, full, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(gc, gf, atol=1e-6, rtol=1e-5)


def test_gradients_match_finite_differences():
    g, view = random_scene(n=12, width=12, height=10, seed=5)
    feats = torch.randn(len(g), 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    weights = [torch.randn(10, 12, k, dtype=torch.float64) for k in (3, 2, 3)]
    wd = torch.randn(10, 12, dtype=torch.float64)

    def loss(means, quats, scales, opac, sh, f):
        out = rasterize(Gaussians(means, quats, scales, opac, sh), view, features=f, backend="torch")
        return (
            (out.rgb * weights[0]).sum() + (out.features * weights[1]).sum()
            + (out.normals * weights[2]).sum() + (out.alpha * wd).sum() + 0.1 * (out.depth * wd).sum()
        )

    inputs = tuple(t.clone().requires_grad_() for t in (g.means, g.quats, g.scales, g.opacities, g.sh, feats))
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-7, atol=1e-5, rtol=1e-4)


def test_empty_view_renders_zeros():
    g, view = random_scene(n=5)
    behind = Gaussians(g.means * torch.tensor([1.0, 1.0, -1.0], dtype=g.means.dtype), g.quats, g.scales, g.opacities, g.sh)
    out = rasterize(behind, view, backend="torch")
    assert out.alpha.abs().max() == 0 and out.rgb.abs().max() == 0
    assert len(contributions(behind, view, backend="torch")) == 0


def test_auto_backend_is_torch_without_cuda():
    from instascene.render import resolve_backend

    if not torch.cuda.is_available():
        assert resolve_backend("auto", "cpu") == "torch"
        with pytest.raises(RuntimeError, match="gsplat"):
            resolve_backend("gsplat", "cpu")
