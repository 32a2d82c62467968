"""Spatial Gaussian tracker: each 2D mask → the Gaussians that render it (method.md §1).

For every view, tracked rasterization gives the front-surface (pixel, Gaussian) pairs;
a label map then gives every mask's Gaussian set in one vectorised pass. Everything is
kept as sparse matrices over a global mask index (frame, label) — never a dense
Gaussians × masks array:

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


def _bool_csr(rows, cols, shape) -> sp.csr_matrix:
    m = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=shape)
    m.sum_duplicates()
    m.data[:] = 1.0
    return m


def track_masks(g, views, label_maps, criterion: str = "transmittance", min_gaussians: int = 50,
                backend: str = "auto", progress=None) -> MaskTracks:
    """Tracked rasterization of every view and the Gaussian set of every mask.

    `views`: list of (name, render.View); `label_maps`: matching [H, W] int arrays
    (0 = no mask) or None for a view without masks. Masks with fewer than
    `min_gaussians` distinct Gaussians are dropped (method.md: 50).
    """
    import torch

    from ..render import contributions

    N = len(g)
    m_rows, m_cols, frame_of, label_of, pixels = [], [], [], [], []
    w_rows, w_cols = [], []
    next_mask = 0
    for f, ((name, view), labels) in enumerate(zip(views, label_maps)):
        c = contributions(g, view, criterion, backend=backend)
        vis = torch.unique(c.gaussian).cpu().numpy()
        w_rows.append(np.full(len(vis), f))
        w_cols.append(vis)
        if labels is not None:
            sets = c.mask_gaussians(labels)
            lab = sets.label.cpu().numpy()
            gid = sets.gaussian.cpu().numpy()
            if len(lab):
                ids, start, count = np.unique(lab, return_index=True, return_counts=True)
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
        if progress:
            progress(f + 1, len(views))
    F, M = len(views), next_mask
    cat = lambda parts, dtype=np.int64: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)  # noqa: E731
    A = _bool_csr(cat(m_rows), cat(m_cols), (M, N))
    frame_of_a = cat(frame_of)
    U = (sp.csr_matrix((np.ones(M, np.float32), (frame_of_a, np.arange(M))), shape=(F, M)) @ A).tocsr()
    U.data[:] = 1.0
    W = _bool_csr(cat(w_rows), cat(w_cols), (F, N))
    return MaskTracks(N, [n for n, _ in views], frame_of_a, cat(label_of), A, U, W, cat(pixels))
