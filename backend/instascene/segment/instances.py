"""Final instances from the feature field, background, and click queries (method.md §4).

Per coarse instance, the mean of its Gaussians' unit features is its prototype; a
Gaussian joins the instance whose prototype it matches best, if the cosine is at
least `threshold` (0.9, the official export). A Gaussian that matches nothing but sits
among an instance's Gaussians (majority of its spatial neighbours) and still agrees
with it (cosine ≥ `fill_threshold`) joins too — inner layers that no mask ever showed.
Everything else is background. Background instances (the table, floor, walls) are
found geometrically: most of their Gaussians lie on the scene's dominant plane, or
they span a large part of the scene.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree


@dataclass
class InstanceParams:
    threshold: float = 0.9
    fill_threshold: float = 0.6
    fill_neighbours: int = 8
    plane_fraction: float = 0.5  # instance is background if this share lies on the dominant plane
    max_extent_fraction: float = 0.6  # ... or its box spans this share of the scene's


def dominant_plane(points: np.ndarray, tol: float, iters: int = 256, seed: int = 0):
    """RANSAC plane (n, d) with n·x + d = 0 holding the most points within `tol`."""
    rng = np.random.default_rng(seed)
    pts = points if len(points) <= 50000 else points[rng.choice(len(points), 50000, replace=False)]
    tri = pts[rng.integers(0, len(pts), (iters, 3))]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    norm = np.linalg.norm(n, axis=1)
    ok = norm > 1e-12
    n, tri = n[ok] / norm[ok, None], tri[ok]
    d = -np.einsum("ij,ij->i", n, tri[:, 0])
    scores = [(np.abs(pts @ n[i] + d[i]) < tol).sum() for i in range(0, len(n), 1)] if len(n) else [0]
    best = int(np.argmax(scores))
    return n[best], d[best]


def background_instances(instances, means: np.ndarray, tol: float, p: InstanceParams) -> np.ndarray:
    """Boolean per coarse instance: is it background (table/floor/wall)?"""
    if not instances:
        return np.zeros(0, bool)
    n, d = dominant_plane(means, tol)
    on_plane = np.abs(means @ n + d) < tol
    lo, hi = np.percentile(means, 1, axis=0), np.percentile(means, 99, axis=0)
    scene_diag = float(np.linalg.norm(hi - lo))
    out = []
    for inst in instances:
        pts = means[inst.gaussians]
        diag = float(np.linalg.norm(np.percentile(pts, 99, axis=0) - np.percentile(pts, 1, axis=0)))
        out.append(on_plane[inst.gaussians].mean() > p.plane_fraction or diag > p.max_extent_fraction * scene_diag)
    return np.array(out)


def assign_instances(features: torch.Tensor, instances, is_background: np.ndarray, means: np.ndarray,
                     p: InstanceParams) -> np.ndarray:
    """Label per Gaussian: index of its object instance (background instances excluded,
    objects renumbered 0..K-1 in the order given), -1 for background."""
    N = features.shape[0]
    objects = [i for i in range(len(instances)) if not is_background[i]]
    labels = np.full(N, -1, np.int64)
    if not objects:
        return labels
    protos = torch.stack([features[torch.from_numpy(instances[i].gaussians)].mean(0) for i in range(len(instances))])
    score = features @ protos.T  # [N, I]: instances, not masks — small
    best = score.argmax(1).numpy()
    best_score = score.max(1).values.numpy()
    obj_index = np.full(len(instances), -1)
    obj_index[objects] = np.arange(len(objects))
    chosen = best_score >= p.threshold
    labels[chosen] = obj_index[best[chosen]]
    # an instance whose prototype selects nothing falls back to its coarse Gaussians
    for k, i in enumerate(objects):
        if not (labels == k).any():
            labels[instances[i].gaussians] = k
    # fill: unlabelled Gaussians surrounded by one instance and agreeing with it
    todo = np.flatnonzero((labels < 0) & (obj_index[best] >= 0) & (best_score >= p.fill_threshold))
    if len(todo):
        tree = cKDTree(means)
        _, nb = tree.query(means[todo], k=p.fill_neighbours + 1)
        votes = labels[nb[:, 1:]]
        target = obj_index[best[todo]]
        agree = (votes == target[:, None]).sum(1) > p.fill_neighbours // 2
        labels[todo[agree]] = target[agree]
    return labels


def query_similar(features: torch.Tensor, gaussian: int, threshold: float = 0.8) -> np.ndarray:
    """Gaussians whose feature matches that of `gaussian` (cosine ≥ threshold): click-to-select."""
    score = features @ features[gaussian]
    return torch.nonzero(score >= threshold).squeeze(1).numpy()
