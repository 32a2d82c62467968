"""Final instances from the feature field, background, and click queries (method.md §4).

Per coarse instance, the mean of its Gaussians' unit features is its prototype. A
Gaussian keeps its voted coarse instance unless the features clearly prefer another
(cosine ≥ `threshold` there, < `fill_threshold` with its own); a Gaussian without a
vote joins the instance whose prototype it matches at cosine ≥ `threshold` (0.9, the
official export), or, failing that, the instance that most of its spatial neighbours
belong to if its feature agrees (cosine ≥ `fill_threshold`).
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
    fill_threshold: float = 0.5
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


def on_support_plane(means: np.ndarray, normals: np.ndarray, tol: float, plane=None) -> np.ndarray:
    """Gaussians lying flat on the dominant plane (the table or floor): within `tol` of it
    and facing along its normal. Objects resting on it touch it only with their unseen
    bottoms and their sides, whose surfels stand across the plane."""
    n, d = plane if plane is not None else dominant_plane(means, tol)
    return (np.abs(means @ n + d) < tol) & (np.abs(normals @ n) > 0.9)


def background_instances(instances, means: np.ndarray, tol: float, p: InstanceParams, plane=None) -> np.ndarray:
    """Boolean per coarse instance: is it background (table/floor/wall)?"""
    if not instances:
        return np.zeros(0, bool)
    n, d = plane if plane is not None else dominant_plane(means, tol)
    on_plane = np.abs(means @ n + d) < tol
    lo, hi = np.percentile(means, 1, axis=0), np.percentile(means, 99, axis=0)
    scene_diag = float(np.linalg.norm(hi - lo))
    out = []
    for inst in instances:
        pts = means[inst.gaussians]
        diag = float(np.linalg.norm(np.percentile(pts, 99, axis=0) - np.percentile(pts, 1, axis=0)))
        out.append(on_plane[inst.gaussians].mean() > p.plane_fraction or diag > p.max_extent_fraction * scene_diag)
    return np.array(out)


def assign_instances(features: torch.Tensor, coarse_labels: np.ndarray, is_background: np.ndarray,
                     means: np.ndarray, p: InstanceParams, min_gaussians: int) -> np.ndarray:
    """Label per Gaussian: its object instance (background instances and objects left
    with fewer than `min_gaussians` excluded — the least a tracked mask needs — objects
    renumbered 0..K-1 in coarse order), -1 for background.

    `coarse_labels`: the dense coarse instance of each Gaussian (-1 = none), which also
    defines each instance's prototype (mean unit feature)."""
    N = features.shape[0]
    n_coarse = len(is_background)
    objects = [i for i in range(n_coarse) if not is_background[i] and (coarse_labels == i).any()]
    labels = np.full(N, -1, np.int64)
    if not objects:
        return labels
    lab_t = torch.from_numpy(np.maximum(coarse_labels, 0))
    has = torch.from_numpy(coarse_labels >= 0)
    sums = torch.zeros(n_coarse, features.shape[1]).index_add_(0, lab_t[has], features[has])
    counts = torch.bincount(lab_t[has], minlength=n_coarse).clamp_min(1)
    protos = sums / counts[:, None]
    score = features @ protos.T  # [N, instances]: small
    best = score.argmax(1).numpy()
    best_score = score.max(1).values.numpy()
    obj_index = np.full(n_coarse, -1)
    obj_index[objects] = np.arange(len(objects))
    # the voted coarse label stands unless the features clearly prefer another instance
    own = np.take_along_axis(score.numpy(), np.maximum(coarse_labels, 0)[:, None], 1)[:, 0]
    voted = coarse_labels >= 0
    switch = voted & (best_score >= p.threshold) & (own < p.fill_threshold)
    keep = voted & ~switch
    labels[keep] = obj_index[coarse_labels[keep]]
    # Gaussians without a vote (or switched) follow the features where they are sure
    chosen = (~voted | switch) & (best_score >= p.threshold)
    labels[chosen] = obj_index[best[chosen]]
    # fill: unlabelled Gaussians surrounded by one instance and agreeing with it
    todo = np.flatnonzero((labels < 0) & ~voted & (obj_index[best] >= 0) & (best_score >= p.fill_threshold))
    if len(todo):
        tree = cKDTree(means)
        _, nb = tree.query(means[todo], k=p.fill_neighbours + 1)
        votes = labels[nb[:, 1:]]
        target = obj_index[best[todo]]
        agree = (votes == target[:, None]).sum(1) > p.fill_neighbours // 2
        labels[todo[agree]] = target[agree]
    # an instance the features emptied down to a few Gaussians is no object
    sizes = np.bincount(labels[labels >= 0], minlength=len(objects))
    kept = sizes >= min_gaussians
    new_index = np.where(kept, np.cumsum(kept) - 1, -1)
    labels[labels >= 0] = new_index[labels[labels >= 0]]
    return labels


def query_similar(features: torch.Tensor, gaussian: int, threshold: float = 0.8) -> np.ndarray:
    """Gaussians whose feature matches that of `gaussian` (cosine ≥ threshold): click-to-select."""
    score = features @ features[gaussian]
    return torch.nonzero(score >= threshold).squeeze(1).numpy()


def gaussian_at_pixel(g, view, x: int, y: int) -> int | None:
    """The Gaussian a user clicks at pixel (x, y) of `view`: the one where transmittance
    crosses 0.5 (the visible surface), or None on empty background."""
    from ..render import contributions

    c = contributions(g, view, "crossing")
    hit = torch.nonzero(c.pixel == y * view.width + x).squeeze(1)
    return int(c.gaussian[hit[0]]) if len(hit) else None


def gaussian_near_point(means: np.ndarray | cKDTree, point, max_distance: float | None = None) -> int | None:
    """The Gaussian whose centre is nearest to a 3D point (None if farther than max_distance).
    `means` may be a prebuilt cKDTree of them, for repeated clicks."""
    tree = means if isinstance(means, cKDTree) else cKDTree(means)
    d, i = tree.query(np.asarray(point, dtype=np.float64))
    return None if max_distance is not None and d > max_distance else int(i)


def query_instance(labels: np.ndarray, features: torch.Tensor, gaussian: int | None, threshold: float = 0.8) -> dict:
    """What a click selects: the Gaussian's instance (-1 = background) with all its
    Gaussians, and the Gaussians of similar feature (for picking parts or leftovers)."""
    if gaussian is None:
        return {"gaussian": None, "instance": None, "instance_gaussians": [], "similar_gaussians": []}
    inst = int(labels[gaussian])
    members = np.flatnonzero(labels == inst) if inst >= 0 else np.zeros(0, int)
    return {"gaussian": gaussian, "instance": inst, "instance_gaussians": members,
            "similar_gaussians": query_similar(features, gaussian, threshold)}
