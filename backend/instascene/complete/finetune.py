"""The object's 2DGS fine-tune: new Gaussians fitted to the real and the generated views.

The known region stays as it was: observed Gaussians are frozen, and the new ones
(placed on the closed shape where nothing was observed) keep their geometry. What is
optimised is their colour, through the contribution caches of the ring and of the
best real cameras — a sparse linear model, so each step costs a few sparse products
instead of a rasterization (the same trick the feature field uses). Real views count
only on pixels where the scene shows this object unoccluded; generated views on the
object's silhouette.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class FinetuneParams:
    iterations: int = 150
    lr: float = 0.05
    views_per_step: int = 8
    real_weight: float = 1.0  # the paper weighs real and generated views alike (L1)
    generated_weight: float = 1.0


@dataclass
class FitView:
    cache_index: int  # which view of `cache`
    target: np.ndarray  # [H, W, 3] in [0, 1]
    weight: np.ndarray  # [H, W] pixel weights (0 = ignored)
    background: float  # the view's background value where the object leaves it uncovered


def fit_colors(caches: list, views: list[list[FitView]], colors: torch.Tensor, new: torch.Tensor,
               p: FinetuneParams, seed: int = 0, progress=None) -> torch.Tensor:
    """Colours [N, 3] with rows `new` (bool [N]) optimised by L1 over the views (one list
    of FitViews per cache), the other rows unchanged."""
    fixed = colors.detach().clone()
    free = torch.logit(colors[new].clamp(1e-3, 1 - 1e-3)).clone().requires_grad_(True)
    opt = torch.optim.Adam([free], lr=p.lr)
    items = [(c, v) for c, vs in zip(caches, views) for v in vs]
    if not items or not bool(new.any()):
        return fixed
    targets = [(torch.as_tensor(v.target), torch.as_tensor(v.weight)) for _, v in items]
    ones = torch.ones(len(fixed), 1)
    alphas = [c.render(v.cache_index, ones)[..., 0] for c, v in items]
    rng = np.random.default_rng(seed)
    for it in range(p.iterations):
        pick = rng.choice(len(items), min(p.views_per_step, len(items)), replace=False)
        full = fixed.clone()
        full[new] = torch.sigmoid(free)
        loss = 0.0
        for j in pick:
            cache, v = items[j]
            img = cache.render(v.cache_index, full) + (1 - alphas[j])[..., None] * v.background
            y, w = targets[j]
            loss = loss + (w[..., None] * (img - y).abs()).sum() / (3 * w.sum().clamp_min(1.0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss = loss.detach()
        if progress:
            progress(it + 1, p.iterations, f"loss {loss.item() / len(pick):.4f}")
    out = fixed.clone()
    out[new] = torch.sigmoid(free.detach())
    return out
