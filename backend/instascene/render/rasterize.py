"""The rasterizer's public functions: render images, and track which Gaussians make each pixel.

One interface, two ways of finding the (pixel, Gaussian) pairs of a view:
  * "torch": our vectorised search (fragments.py), on CPU or CUDA;
  * "gsplat": gsplat's tiled CUDA kernels (`rasterize_to_indices_in_range_2dgs`),
    chosen by "auto" when CUDA and gsplat's compiled extension are present.
Both hand their pairs to the same compositing code, so colours, depths (per-pixel
ray-splat intersection, as 2DGS) and tracked contributions follow one definition.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch

from . import gsplat_backend
from .fragments import Fragments, composite_pairs, row_bands, search_pairs
from .sh import eval_sh
from .surfels import Gaussians, Projection, View, project

Backend = Literal["auto", "torch", "gsplat"]
Criterion = Literal["transmittance", "crossing", "weight"]
CRITERIA = ("transmittance", "crossing", "weight")
DEFAULT_MAX_CANDIDATES = 1 << 23


def resolve_backend(backend: Backend, device: torch.device | str) -> str:
    """'auto' -> 'gsplat' when its CUDA kernels run on this device, else 'torch'."""
    if backend == "torch":
        return "torch"
    usable = torch.device(device).type == "cuda" and gsplat_backend.available()
    if backend == "gsplat" and not usable:
        raise RuntimeError(f"gsplat backend requested but unusable here: {gsplat_backend.why_unavailable()}")
    return "gsplat" if usable else "torch"


def view_fragments(
    g: Gaussians,
    view: View,
    *,
    near: float = 0.01,
    far: float = 1e10,
    backend: Backend = "auto",
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
):
    """Yield (projection, fragments) per row band of `view`, bands in image order."""
    proj = project(g, view, near, far)
    if resolve_backend(backend, g.means.device) == "gsplat":
        pairs = gsplat_backend.search_pairs(g, proj, view)
        yield proj, composite_pairs(g, proj, view.width, (0, view.height), *pairs)
        return
    for y0, y1 in row_bands(proj, view.width, view.height, max_candidates):
        pairs = search_pairs(g, proj, view.width, y0, y1)
        yield proj, composite_pairs(g, proj, view.width, (y0, y1), *pairs)


@dataclass
class RenderOutput:
    alpha: torch.Tensor  # [H, W] accumulated opacity, 1 - T
    depth: torch.Tensor  # [H, W] expected intersection depth, Σ w z / alpha (0 where empty)
    median_depth: torch.Tensor  # [H, W] depth of the last Gaussian with T > 0.5 (0 if none)
    crossing: torch.Tensor  # [H, W] int64: the Gaussian where T drops below 0.5 (-1 where it never does)
    normals: torch.Tensor  # [H, W, 3] world space, Σ w n (not normalised)
    rgb: torch.Tensor | None = None  # [H, W, 3] from SH, + T · background
    features: torch.Tensor | None = None  # [H, W, D] Σ w f (no background)


def gaussian_colors(g: Gaussians, view: View, sh_degree: int | None = None) -> torch.Tensor:
    """View-dependent RGB per Gaussian from SH (3DGS convention: +0.5, clamped at 0)."""
    K = g.sh.shape[1] if sh_degree is None else (sh_degree + 1) ** 2
    dirs = g.means - view.center.to(g.means)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return (eval_sh(g.sh[:, :K], dirs) + 0.5).clamp_min(0.0)


def rasterize(
    g: Gaussians,
    view: View,
    *,
    features: torch.Tensor | None = None,
    rgb: bool = True,
    sh_degree: int | None = None,
    background: torch.Tensor | None = None,
    near: float = 0.01,
    far: float = 1e10,
    backend: Backend = "auto",
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
) -> RenderOutput:
    """Render one view: colour (from SH, when `g.sh` is set and `rgb`), optional per-Gaussian
    `features` [N, D] (any D; 16 is the feature field), alpha, expected and median
    intersection depth and world normals. Differentiable w.r.t. every Gaussian tensor
    and `features`.
    """
    H, W = view.height, view.width
    want_rgb = rgb and g.sh is not None
    columns = []
    if want_rgb:
        columns.append(gaussian_colors(g, view, sh_degree))
    if features is not None:
        columns.append(features.to(g.means.dtype))
    bands = []
    for proj, fr in view_fragments(g, view, near=near, far=far, backend=backend, max_candidates=max_candidates):
        values = torch.cat(columns + [proj.normals], dim=1)
        bands.append(_composite(fr, values))
    acc, depth_sum, log_t, median, crossing = (torch.cat(parts) for parts in zip(*bands))
    alpha = (1.0 - torch.exp(log_t)).to(acc.dtype)
    out = RenderOutput(
        alpha=alpha.reshape(H, W),
        depth=(depth_sum / alpha.clamp_min(1e-10)).reshape(H, W),
        median_depth=median.reshape(H, W),
        crossing=crossing.reshape(H, W),
        normals=acc[:, -3:].reshape(H, W, 3),
    )
    c = 0
    if want_rgb:
        color = acc[:, :3]
        if background is not None:
            color = color + (1.0 - alpha)[:, None] * background.to(color)
        out.rgb = color.reshape(H, W, 3)
        c = 3
    if features is not None:
        out.features = acc[:, c : c + features.shape[1]].reshape(H, W, -1)
    return out


class _BlendSum(torch.autograd.Function):
    """out[p] = Σ_pairs of p  w · values[gaussian]: a CSR sparse product forward (pairs are
    already sorted by pixel, so the CSR is free to build), explicit gathers backward."""

    @staticmethod
    def forward(ctx, local, gid, w, values, n_pixels):
        crow = torch.zeros(n_pixels + 1, dtype=torch.long, device=local.device)
        crow[1:] = torch.cumsum(torch.bincount(local, minlength=n_pixels), 0)
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            A = torch.sparse_csr_tensor(crow, gid, w, (n_pixels, values.shape[0]), check_invariants=False)
        ctx.save_for_backward(local, gid, w, values)
        return A @ values

    @staticmethod
    def backward(ctx, grad):
        local, gid, w, values = ctx.saved_tensors
        g_pair = grad.index_select(0, local)
        grad_w = grad_values = None
        if ctx.needs_input_grad[2]:
            grad_w = (g_pair * values.index_select(0, gid)).sum(1)
        if ctx.needs_input_grad[3]:
            grad_values = torch.zeros_like(values).index_add_(0, gid, w[:, None] * g_pair)
        return None, None, grad_w, grad_values, None


def _composite(fr: Fragments, values: torch.Tensor):
    """Per-pixel sums over one band: Σ w·values, Σ w·z, Σ log(1-α), median depth, and the
    Gaussian where T crosses 0.5 (the same pair as `crosses`; -1 where none)."""
    y0, y1 = fr.rows
    n = (y1 - y0) * fr.width
    local = fr.pixel - y0 * fr.width
    w = fr.weight
    acc = _BlendSum.apply(local, fr.gaussian, w.to(values.dtype), values.contiguous(), n)
    depth_sum = w.new_zeros(n).index_add(0, local, w * fr.depth)
    log_t = fr.log_one_minus_alpha.new_zeros(n).index_add(0, local, fr.log_one_minus_alpha)
    # median: the last pair of each pixel whose T before it is still above 0.5
    with torch.no_grad():
        sel = torch.nonzero(fr.transmittance > 0.5).squeeze(1)
        last = torch.full((n,), -1, dtype=torch.long, device=local.device)
        last = last.scatter_reduce(0, local[sel], sel, reduce="amax")
    has = last >= 0
    median = torch.where(has, fr.depth[last.clamp_min(0)], torch.zeros_like(depth_sum)) if len(fr) else depth_sum
    crossing = torch.full((n,), -1, dtype=torch.long, device=local.device)
    if len(fr):
        at = last.clamp_min(0)
        hit = has & crosses(fr.transmittance[at], w.detach()[at], 0.5)
        crossing = torch.where(hit, fr.gaussian[at].long(), crossing)
    return acc, depth_sum, log_t, median, crossing


# ---------------------------------------------------------------- tracking


@dataclass
class Contributions:
    """Tracked rasterization of one view: which Gaussians render which pixels.

    Pairs are sorted by pixel, front to back within a pixel.
    """

    width: int
    height: int
    n_gaussians: int
    pixel: torch.Tensor  # [P] int64
    gaussian: torch.Tensor  # [P] int64
    transmittance: torch.Tensor  # [P] T before the Gaussian
    weight: torch.Tensor  # [P] α · T (its blending weight)

    def __len__(self) -> int:
        return int(self.pixel.shape[0])

    def select(self, criterion: Criterion) -> "Contributions":
        keep = selection_mask(criterion, self.transmittance, self.weight)
        return Contributions(
            self.width, self.height, self.n_gaussians,
            self.pixel[keep], self.gaussian[keep], self.transmittance[keep], self.weight[keep],
        )

    def mask_gaussians(self, label_map) -> "MaskGaussians":
        """The Gaussian set of every mask of a label map [H, W] (0 = no mask), in one
        vectorised pass: unique (label, Gaussian) pairs with the number of pixels."""
        labels = torch.as_tensor(label_map, device=self.pixel.device).reshape(-1).long()
        if labels.numel() != self.width * self.height:
            raise ValueError(f"label map has {labels.numel()} pixels, view has {self.width}x{self.height}")
        lab = labels[self.pixel.long()]
        inside = lab > 0
        key = lab[inside] * self.n_gaussians + self.gaussian[inside].long()
        key, counts = torch.unique(key, return_counts=True)
        return MaskGaussians(
            label=torch.div(key, self.n_gaussians, rounding_mode="floor"),
            gaussian=key % self.n_gaussians,
            pixels=counts,
        )


@dataclass
class MaskGaussians:
    """Sparse mask → Gaussian incidence: row i says mask `label[i]` contains Gaussian
    `gaussian[i]` through `pixels[i]` of its pixels. Sorted by label, then Gaussian."""

    label: torch.Tensor
    gaussian: torch.Tensor
    pixels: torch.Tensor

    def of(self, label: int) -> torch.Tensor:
        return self.gaussian[self.label == label]


def crosses(transmittance: torch.Tensor, weight: torch.Tensor, level: float) -> torch.Tensor:
    """The pair where the pixel's transmittance drops below `level` (at most one per pixel)."""
    return (transmittance > level) & (transmittance - weight < level)


