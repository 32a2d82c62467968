"""Spatial Gaussian tracker: each 2D mask → the Gaussians that render it (method.md §1).

For every view, tracked rasterization gives the front-surface (pixel, Gaussian) pairs;
a label map then gives every mask's Gaussian set in one vectorised pass. A Gaussian
whose pixels straddle a mask boundary belongs to the mask holding most of its pixels
(the official code keeps whichever mask was written last), so within one frame every
Gaussian is in at most one mask. Everything is kept as sparse matrices over a global
mask index (frame, label) — never a dense Gaussians × masks array:

  A  [M, N]  mask m contains Gaussian g (masks with too few Gaussians dropped)
  U  [F, N]  Gaussian g lies in some kept mask of frame f
  W  [F, N]  Gaussian g is visible (front surface) anywhere in frame f
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass
class MaskTracks:
    n_gaussians: int
    frames: list[str]  # camera names, in view order
    frame_of: np.ndarray  # [M] frame index of each mask
    label_of: np.ndarray  # [M] label of each mask in its frame's label map
    A: sp.csr_matrix  # [M, N] bool
    U: sp.csr_matrix  # [F, N] bool
    W: sp.csr_matrix  # [F, N] bool
    pixels: np.ndarray  # [M] pixel count of each mask

    @property
    def n_masks(self) -> int:
        return len(self.frame_of)

    def sizes(self) -> np.ndarray:
        return np.asarray(self.A.sum(axis=1)).ravel()


def mask_interior(labels: np.ndarray, boundary_px: int) -> np.ndarray:
    """`labels` with the pixels within `boundary_px` of a label change set to 0. Mask
    boundaries are where SAM errs and where splats of both sides blend; at a few hundred
    pixels across they hold a large share of a small object's pixels."""
    if boundary_px <= 0:
        return labels
    from scipy import ndimage

    edge = np.zeros(labels.shape, bool)
    dx = labels[:, 1:] != labels[:, :-1]
    dy = labels[1:, :] != labels[:-1, :]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:, :] |= dy
    edge[:-1, :] |= dy
    if boundary_px > 1:
        edge = ndimage.binary_dilation(edge, iterations=boundary_px - 1)
    return np.where(edge, 0, labels)


def _bool_csr(rows, cols, shape) -> sp.csr_matrix:
    m = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=shape)
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


class MaskTracker:
    """The tracker fed one view at a time, so that a view's pairs can go as soon as it is
    rasterized: what it keeps grows with the masks' Gaussian sets, not the pixels.

    `add_view(contrib, labels)`: the view's composited pairs (`render.Contributions`,
    selected with `criterion`, or already selected when it is None) and its label map
    [H, W] (0 = no mask; None for a view without masks). Pixels within `boundary_px` of a
    mask boundary are ignored (`mask_interior`); masks with fewer than `min_gaussians`
    distinct Gaussians are dropped (method.md: 50). `tracks(names)` gives the result."""

    def __init__(self, n_gaussians: int, criterion: str | None = "transmittance", min_gaussians: int = 50,
                 boundary_px: int = 0):
        self.n, self.criterion, self.min_gaussians, self.boundary_px = n_gaussians, criterion, min_gaussians, boundary_px
        self._m_rows, self._m_cols, self._frame_of, self._label_of, self._pixels = [], [], [], [], []
        self._w_rows, self._w_cols = [], []
        self._frames = 0
        self._next_mask = 0

    def add_view(self, contrib, labels) -> None:
        f = self._frames
        self._frames += 1
        c = contrib if self.criterion is None else contrib.select(self.criterion)
        vis = np.unique(c.gaussian.cpu().numpy()).astype(np.int32)
        self._w_rows.append(np.full(len(vis), f, np.int32))
        self._w_cols.append(vis)
        if labels is None:
            return
        sets = c.mask_gaussians(mask_interior(np.asarray(labels), self.boundary_px))
        lab = sets.label.cpu().numpy()
        gid = sets.gaussian.cpu().numpy()
        order = np.lexsort((-sets.pixels.cpu().numpy(), gid))  # per Gaussian, most pixels first
        first = np.ones(len(order), bool)
        first[1:] = gid[order][1:] != gid[order][:-1]
        lab, gid = lab[order][first], gid[order][first]
        if not len(lab):
            return
        ids, count = np.unique(lab, return_counts=True)
        keep = count >= self.min_gaussians
        px = np.bincount(np.asarray(labels).reshape(-1), minlength=int(ids.max()) + 1)
        new_index = np.full(int(ids.max()) + 1, -1)
        new_index[ids[keep]] = self._next_mask + np.arange(keep.sum())
        sel = new_index[lab] >= 0
        self._m_rows.append(new_index[lab[sel]].astype(np.int32))
        self._m_cols.append(gid[sel].astype(np.int32))
        self._frame_of.append(np.full(keep.sum(), f))
        self._label_of.append(ids[keep])
        self._pixels.append(px[ids[keep]])
        self._next_mask += int(keep.sum())

    def tracks(self, names) -> MaskTracks:
        F, M, N = self._frames, self._next_mask, self.n
        if len(names) != F:
            raise ValueError(f"{len(names)} frame names for {F} views tracked")
        cat = lambda parts, dtype=np.int64: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)  # noqa: E731
        A = _bool_csr(cat(self._m_rows), cat(self._m_cols), (M, N))
        frame_of = cat(self._frame_of)
        U = (sp.csr_matrix((np.ones(M, np.float32), (frame_of, np.arange(M))), shape=(F, M)) @ A).tocsr()
        U.data[:] = 1.0
        W = _bool_csr(cat(self._w_rows), cat(self._w_cols), (F, N))
        return MaskTracks(N, list(names), frame_of, cat(self._label_of), A, U, W, cat(self._pixels))


def track_masks(contribs, names, label_maps, criterion: str | None = "transmittance", min_gaussians: int = 50,
                boundary_px: int = 0) -> MaskTracks:
    """The Gaussian set of every mask, from each view's composited pairs (`MaskTracker`,
    all views at once): `contribs` and `label_maps` per view."""
    tracker = MaskTracker(contribs[0].n_gaussians if contribs else 0, criterion, min_gaussians, boundary_px)
    for c, labels in zip(contribs, label_maps):
        tracker.add_view(c, labels)
    return tracker.tracks(names)
