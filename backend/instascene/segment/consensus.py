"""View consensus: merge 2D masks across views into 3D instances (method.md §2).

Definitions follow InstaScene's `spatial_track` (itself MaskClustering's), expressed
with sparse matrix products instead of per-mask loops:

  D = A Uᵀ      [M, F]  how many of mask m's Gaussians lie in some mask of frame f
  C = A Aᵀ      [M, M]  Gaussians shared by masks m and k

Mask m is *visible* in frame f when at most 70 % of its Gaussians are outside every mask
there (D/|m| ≥ 0.3); it is *contained* by mask k of frame f when k holds more than 80 %
of those covered Gaussians (C[m, k] / D[m, f] > 0.8). A visible frame where no single
mask contains m is a *split* frame; m is under-segmented when it is visible nowhere or
split in more than 30 % of its visible frames. Nodes (clusters of masks) then merge
when, among the frames observing both (N_vis = V Vᵀ), the masks containing both
(N_contain = C Cᵀ) are at least 90 % — for a decreasing schedule of minimum observer
counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from .tracker import MaskTracks


@dataclass
class ConsensusParams:
    mask_visible_threshold: float = 0.7
    contained_threshold: float = 0.8
    undersegment_filter_threshold: float = 0.3
    view_consensus_threshold: float = 0.9


@dataclass
class Consensus:
    visible: sp.csr_matrix  # [M, F] bool: frames observing m (visible and contained there)
    container: sp.csr_matrix  # [M, M] bool: container[m, k] = m is contained by mask k
    undersegmented: np.ndarray  # [M] bool


def view_consensus(t: MaskTracks, p: ConsensusParams = ConsensusParams()) -> Consensus:
    M, F = t.n_masks, len(t.frames)
    size = t.sizes()
    D = np.asarray((t.A @ t.U.T).todense()) if M else np.zeros((0, F))  # masks × frames: small
    visible = D >= (1.0 - p.mask_visible_threshold) * size[:, None]

    # best containing mask of each frame for each mask: the largest C[m, k] per (m, frame(k))
    C = (t.A @ t.A.T).tocoo()
    key_frame = t.frame_of[C.col]
    order = np.lexsort((-C.data, key_frame, C.row))
    rows, frames, cols, vals = C.row[order], key_frame[order], C.col[order], C.data[order]
    first = np.ones(len(rows), bool)
    first[1:] = (rows[1:] != rows[:-1]) | (frames[1:] != frames[:-1])
    rows, frames, cols, vals = rows[first], frames[first], cols[first], vals[first]
    ratio = vals / np.maximum(D[rows, frames], 1e-9)
    contained = visible[rows, frames] & (ratio > p.contained_threshold)
    # a mask is contained by itself in its own frame (and by nothing else there)
    other = frames != t.frame_of[rows]
    rows = np.concatenate([rows[other & contained], np.arange(M)])
    frames = np.concatenate([frames[other & contained], t.frame_of])
    cols = np.concatenate([cols[other & contained], np.arange(M)])
    visible[np.arange(M), t.frame_of] = True

    n_visible = visible.sum(axis=1)
    n_contained = np.bincount(rows, minlength=M)
    n_split = n_visible - n_contained
    under = (n_visible == 0) | (n_split > p.undersegment_filter_threshold * n_visible)

    ones = np.ones(len(rows), np.float32)
    cont = sp.csr_matrix((ones, (rows, cols)), shape=(M, M))
    vis = sp.csr_matrix((ones, (rows, frames)), shape=(M, F))
    vis.sum_duplicates()
    vis.data[:] = 1.0

    # an under-segmented container is no evidence: forget it, and the frame it observed from
    u = np.flatnonzero(under)
    if len(u):
        cc = cont[:, u].tocoo()  # (c contained by u)
        drop_frames = sp.csr_matrix((np.ones(cc.nnz, np.float32), (cc.row, t.frame_of[u[cc.col]])), shape=(M, F))
        keep = np.ones(M, np.float32)
        keep[u] = 0.0
        cont = (cont @ sp.diags(keep)).tocsr()
        vis = vis - vis.multiply(drop_frames > 0)
        vis.eliminate_zeros()
    cont.eliminate_zeros()
    return Consensus(visible=vis.tocsr(), container=cont.tocsr(), undersegmented=under)


def observer_schedule(visible: sp.csr_matrix) -> list[float]:
    """Minimum observer counts, strictest first: percentiles 95, 90, … 0 of the non-zero
    entries of V Vᵀ; values ≤ 1 become 1 above the median and end the list below it."""
    O = (visible @ visible.T).tocoo()
    values = O.data[O.data > 0]
    if len(values) == 0:
        return [1.0]
    out = []
    for pct in range(95, -5, -5):
        k = float(np.percentile(values, pct))
        if k <= 1:
            if pct < 50:
                break
            k = 1.0
        out.append(k)
    return out


@dataclass
class Node:
    masks: np.ndarray  # member mask indices


def cluster_masks(t: MaskTracks, cons: Consensus, p: ConsensusParams = ConsensusParams()) -> list[Node]:
    """Iterative graph clustering of the masks that are not under-segmented."""
    members = [np.array([m]) for m in np.flatnonzero(~cons.undersegmented)]
    if not members:
        return []
    idx = np.array([m[0] for m in members])
    V = cons.visible[idx].astype(np.float32)
    Cn = cons.container[idx].astype(np.float32)
    for k in observer_schedule(V):
        n_vis = (V @ V.T).tocoo()
        n_con = (Cn @ Cn.T).tocsr()
        con = np.asarray(n_con[n_vis.row, n_vis.col]).ravel()
        rate = con / (n_vis.data + 1e-7)
        edge = (n_vis.row != n_vis.col) & (rate >= p.view_consensus_threshold) & (n_vis.data >= k)
        n = V.shape[0]
        graph = sp.csr_matrix((np.ones(edge.sum()), (n_vis.row[edge], n_vis.col[edge])), shape=(n, n))
        n_comp, comp = connected_components(graph, directed=False)
        if n_comp == n:
            continue
        P = sp.csr_matrix((np.ones(n, np.float32), (comp, np.arange(n))), shape=(n_comp, n))
        V = P @ V
        V.data[:] = 1.0
        Cn = P @ Cn
        Cn.data[:] = 1.0
        merged = [[] for _ in range(n_comp)]
        for i, c in enumerate(comp):
            merged[c].append(members[i])
        members = [np.concatenate(m) for m in merged]
    return [Node(np.sort(m)) for m in members]