def selection_mask(criterion: Criterion, transmittance: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Which pairs count as "the Gaussians that render this pixel":
    'transmittance': T before > 0.5, the front surface (the paper's definition, default);
    'crossing': only the Gaussian where T crosses 0.5 (at most one per pixel);
    'weight': blending weight α·T > 0.1 (the official code's current choice).
    """
    if criterion == "transmittance":
        return transmittance > 0.5
    if criterion == "crossing":
        return crosses(transmittance, weight, 0.5)
    if criterion == "weight":
        return weight > 0.1
    raise ValueError(f"unknown criterion {criterion!r}; expected one of {', '.join(CRITERIA)}")


def contributions(
    g: Gaussians,
    view: View,
    criterion: Criterion | None = "transmittance",
    *,
    near: float = 0.01,
    far: float = 1e10,
    backend: Backend = "auto",
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
) -> Contributions:
    """Tracked rasterization: the (pixel, Gaussian, T, weight) pairs of a view, filtered
    by `criterion` (None keeps every composited pair). No gradients."""
    parts = []
    with torch.no_grad():
        for _, fr in view_fragments(g, view, near=near, far=far, backend=backend, max_candidates=max_candidates):
            T, w = fr.transmittance, fr.weight
            keep = slice(None) if criterion is None else selection_mask(criterion, T, w)
            parts.append((fr.pixel[keep], fr.gaussian[keep], T[keep], w[keep]))
    pix, gid, T, w = (torch.cat(p) for p in zip(*parts))
    return Contributions(view.width, view.height, len(g), pix, gid, T, w)
