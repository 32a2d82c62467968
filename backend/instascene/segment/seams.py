"""Parts of one surface are one object: instances that meet in the views on continuous, convex surface.

SAM cuts some objects into the same parts in every view — a soccer ball's patches, the
blocks of a jenga tower, the faces of a toy brick — so no mask joins them, and neither the
view consensus nor merge.py can: both judge by what the masks join. The rendered views
still tell the parts of one object from two objects. Where two instances meet in an
image, two objects meet mostly along an occluding contour (one in front of the other: a
depth jump), and where they do touch they meet in a concave crease (a mug standing on a
box, a torus lying against a toy); the parts of one object meet along surface that runs
on or turns over a convex edge (the top and the sides of a brick). That is the convexity
rule of locally-convex-connected-patches segmentation (Stein et al., CVPR 2014), read off
the image boundary instead of a point cloud's adjacency.

Every view's front surface (the Gaussian each pixel's chosen pair belongs to) gives the
image-adjacent Gaussian pairs — pixel neighbours rendered by different Gaussians. A pair
*separates* when their depths differ by more than `jump` times the nearer, or when their
surfels fold into a concave crease: with both normals turned to the camera that sees
them, (n_a − n_b)·(p_a − p_b)/|p_a − p_b| < −`crease` (0.2: normals turning toward each
other by about 12°). Summed over the views these are two sparse [N, N] counts; the
boundary between two instances, and the share of it that separates, are products with
the labels' one-hot, for any labelling. Measured on the practice scenes and built-in
seeds with SAM masks: see docs/benchmarks.md, "Session 22".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .merge import join_pairs


@dataclass
class SeamParams:
    jump: float = 0.05  # neighbouring pixels whose depths differ by more than this x the nearer: a depth jump
    crease: float = 0.2  # surfels whose camera-facing normals fold toward each other by more than this: a concave crease
    max_apart: float = 0.35  # join two instances when less than this share of their image boundary separates
    min_pixels: int = 20  # ... and the views show at least this many boundary pixel pairs between them


class ImageSeams:
    """Image-adjacent Gaussian pairs summed over views: `boundary` [N, N] counts all of them,
    `apart` those across a depth jump or a concave crease (both upper-triangular: i < j)."""

    def __init__(self, means: np.ndarray, normals: np.ndarray, p: SeamParams = SeamParams()):
        self.means, self.normals, self.p = np.asarray(means, np.float64), np.asarray(normals, np.float64), p
        self.n = len(self.means)
        self.boundary = sp.csr_matrix((self.n, self.n), dtype=np.float32)
        self.apart = sp.csr_matrix((self.n, self.n), dtype=np.float32)

    def add_view(self, pixel: np.ndarray, gaussian: np.ndarray, width: int, height: int, world_to_camera: np.ndarray):
        """One view's pairs, sorted by pixel and front to back within a pixel (as
        `Contributions` holds them), seen by the camera `world_to_camera` [4, 4]."""
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
        R, t = world_to_camera[:3, :3], world_to_camera[:3, 3]
        pa, pb = self.means[a], self.means[b]
        da, db = pa @ R[2] + t[2], pb @ R[2] + t[2]
        jump = np.abs(da - db) > self.p.jump * np.minimum(da, db)
        eye = -R.T @ t
        na, nb = self.normals[a], self.normals[b]
        na = na * np.sign(np.einsum("ij,ij->i", na, eye - pa))[:, None]  # 2DGS normals have no side: face the camera
        nb = nb * np.sign(np.einsum("ij,ij->i", nb, eye - pb))[:, None]
        d = pa - pb
        fold = np.einsum("ij,ij->i", na - nb, d) / np.maximum(np.linalg.norm(d, axis=1), 1e-12)
        apart = (jump | (fold < -self.p.crease)).astype(np.float32)
        shape = (self.n, self.n)
        self.boundary = self.boundary + sp.csr_matrix((np.ones(len(a), np.float32), (a, b)), shape=shape)
        self.apart = self.apart + sp.csr_matrix((apart, (a, b)), shape=shape)

    def between(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(boundary, apart): [K, K] symmetric pixel-pair counts between labels 0..K-1
        (-1 = none)."""
        K = int(labels.max()) + 1 if len(labels) else 0
        idx = np.flatnonzero(labels >= 0)
        L = sp.csr_matrix((np.ones(len(idx), np.float32), (idx, labels[idx])), shape=(self.n, K))
        out = []
        for m in (self.boundary, self.apart):
            c = np.asarray((L.T @ m @ L).todense(), np.float64)
            c = c + c.T
            np.fill_diagonal(c, 0.0)
            out.append(c)
        return out[0], out[1]


def join_continuous(labels: np.ndarray, seams: ImageSeams) -> np.ndarray:
    """Object labels (-1 = background) with the instances whose image boundary mostly runs
    on continuous, convex surface joined (connected components), renumbered 0..K-1."""
    K = int(labels.max()) + 1 if len(labels) else 0
    if K < 2:
        return labels
    p = seams.p
    boundary, apart = seams.between(labels)
    return join_pairs(labels, (boundary >= p.min_pixels) & (apart < p.max_apart * boundary))
