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


def track_masks(contribs, names, label_maps, criterion: str | None = "transmittance", min_gaussians: int = 50,
                boundary_px: int = 0) -> MaskTracks:
    """The Gaussian set of every mask, from each view's composited pairs.

    `contribs`: per view, `render.Contributions` with every composited pair (criterion
    None), so that the same rasterization also feeds the feature cache; `label_maps`:
    matching [H, W] int arrays (0 = no mask) or None for a view without masks. Pairs are
    selected with `criterion` (None: `contribs` hold the selected pairs already, as
    `Contributions.compact()` keeps them); pixels within `boundary_px` of a mask boundary are
    ignored (`mask_interior`); masks with fewer than `min_gaussians` distinct Gaussians
    are dropped (method.md: 50).
    """
    N = contribs[0].n_gaussians if contribs else 0
    m_rows, m_cols, frame_of, label_of, pixels = [], [], [], [], []
    w_rows, w_cols = [], []
    next_mask = 0
    for f, (c_all, labels) in enumerate(zip(contribs, label_maps)):
        c = c_all if criterion is None else c_all.select(criterion)
        vis = np.unique(c.gaussian.cpu().numpy())
        w_rows.append(np.full(len(vis), f))
        w_cols.append(vis)
        if labels is not None:
            sets = c.mask_gaussians(mask_interior(np.asarray(labels), boundary_px))
            lab = sets.label.cpu().numpy()
            gid = sets.gaussian.cpu().numpy()
            order = np.lexsort((-sets.pixels.cpu().numpy(), gid))  # per Gaussian, most pixels first
            first = np.ones(len(order), bool)
            first[1:] = gid[order][1:] != gid[order][:-1]
            lab, gid = lab[order][first], gid[order][first]
            if len(lab):
                ids, count = np.unique(lab, return_counts=True)
                keep = count >= min_gaussians
                px = np.bincount(np.asarray(labels).reshape(-1), minlength=int(ids.max()) + 1)
                new_index = np.full(int(ids.max()) + 1, -1)
                new_index[ids[keep]] = next_mask + np.arange(keep.sum())
                sel = new_index[lab] >= 0
                m_rows.append(new_index[lab[sel]])
                m_cols.append(gid[sel])
                frame_of.append(np.full(keep.sum(), f))
                label_of.append(ids[keep])
                pixels.append(px[ids[keep]])
                next_mask += int(keep.sum())
    F, M = len(contribs), next_mask
    cat = lambda parts, dtype=np.int64: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)  # noqa: E731
    A = _bool_csr(cat(m_rows), cat(m_cols), (M, N))
    frame_of_a = cat(frame_of)
    U = (sp.csr_matrix((np.ones(M, np.float32), (frame_of_a, np.arange(M))), shape=(F, M)) @ A).tocsr()
    U.data[:] = 1.0
    W = _bool_csr(cat(w_rows), cat(w_cols), (F, N))
    return MaskTracks(N, list(names), frame_of_a, cat(label_of), A, U, W, cat(pixels))
