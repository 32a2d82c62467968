"""Fragments: every (pixel, Gaussian) pair that a view composites, front to back.

This is the torch rasterizer's engine, vectorised with no per-pixel or per-Gaussian
Python loops:

 1. every visible Gaussian is expanded to the pixel centres inside its box
    (repeat_interleave), in order of centre depth;
 2. α is evaluated per pair and pairs with α < 1/255 are dropped;
 3. a stable sort by pixel gives each pixel's list front to back (ties keep
    depth order, as gsplat's stable (tile, depth) sort);
 4. transmittance is a segmented exclusive cumulative sum of log(1 - α) in
    float64, and pairs from the one that would bring T to ≤ 1e-4 on are cut,
    exactly as the CUDA kernels stop.

Cost: memory is about 60 bytes per candidate pair of the band being processed and
40 bytes per kept pair; the image is split into row bands so that candidates of
one band stay under `max_candidates` (default 8M ≈ 0.5 GB), which bounds memory
on large views whatever their size. Time is dominated by the pair count
(≈ 0.1-0.2 µs per pair on one CPU core).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .surfels import T_STOP, Gaussians, Projection, evaluate, pair_table

LOG_T_STOP = math.log(T_STOP)


@dataclass
class Fragments:
    """Kept pairs of one view, sorted by pixel then front to back."""

    width: int
    rows: tuple[int, int]  # the pixel rows [y0, y1) these fragments cover
    pixel: torch.Tensor  # [P] int64, row-major pixel index in the whole image
    gaussian: torch.Tensor  # [P] int64
    alpha: torch.Tensor  # [P]
    depth: torch.Tensor  # [P] ray-splat intersection depth
    log_one_minus_alpha: torch.Tensor  # [P] float64
    transmittance: torch.Tensor  # [P] T before this Gaussian (float64 → input dtype)

    @property
    def weight(self) -> torch.Tensor:
        return self.alpha * self.transmittance

    def __len__(self) -> int:
        return int(self.pixel.shape[0])


def _segment_starts(pixel: torch.Tensor) -> torch.Tensor:
    """For pixel ids sorted ascending, the index of each pair's first pair in its pixel."""
    if pixel.numel() == 0:
        return pixel
    _, counts = torch.unique_consecutive(pixel, return_counts=True)
    first = torch.cumsum(counts, 0) - counts
    return torch.repeat_interleave(first, counts)


