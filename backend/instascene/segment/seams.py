"""Parts of one surface are one object: instances that meet in the images on continuous depth.

SAM cuts some objects into the same parts in every view — a soccer ball's patches, the
blocks of a jenga tower, the faces of a toy brick — so no mask joins them, and neither the
view consensus nor merge.py can: both judge by what the masks join. The rendered views
still tell the parts of one object from two objects. Where two instances meet in an
image, two objects meet mostly along an occluding contour (one in front of the other: a
depth jump) and touch only along a short contact; the parts of one object meet along
surface that runs on. Measured on the practice scenes with SAM masks (docs/benchmarks.md,
session 22): of the image boundary between two parts of one object 0–16 % lies on a
depth jump, between two different objects that touch 23–94 %.

Every view's front surface (the Gaussian each pixel's chosen pair belongs to) gives the
image-adjacent Gaussian pairs — pixel neighbours rendered by different Gaussians — each
marked when their depths differ by more than `jump` times the nearer. Summed over the
views they are two sparse [N, N] counts; the boundary between two instances, and its
share on a jump, are products with the labels' one-hot, for any labelling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components


@dataclass
class SeamParams:
    jump: float = 0.05  # neighbouring pixels whose depths differ by more than this x the nearer: a depth jump
    max_on_jump: float = 0.15  # join two instances when less than this share of their image boundary is on a jump
    min_pixels: int = 20  # ... and the views show at least this many boundary pixel pairs between them


class ImageSeams:
    """Image-adjacent Gaussian pairs summed over views: `boundary` [N, N] counts all of them,
    `on_jump` those across a depth jump (both upper-triangular: i < j)."""

    def __init__(self, n_gaussians: int, jump: float = SeamParams.jump):
        self.n, self.jump = n_gaussians, jump
        self.boundary = sp.csr_matrix((n_gaussians, n_gaussians), dtype=np.float32)
        self.on_jump = sp.csr_matrix((n_gaussians, n_gaussians), dtype=np.float32)

    def add_view(self, pixel: np.ndarray, gaussian: np.ndarray, width: int, height: int, depth: np.ndarray):
        """One view's pairs, sorted by pixel and front to back within a pixel (as
        `Contributions` holds them); `depth` [N]: each Gaussian's camera depth in this view."""
        pixel, gaussian = np.asarray(pixel, np.int64), np.asarray(gaussian, np.int64)
        first = np.ones(len(pixel), bool)
        first[1:] = pixel[1:] != pixel[:-1]
        front = np.full(width * height, -1, np.int64)
        front[pixel[first]] = gaussian[first]
        front = front.reshape(height, width)
        a = np.concatenate([front[:, :-1].ravel(), front[:-1, :].ravel()])
        b = np.concatenate([front[:, 1:].ravel(), front[1:, :].ravel()])
        keep = (a >= 0) & (b >= 0) & (a != b)
        a, b = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
        da, db = depth[a], depth[b]
        jumps = (np.abs(da - db) > self.jump * np.minimum(da, db)).astype(np.float32)
        shape = (self.n, self.n)
        self.boundary = self.boundary + sp.csr_matrix((np.ones(len(a), np.float32), (a, b)), shape=shape)
        self.on_jump = self.on_jump + sp.csr_matrix((jumps, (a, b)), shape=shape)

    def between(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(boundary, on_jump): [K, K] symmetric pixel-pair counts between labels 0..K-1
        (-1 = none)."""
        K = int(labels.max()) + 1 if len(labels) else 0
        idx = np.flatnonzero(labels >= 0)
        L = sp.csr_matrix((np.ones(len(idx), np.float32), (idx, labels[idx])), shape=(self.n, K))
        out = []
        for m in (self.boundary, self.on_jump):
            c = np.asarray((L.T @ m @ L).todense(), np.float64)
            c = c + c.T
            np.fill_diagonal(c, 0.0)
            out.append(c)
        return out[0], out[1]


def join_continuous(labels: np.ndarray, seams: ImageSeams, p: SeamParams = SeamParams()) -> np.ndarray:
    """Object labels (-1 = background) with the instances whose image boundary runs on
    continuous depth joined (connected components), renumbered 0..K-1."""
    K = int(labels.max()) + 1 if len(labels) else 0
    if K < 2:
        return labels
    boundary, on_jump = seams.between(labels)
    join = (boundary >= p.min_pixels) & (on_jump < p.max_on_jump * boundary)
    if not join.any():
        return labels
    _, comp = connected_components(sp.csr_matrix(join.astype(np.float64)), directed=False)
    _, index = np.unique(comp, return_inverse=True)
    return np.where(labels >= 0, index[np.maximum(labels, 0)], -1)
