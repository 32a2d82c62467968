"""Only the object moves: before completion, each instance's detached pieces go to the
body they lie on.

The segmentation attacks the cause (segment/propagate.py keeps each instance's
connected body on its neighbour graph); this is the guard at materialization, for
runs from elsewhere or edited by hand: an instance keeps its largest piece and every
piece of at least `min_piece` of its Gaussians, linked within `link` surfel spacings.
A smaller detached piece goes whole to a neighbour when it touches that neighbour
(within `link`) and comes closer to it than to its own instance's body: a neighbour's
fragment, which must not travel with the moved object. Any other piece stays — an
object's own outlying splats, just beyond `link` of the rest, would otherwise float
where the object stood — unless none of it lies within `reach` spacings of its
instance's body (a floater: background). Measured (session 12) on the built-in and
practice scenes: of the 10 pieces the old rule (every detached piece to the background)
shed, 8 were the object's own; one touched a neighbour and was the neighbour's (54
Gaussians on practice 22); one lay 8 spacings from a neighbour, whose it was, and 10
from its own body (6 Gaussians on seed 2: it stays, a stray).

Measured and not shipped (session 8): a feature check (a Gaussian whose 16-D feature
matches a touching class's mean better than its own instance's by 0.2–0.4 in cosine
moves there) made the built-in demo scene and practice scene 21 slightly worse
(strays +0.2 %, left in background +0.1–0.2 %): the segmentation's labels already
agree with the features where the features are sure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from .shape import surfel_spacing


@dataclass
class GuardParams:
    link: float = 6.0  # surfel spacings: Gaussians this close are one piece (3 cut real objects apart)
    min_piece: float = 0.1  # detached pieces at least this share of the instance stay
    reach: float = 18.0  # surfel spacings: a piece farther than this from every instance body is a floater


def guard_labels(labels: np.ndarray, means: np.ndarray, p: GuardParams | None = None) -> tuple[np.ndarray, dict]:
    """Cleaned labels (-1 background) and, per instance id, how many Gaussians it shed."""
    p = p or GuardParams()
    out = labels.copy()
    ids = [int(k) for k in np.unique(labels) if k >= 0]
    if not ids:
        return out, {}
    spacing = surfel_spacing(means[labels >= 0])
    for k in ids:
        idx = np.flatnonzero(labels == k)
        pairs = cKDTree(means[idx]).query_pairs(p.link * spacing, output_type="ndarray")
        G = sp.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(idx), len(idx)))
        _, comp = connected_components(G, directed=False)
        sizes = np.bincount(comp)
        keep = (sizes[comp] >= p.min_piece * len(idx)) | (comp == np.argmax(sizes))
        if keep.all():
            continue
        shed, piece = idx[~keep], comp[~keep]
        pieces, which = np.unique(piece, return_inverse=True)
        # per piece: how close it comes to its own body and to another instance (and which)
        d_own = _closest(means[idx[keep]], means[shed], p.reach * spacing)
        others = np.flatnonzero((labels >= 0) & (labels != k))
        d_other, j = _closest(means[others], means[shed], p.link * spacing, index=True)
        own = np.full(len(pieces), np.inf)
        np.minimum.at(own, which, d_own)
        order = np.lexsort((d_other, which))  # by piece, nearest to another instance first
        first = order[np.r_[True, which[order][1:] != which[order][:-1]]]
        other = d_other[first]
        neighbour = labels[others[np.minimum(j[first], len(others) - 1)]] if len(others) else np.full(len(first), -1)
        dest = np.where(np.isfinite(other) & (other < own), neighbour, np.where(np.isfinite(own), k, -1))
        out[shed] = dest[which]
    return out, {k: int(((labels == k) & (out != k)).sum()) for k in ids}


def _closest(body: np.ndarray, points: np.ndarray, reach: float, index: bool = False):
    """Per point, the distance to the nearest of `body` (inf beyond `reach`, or when
    `body` is empty), and with `index` which one."""
    if not len(body):
        d = np.full(len(points), np.inf)
        return (d, np.zeros(len(points), np.int64)) if index else d
    d, j = cKDTree(body).query(points, distance_upper_bound=reach)
    return (d, j) if index else d
