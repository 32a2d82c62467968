"""gsplat 1.5.3 as the pair search on CUDA (reference/gsplat.md §1-3, §6).

gsplat's tiled kernels find each pixel's Gaussians front to back far faster than a
generic sort. We feed them our own projection (`surfels.project`: same ray
transforms and means2d as gsplat's, boxes widened to the low-pass filter's reach),
keep the pairs inside each Gaussian's box so the set is exactly the torch search's,
and composite with the shared code — so depths are 2DGS's per-pixel intersection
depths, not gsplat's centre depths.

`rasterize_fused` calls gsplat's own fused `rasterization_2dgs` for speed where its
conventions are acceptable (centre depth; RGB, alpha and normals match ours).

Status: written against gsplat 1.5.3's signatures; not yet run on a GPU (the GPU
tests in tests/test_gsplat_parity.py skip without CUDA).
"""

from __future__ import annotations

import functools

import torch

TILE_SIZE = 16
_POW2 = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@functools.lru_cache(maxsize=1)
def _probe() -> str | None:
    """None when gsplat's CUDA kernels are usable, else the reason they are not."""
    if not torch.cuda.is_available():
        return "CUDA is not available"
    try:
        import gsplat  # noqa: F401
        from gsplat.cuda._backend import _C
    except Exception as e:  # any failure means: use the torch backend
        return f"gsplat could not be loaded ({type(e).__name__}: {e})"
    if _C is None:
        return "gsplat's CUDA extension is not compiled (needs nvcc matching torch's CUDA)"
    return None


def available() -> bool:
    return _probe() is None


def why_unavailable() -> str:
    return _probe() or "available"


def search_pairs(g, proj, view):
    """(pixel, gaussian, α, depth) with α ≥ 1/255, sorted by pixel then front to back;
    `proj` is our projection of `g` into `view`."""
    from gsplat import isect_offset_encode, isect_tiles, rasterize_to_indices_in_range_2dgs

    from .surfels import evaluate, pair_table

    W, H = view.width, view.height
    with torch.no_grad():
        radii = torch.where(proj.visible[:, None], torch.ceil(proj.radii), torch.zeros_like(proj.radii)).int()
        tw, th = (W + TILE_SIZE - 1) // TILE_SIZE, (H + TILE_SIZE - 1) // TILE_SIZE
        means2d = proj.means2d.float().contiguous()
        _, isect_ids, flatten_ids = isect_tiles(
            means2d[None], radii[None], proj.depths.float()[None], TILE_SIZE, tw, th
        )
        offsets = isect_offset_encode(isect_ids, 1, tw, th)
        gid, pix, _ = rasterize_to_indices_in_range_2dgs(
            0, 1 << 30,
            torch.ones(1, H, W, device=means2d.device),
            means2d[None], proj.M.float()[None], g.opacities.float()[None],
            W, H, TILE_SIZE, offsets, flatten_ids,
        )
        gid, pix = gid.long(), pix.long()
        # whole tiles were evaluated: keep each Gaussian's own box, as the torch search
        px = (pix % W).to(proj.M.dtype) + 0.5
        py = torch.div(pix, W, rounding_mode="floor").to(proj.M.dtype) + 0.5
        d = (torch.stack([px, py], -1) - proj.means2d[gid]).abs()
        alpha, depth, valid = evaluate(pair_table(proj, g.opacities), px, py, gid)
        keep = (d <= proj.radii[gid]).all(-1) & valid
        pix, gid, alpha, depth = pix[keep], gid[keep], alpha[keep], depth[keep]
        pix, perm = torch.sort(pix, stable=True)
        return pix, gid[perm], alpha[perm], depth[perm]


def rasterize_fused(g, view, *, features=None, sh_degree=None, background=None, near=0.01, far=1e10):
    """gsplat's fused 2DGS renderer: (rgb [H,W,3] or None, features [H,W,D] or None,
    alpha [H,W], normals [H,W,3]). Channel counts are zero-padded to powers of two
    ourselves (gsplat pads with uninitialised memory that poisons gradients)."""
    from gsplat import rasterization_2dgs

    scales = torch.cat([g.scales, torch.full_like(g.scales[:, :1], 1e-6)], 1)
    common = dict(
        means=g.means, quats=g.quats, scales=scales, opacities=g.opacities,
        viewmats=view.viewmat[None], Ks=view.K[None], width=view.width, height=view.height,
        near_plane=near, far_plane=far,
    )
    rgb = feats = None
    if g.sh is not None:
        deg = sh_degree if sh_degree is not None else int(round(g.sh.shape[1] ** 0.5)) - 1
        colors, alphas, normals, *_ = rasterization_2dgs(
            colors=g.sh, sh_degree=deg, backgrounds=None if background is None else background[None], **common
        )
        rgb = colors[0]
    if features is not None:
        D = features.shape[1]
        P = next(p for p in _POW2 if p >= D)
        padded = torch.cat([features, features.new_zeros(features.shape[0], P - D)], 1)
        f, alphas, normals, *_ = rasterization_2dgs(colors=padded, **common)
        feats = f[0, ..., :D]
    if g.sh is None and features is None:
        raise ValueError("nothing to render: no SH colours and no features")
    return rgb, feats, alphas[0, ..., 0], normals[0]
