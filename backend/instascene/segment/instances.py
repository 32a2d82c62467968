"""Final instances, background, and click queries (method.md §4).

The official export keeps a Gaussian in a coarse instance when its feature matches the
instance's mean feature at cosine ≥ 0.9, and leaves every other Gaussian behind. Here
the coarse instances are seeds: every Gaussian's labels come from the views' evidence
spread over the surfels' neighbour graph (propagate.py), so that hidden and
boundary Gaussians join the object they sit on and nothing is "undecided".
Background instances (the table, floor, walls) are found geometrically: most of their
Gaussians lie on the scene's dominant plane, or they span a large part of the scene.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.spatial import cKDTree

from .propagate import PropagateParams, propagate_labels


@dataclass
class InstanceParams:
    plane_fraction: float = 0.5  # instance is background if this share lies flat on the support plane
    max_extent_fraction: float = 0.6  # ... or its box spans this share of the scene's
    propagate: PropagateParams = field(default_factory=PropagateParams)


def dominant_plane(points: np.ndarray, tol: float, iters: int = 256, seed: int = 0):
    """Plane (n, d) with n·x + d = 0 holding the most points within `tol`: RANSAC over
    point triples, then refined by least squares on its inliers (a plane from three
    points is tilted by up to tol / its span, enough to lift the far side of a table
    out of a tight tolerance)."""
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
    n, d = n[best], d[best]
    for _ in range(2):
        inliers = pts[np.abs(pts @ n + d) < tol]
        if len(inliers) < 3:
            break
        centre = inliers.mean(0)
        refined = np.linalg.svd(inliers - centre, full_matrices=False)[2][2]
        n = refined if refined @ n >= 0 else -refined
        d = -float(n @ centre)
    return n, d


def on_support_plane(means: np.ndarray, normals: np.ndarray, tol: float, plane=None) -> np.ndarray:
    """Gaussians lying flat on the dominant plane (the table or floor): within `tol` of it
    and facing along its normal. Objects resting on it touch it only with their unseen
    bottoms and their sides, whose surfels stand across the plane."""
    n, d = plane if plane is not None else dominant_plane(means, tol)
    return (np.abs(means @ n + d) < tol) & (np.abs(normals @ n) > 0.9)


def background_instances(instances, means: np.ndarray, flat: np.ndarray, p: InstanceParams) -> np.ndarray:
    """Boolean per coarse instance: is it background (table/floor/wall)? Most of its
    Gaussians lie `flat` on the support plane (on_support_plane: near it *and* facing
    along its normal — an object only a few millimetres tall, a tray or a coin, stands
    near the plane but its rim does not lie on it), or it spans a large part of the scene."""
    if not instances:
        return np.zeros(0, bool)
    lo, hi = np.percentile(means, 1, axis=0), np.percentile(means, 99, axis=0)
    scene_diag = float(np.linalg.norm(hi - lo))
    out = []
    for inst in instances:
        pts = means[inst.gaussians]
        diag = float(np.linalg.norm(np.percentile(pts, 99, axis=0) - np.percentile(pts, 1, axis=0)))
        out.append(flat[inst.gaussians].mean() > p.plane_fraction or diag > p.max_extent_fraction * scene_diag)
    return np.array(out)


def assign_instances(evidence: np.ndarray, is_background: np.ndarray, flat: np.ndarray, normals: np.ndarray,
                     means: np.ndarray, radius: float, min_gaussians: int, p: InstanceParams,
                     features: np.ndarray | None = None, masks: np.ndarray | None = None) -> np.ndarray:
    """Label per Gaussian: its object instance (objects renumbered 0..K-1 in coarse order),
    -1 for background.

    `evidence` [N, n_coarse]: each Gaussian's rendering weight into each coarse instance's
    consistent 2D labels (propagate.label_evidence); background instances' evidence
    counts for the background, as do Gaussians lying `flat` on the support plane
    (clamped). `normals`: the surfels' unit normals, for the surface graph; `features`
    weight it only where `p.propagate.feature_temperature` is set. `radius`: the scene's
    connection distance; an object left with fewer than `min_gaussians` (the least a
    tracked mask needs) is no object. `masks` [n_coarse]: how many masks each coarse
    instance holds (graphcut.refine_labels' guard against emptying an object)."""
    is_background = np.asarray(is_background, bool)
    objects = np.flatnonzero(~is_background)
    classes = np.concatenate([evidence[:, is_background].sum(1, keepdims=True), evidence[:, objects]], axis=1)
    support = None if masks is None else np.r_[0, np.asarray(masks)[objects]]
    labels = propagate_labels(classes, flat, np.asarray(normals, np.float64), means, radius, min_gaussians,
                              p.propagate, None if features is None else np.asarray(features, np.float32),
                              support) - 1
    present = np.unique(labels[labels >= 0])
    new_index = np.full(len(objects) + 1, -1)
    new_index[present] = np.arange(len(present))
    return np.where(labels >= 0, new_index[np.maximum(labels, 0)], -1)


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