def _log_transmittance(log1m_alpha: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """Segmented exclusive cumulative sum: log T before each pair within its pixel."""
    excl = torch.cumsum(log1m_alpha, 0) - log1m_alpha
    return excl - excl[starts]


def _candidates(proj: Projection, order: torch.Tensor, width: int, y0: int, y1: int):
    """(pixel, gaussian, px, py) for every pixel centre of rows [y0, y1) inside the boxes
    of Gaussians `order` (already in front-to-back order)."""
    mx, my = proj.means2d[order, 0], proj.means2d[order, 1]
    rx, ry = proj.radii[order, 0], proj.radii[order, 1]
    # pixel j is evaluated when |j + 0.5 - μ| ≤ r
    x0 = torch.ceil(mx - rx - 0.5).clamp_min(0).long()
    x1 = torch.floor(mx + rx - 0.5).clamp_max(width - 1).long()
    ya = torch.ceil(my - ry - 0.5).clamp_min(y0).long()
    yb = torch.floor(my + ry - 0.5).clamp_max(y1 - 1).long()
    w = (x1 - x0 + 1).clamp_min(0)
    h = (yb - ya + 1).clamp_min(0)
    n = w * h
    keep = n > 0
    order, x0, ya, w, n = order[keep], x0[keep], ya[keep], w[keep], n[keep]
    gidx = torch.repeat_interleave(torch.arange(order.numel(), device=order.device), n)
    local = torch.arange(gidx.numel(), device=order.device) - torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
    wg = w[gidx]
    xs = x0[gidx] + local % wg
    ys = ya[gidx] + torch.div(local, wg, rounding_mode="floor")
    return ys * width + xs, order[gidx], xs, ys


def _box_pixel_counts(proj: Projection, idx: torch.Tensor, width: int, height: int) -> torch.Tensor:
    r = proj.radii[idx]
    return ((2 * r[:, 0] + 1).clamp_max(width) * (2 * r[:, 1] + 1).clamp_max(height))


def row_bands(proj: Projection, width: int, height: int, max_candidates: int) -> list[tuple[int, int]]:
    """Split the image into row bands of at most ~`max_candidates` candidate pairs each."""
    idx = torch.nonzero(proj.visible).squeeze(1)
    total = float(_box_pixel_counts(proj, idx, width, height).sum()) if idx.numel() else 0.0
    n_bands = max(1, min(height, math.ceil(total / max_candidates)))
    step = math.ceil(height / n_bands)
    return [(y, min(height, y + step)) for y in range(0, height, step)]


def search_pairs(g: Gaussians, proj: Projection, width: int, y0: int, y1: int, chunk: int = 1 << 22):
    """All (pixel, gaussian, α) of rows [y0, y1) with α ≥ 1/255, sorted by pixel and
    front to back within a pixel (steps 1-3 of the module docstring; no gradient)."""
    device = g.means.device
    with torch.no_grad():
        table = pair_table(proj, g.opacities)
        inside = proj.visible & (proj.means2d[:, 1] + proj.radii[:, 1] > y0) & (proj.means2d[:, 1] - proj.radii[:, 1] < y1)
        idx = torch.nonzero(inside).squeeze(1)
        idx = idx[torch.argsort(proj.depths[idx], stable=True)]
        # expand in Gaussian chunks so that candidates never exceed ~`chunk` at once
        cum = torch.cumsum(_box_pixel_counts(proj, idx, width, y1 - y0), 0)
        parts = [(torch.zeros(0, dtype=torch.long, device=device),) * 2 + (table.new_zeros(0),)]
        start = 0
        while start < idx.numel():
            base = int(cum[start - 1]) if start else 0
            stop = max(start + 1, int(torch.searchsorted(cum, base + chunk, right=True)))
            pix, gid, xs, ys = _candidates(proj, idx[start:stop], width, y0, y1)
            alpha, _, valid = evaluate(table, xs.to(table.dtype) + 0.5, ys.to(table.dtype) + 0.5, gid, depth=False)
            keep = torch.nonzero(valid).squeeze(1)
            parts.append((pix.index_select(0, keep), gid.index_select(0, keep), alpha.index_select(0, keep)))
            start = stop
        pix, gid, alpha = (torch.cat(p) for p in zip(*parts))
        pix, perm = torch.sort(pix, stable=True)
        return pix, gid.index_select(0, perm), alpha.index_select(0, perm)


def composite_pairs(
    g: Gaussians, proj: Projection, width: int, rows: tuple[int, int], pix: torch.Tensor, gid: torch.Tensor, alpha: torch.Tensor
) -> Fragments:
    """Cut each pixel's sorted pair list where T reaches 1e-4 (step 4), then evaluate the
    kept pairs with gradients. `pix`, `gid`, `alpha` come from a search (torch or gsplat)."""
    with torch.no_grad():
        log1m = torch.log1p(-alpha.double())
        keep = _log_transmittance(log1m, _segment_starts(pix)) + log1m > LOG_T_STOP
        keep = torch.nonzero(keep).squeeze(1)
        pix, gid = pix.index_select(0, keep), gid.index_select(0, keep)
    dtype = proj.M.dtype
    xs = (pix % width).to(dtype) + 0.5
    ys = torch.div(pix, width, rounding_mode="floor").to(dtype) + 0.5
    alpha, depth, _ = evaluate(pair_table(proj, g.opacities), xs, ys, gid)
    log1m = torch.log1p(-alpha.double())
    logT = _log_transmittance(log1m, _segment_starts(pix))
    return Fragments(
        width=width,
        rows=rows,
        pixel=pix,
        gaussian=gid,
        alpha=alpha,
        depth=depth,
        log_one_minus_alpha=log1m,
        transmittance=torch.exp(logT).to(alpha.dtype),
    )
