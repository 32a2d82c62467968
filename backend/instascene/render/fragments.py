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
    first = torch.ones_like(pixel, dtype=torch.bool)
    first[1:] = pixel[1:] != pixel[:-1]
    pos = torch.arange(pixel.numel(), device=pixel.device)
    return torch.cummax(torch.where(first, pos, torch.zeros_like(pos)), 0).values


def _log_transmittance(log1m_alpha: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """Segmented exclusive cumulative sum: log T before each pair within its pixel."""
    excl = torch.cumsum(log1m_alpha, 0) - log1m_alpha
    return excl - excl[starts]


def _expand(counts: torch.Tensor):
    """For runs of lengths `counts`: (run index, offset within the run) of every element."""
    run = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
    offset = torch.arange(run.numel(), device=counts.device) - (torch.cumsum(counts, 0) - counts)[run]
    return run, offset


def _candidates(proj: Projection, opacities: torch.Tensor, order: torch.Tensor, width: int, y0: int, y1: int):
    """(pixel, gaussian, px, py) for the pixel centres of rows [y0, y1) in the boxes of
    Gaussians `order` (front-to-back) where α ≥ 1/255 is possible at all.

    Per box row, α ≥ 1/255 needs ρ3d ≤ 2 ln(255 o) — a conic in pixel space, since
    (u, v) is a homography of the pixel — or ρ2d ≤ 2 ln(255 o) — a disc around μ2d.
    Only the hull of the two x-intervals (widened by a margin) is enumerated; the
    exact test is `evaluate`'s. This skips most of a tilted splat's box.
    """
    mx, my = proj.means2d[order, 0], proj.means2d[order, 1]
    rx, ry = proj.radii[order, 0], proj.radii[order, 1]
    # pixel j is in the box when |j + 0.5 - μ| ≤ r
    bx0 = torch.ceil(mx - rx - 0.5).clamp_min(0).long()
    bx1 = torch.floor(mx + rx - 0.5).clamp_max(width - 1).long()
    by0 = torch.ceil(my - ry - 0.5).clamp_min(y0).long()
    by1 = torch.floor(my + ry - 0.5).clamp_max(y1 - 1).long()
    span_g, dy = _expand((by1 - by0 + 1).clamp_min(0))  # one span per (Gaussian, box row)
    row = by0[span_g] + dy

    f64 = torch.float64
    o = opacities[order].to(f64)[span_g]
    reach = torch.log((255.0 * o).clamp_min(1e-30))  # α ≥ 1/255 ⇔ ρ ≤ 2·reach
    py = row.to(f64) + 0.5
    gs = order[span_g]
    a = proj.A[gs].to(f64)  # c = x·A + (py·B + C) along the row
    b = py[:, None] * proj.B[gs].to(f64) + proj.C[gs].to(f64)
    r2 = 2.0 * reach
    qa = a[:, 0] ** 2 + a[:, 1] ** 2 - r2 * a[:, 2] ** 2
    qb = 2.0 * (a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1] - r2 * a[:, 2] * b[:, 2])
    qc = b[:, 0] ** 2 + b[:, 1] ** 2 - r2 * b[:, 2] ** 2
    disc = qb * qb - 4.0 * qa * qc
    # a well-conditioned ellipse row; near-parabolic (edge-on) rows keep the whole box row
    ellipse = qa > 1e-6 * (a[:, 0] ** 2 + a[:, 1] ** 2)
    root = disc.clamp_min(0).sqrt()
    safe_qa = torch.where(ellipse, qa, torch.ones_like(qa))
    c_lo, c_hi = (-qb - root) / (2 * safe_qa), (-qb + root) / (2 * safe_qa)
    c_empty = ellipse & (disc < 0)
    inf = torch.full_like(qa, float("inf"))
    c_lo = torch.where(c_empty, inf, torch.where(ellipse, c_lo, -inf))
    c_hi = torch.where(c_empty, -inf, torch.where(ellipse, c_hi, inf))
    # the low-pass disc: ρ2d = 2‖μ2d − p‖² ≤ 2·reach
    dyy = py - my[span_g].to(f64)
    rem = reach - dyy * dyy
    half = rem.clamp_min(0).sqrt()
    mxs = mx[span_g].to(f64)
    d_lo = torch.where(rem >= 0, mxs - half, inf)
    d_hi = torch.where(rem >= 0, mxs + half, -inf)
    margin = 0.05 + 1e-4 * (mxs.abs() + 1)
    lo = torch.minimum(c_lo, d_lo) - margin
    hi = torch.maximum(c_hi, d_hi) + margin
    # x range: pixel centres j + 0.5 in [lo, hi], inside the box
    lo = torch.ceil(lo.clamp(-1.0, width + 1.0) - 0.5).long()
    hi = torch.floor(hi.clamp(-2.0, width + 1.0) - 0.5).long()
    x0 = torch.maximum(lo, bx0[span_g])
    x1 = torch.minimum(hi, bx1[span_g])
    span, dx = _expand((x1 - x0 + 1).clamp_min(0))
    xs = x0[span] + dx
    ys = row[span]
    return ys * width + xs, gs[span], xs, ys


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
    """All (pixel, gaussian, α, depth) of rows [y0, y1) with α ≥ 1/255, sorted by pixel
    and front to back within a pixel (steps 1-3 of the module docstring; no gradient)."""
    device = g.means.device
    with torch.no_grad():
        table = pair_table(proj, g.opacities)
        inside = proj.visible & (proj.means2d[:, 1] + proj.radii[:, 1] > y0) & (proj.means2d[:, 1] - proj.radii[:, 1] < y1)
        idx = torch.nonzero(inside).squeeze(1)
        idx = idx[torch.argsort(proj.depths[idx], stable=True)]
        # expand in Gaussian chunks so that candidates never exceed ~`chunk` at once
        cum = torch.cumsum(_box_pixel_counts(proj, idx, width, y1 - y0), 0)
        parts = [(torch.zeros(0, dtype=torch.long, device=device),) * 2 + (table.new_zeros(0),) * 2]
        start = 0
        while start < idx.numel():
            base = int(cum[start - 1]) if start else 0
            stop = max(start + 1, int(torch.searchsorted(cum, base + chunk, right=True)))
            pix, gid, xs, ys = _candidates(proj, g.opacities, idx[start:stop], width, y0, y1)
            alpha, depth, valid = evaluate(table, xs.to(table.dtype) + 0.5, ys.to(table.dtype) + 0.5, gid)
            keep = torch.nonzero(valid).squeeze(1)
            parts.append(tuple(t.index_select(0, keep) for t in (pix, gid, alpha, depth)))
            start = stop
        pix, gid, alpha, depth = (torch.cat(p) for p in zip(*parts))
        pix, perm = torch.sort(pix, stable=True)
        return pix, gid.index_select(0, perm), alpha.index_select(0, perm), depth.index_select(0, perm)


def composite_pairs(
    g: Gaussians,
    proj: Projection,
    width: int,
    rows: tuple[int, int],
    pix: torch.Tensor,
    gid: torch.Tensor,
    alpha: torch.Tensor,
    depth: torch.Tensor,
) -> Fragments:
    """Cut each pixel's sorted pair list where T reaches 1e-4 (step 4). The pairs come from
    a search (torch or gsplat) with their α and depth; the cut only drops a tail of each
    pixel's list, so the kept pairs' T is already known. Pairs are re-evaluated only when
    a gradient must flow to the Gaussians.
    """
    with torch.no_grad():
        log1m = torch.log1p(-alpha.double())
        logT = _log_transmittance(log1m, _segment_starts(pix))
        keep = torch.nonzero(logT + log1m > LOG_T_STOP).squeeze(1)
        pix, gid, alpha, depth, log1m, logT = (t.index_select(0, keep) for t in (pix, gid, alpha, depth, log1m, logT))
    params = (g.means, g.quats, g.scales, g.opacities)
    if torch.is_grad_enabled() and any(t.requires_grad for t in params):
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
