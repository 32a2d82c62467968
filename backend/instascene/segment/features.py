"""Contrastive 16-D feature field over the Gaussians (method.md §3).

Features are trained with geometry frozen, so every view is rendered through the
frozen-weight contribution cache (a sparse product, forward and backward). Three
ProtoNCE losses pull a sample towards the mean feature of its class and push it from
the other classes' means, each class with its own temperature:

  * intra-view 2D: rendered features of one view, classes = that view's (filtered) masks;
  * cross-view 2D (every `cross_every` steps): five consecutive views, classes = the
    multi-view-consistent instance labels;
  * 3D: the raw features of labelled Gaussians visible in the view, classes = coarse
    instances.
Weights 0.5 : 1 : 2.5 as the official code (its sums × 1e-6 are means here).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class FeatureParams:
    dim: int = 16
    iterations: int = 1000
    lr: float = 0.025
    samples: int = 32 * 1024
    cross_every: int = 10
    cross_views: int = 5
    weight_2d: float = 0.5
    weight_cross: float = 1.0
    weight_3d: float = 2.5
    seed: int = 0


def proto_nce(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """ProtoNCE with the adaptive per-class temperature φ_k = clip(10 Σ‖f − u_k‖ /
    (n_k ln(n_k + 1000)), 0.5, 1); `f` [S, D] unit rows, `y` [S] class ids ≥ 0."""
    classes, y = torch.unique(y, return_inverse=True)
    K = len(classes)
    if K < 2:
        return f.sum() * 0.0
    counts = torch.bincount(y, minlength=K).to(f.dtype)
    sums = torch.zeros(K, f.shape[1], dtype=f.dtype, device=f.device).index_add_(0, y, f)
    protos = sums / counts[:, None]
    with torch.no_grad():
        dist = (f - protos[y]).norm(dim=1)
        spread = torch.zeros(K, dtype=f.dtype, device=f.device).index_add_(0, y, dist)
        phi = (10.0 * spread / (counts * torch.log(counts + 1000.0))).clamp(0.5, 1.0)
    logits = (f @ protos.T) / phi[None, :]
    return F.cross_entropy(logits, y)


def _sample(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, n, (k,), generator=gen) if n > k else torch.arange(n)


def train_features(cache, labels_2d, labels_consistent, gaussian_labels: np.ndarray, visible_per_view,
                   p: FeatureParams = FeatureParams(), progress=None) -> torch.Tensor:
    """Train per-Gaussian features; returns unit features [N, dim].

    cache: the views' frozen blending weights, in capture order: render.PairStore (on
    disk) or render.ContributionCache (in memory) — anything with `render_pixels`;
    labels_2d / labels_consistent: per view [H, W] int (0 = unlabelled) or None;
    gaussian_labels: [N] coarse instance per Gaussian (-1 = none);
    visible_per_view: per view, an index array of the Gaussians visible in it.
    """
    gen = torch.Generator().manual_seed(p.seed)
    N, V = cache.n_gaussians, len(cache)
    feats = torch.nn.Parameter(F.normalize(torch.randn(N, p.dim, generator=gen), dim=1))
    opt = torch.optim.Adam([feats], lr=p.lr, eps=1e-15)
    flat2d = [None if m is None else torch.from_numpy(np.asarray(m).reshape(-1)).long() for m in labels_2d]
    flatc = [None if m is None else torch.from_numpy(np.asarray(m).reshape(-1)).long() for m in labels_consistent]
    glab = torch.from_numpy(gaussian_labels).long()
    vis_labelled = [torch.from_numpy(v[gaussian_labels[v] >= 0]).long() for v in visible_per_view]
    usable = [i for i in range(V) if flat2d[i] is not None]
    shown = None
    for it in range(p.iterations):
        i = usable[int(torch.randint(0, len(usable), (1,), generator=gen))]
        unit = F.normalize(feats, dim=1)
        loss = unit.sum() * 0.0
        # intra-view 2D on this view's masks
        lab = flat2d[i]
        pix = torch.nonzero(lab > 0).squeeze(1)
        if len(pix):
            pix = pix[_sample(len(pix), p.samples, gen)]
            rendered = cache.render_pixels(i, unit, pix)
            loss = loss + p.weight_2d * proto_nce(F.normalize(rendered, dim=1), lab[pix])
        # cross-view 2D on consistent labels of consecutive views
        if p.cross_every and it % p.cross_every == 0:
            start = int(torch.randint(0, max(1, V - p.cross_views + 1), (1,), generator=gen))
            fs, ys = [], []
            for j in range(start, min(V, start + p.cross_views)):
                if flatc[j] is None:
                    continue
                pj = torch.nonzero(flatc[j] > 0).squeeze(1)
                if len(pj):
                    pj = pj[_sample(len(pj), p.samples // p.cross_views, gen)]
                    fs.append(cache.render_pixels(j, unit, pj))
                    ys.append(flatc[j][pj])
            if fs:
                loss = loss + p.weight_cross * proto_nce(F.normalize(torch.cat(fs), dim=1), torch.cat(ys))
        # 3D on labelled Gaussians visible in this view
        gi = vis_labelled[i]
        if len(gi):
            gi = gi[_sample(len(gi), p.samples, gen)]
            loss = loss + p.weight_3d * proto_nce(unit[gi], glab[gi])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress and ((it + 1) % 5 == 0 or it + 1 == p.iterations):  # also where a cancel is noticed
            if (it + 1) % 50 == 0 or shown is None:  # the loss shown (and logged) changes every 50 steps
                shown = float(loss.detach())
            progress(it + 1, p.iterations, shown)
    return F.normalize(feats.detach(), dim=1)
