"""Discrete labels from the spread ones: α-expansion graph cuts on the surface graph.

Label spreading (propagate.spread) minimises a quadratic energy, so its scores blend
evidence and neighbours smoothly. That leaves one failure it cannot fix: a group of
weakly seen Gaussians — a neighbour's side hidden at a contact, seen only through the
object in front and painted by that object's masks — whose summed evidence points to
the wrong object keeps the wrong label even when far more surface binds it to its own
object than to the other (practice 21's lego walls: 257 Gaussians, surface edges of
weight 105 to the lego and 24 to the duck, spread scores 0.30 lego / 0.65 duck). A
boundary between labels should cost the surface it cuts, as in GaussianCut's graph
cut. Here the spread labels are refined under the Potts energy

    E(L) = Σ_i D_i(L_i) + μ Σ_{i<j} w_ij [L_i ≠ L_j],   D_i(c) = min(Σ_k E_ik − E_ic, cap)

(E the median-normalised evidence, w the surface-continuity weights the spreading used)
by α-expansion moves (Boykov, Veksler & Zabih 2001: each move an exact binary min cut,
Potts is a metric so every move is submodular), one per instance the spreading kept,
swept until nothing changes. Two guards keep it a refinement of the spread labels, not
a new segmentation: only classes present after spreading expand, and a piece of a class
that holds none of its Gaussians from before the cut (a class that jumped elsewhere)
returns to its earlier labels. A class may vanish: a part the masks cut out of one
smooth surface (SAM's part masks, a sticker) joins the surface when its evidence does
not outweigh the boundary it would need. An object meeting its neighbour at a crease,
where edges are weak, keeps its Gaussians; one meeting it without a crease could be
emptied into it, so a class that at least half as many masks delineate as the class
absorbing it keeps its Gaussians (measured: the emptied parts had 0.10–0.47 of their
absorber's masks, the one emptied object 0.67; docs/benchmarks.md, session 13).

Each Gaussian's stake in an expansion is capped (at the evidence cap): uncapped, a
weakly seen object hanging on a neighbour along a long contact is swallowed whole
(practice 22's figurine). The cap has its own blind spot: a face of an object held to
its body by a few Gaussians with many strong edges, lying against a neighbour across a
crease, is pulled home with the cap only. So the expansions end with block moves under
the exact energy (segment_moves): a *segment* — Gaussians of one label joined by
edges between nearly coplanar surfels — moves whole to the neighbouring label that
lowers the energy most; a label's largest segment stays, so no object is emptied
(practice 23 with half its views: a 416-Gaussian jenga wall in the lego, mIoU 0.955 →
0.990; docs/benchmarks.md, session 14).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import breadth_first_order, connected_components, maximum_flow

_INT_BUDGET = 2**30  # the min cut is bounded by the pairwise capacities: keep their sum in int32


def potts_energy(labels: np.ndarray, cost: np.ndarray, rows: np.ndarray, cols: np.ndarray, weights: np.ndarray,
                 mu: float) -> float:
    """E(L) for edges given once each (rows < cols)."""
    return float(cost[np.arange(len(labels)), labels].sum() + mu * (weights * (labels[rows] != labels[cols])).sum())


def expansion_move(labels: np.ndarray, cost: np.ndarray, rows: np.ndarray, cols: np.ndarray, weights: np.ndarray,
                   fixed: np.ndarray, alpha: int, mu: float, cap: float) -> np.ndarray:
    """The move where every free Gaussian either keeps its label or takes `alpha`, by one
    s-t min cut (source side = keep), each Gaussian's stake in it — what its evidence and
    its edges to Gaussians that do not move make it prefer — truncated at `cap`."""
    free = ~fixed & (labels != alpha)
    idx = np.flatnonzero(free)
    if not len(idx):
        return labels
    n = len(idx)
    local = np.full(len(labels), -1)
    local[idx] = np.arange(n)
    keep = cost[idx, labels[idx]].astype(np.float64)
    take = cost[idx, alpha].astype(np.float64)
    w = mu * weights
    # an edge with one free end: its Potts term depends on that end only
    for a, b in ((rows, cols), (cols, rows)):
        one = free[a] & ~free[b]
        la, lb = labels[a[one]], labels[b[one]]
        np.add.at(keep, local[a[one]], w[one] * (la != lb))
        np.add.at(take, local[a[one]], w[one] * (lb != alpha))
    # both ends free: A + (C − A) x_i − C x_j + (B + C − A)(1 − x_i) x_j, x = 1 takes alpha
    both = free[rows] & free[cols]
    i, j, wb = local[rows[both]], local[cols[both]], w[both]
    li, lj = labels[rows[both]], labels[cols[both]]
    A = wb * (li != lj)
    B = wb * (li != alpha)
    C = wb * (lj != alpha)
    keep += np.bincount(i, A, n)
    take += np.bincount(i, C, n)
    keep += np.bincount(j, C, n)
    pair = B + C - A
    scale = min(100.0, _INT_BUDGET / max(float(pair.sum()), 1e-9))
    low = np.minimum(keep, take)
    to_source = np.rint(np.minimum(take - low, cap) * scale).astype(np.int32)  # cut when the Gaussian takes alpha
    to_sink = np.rint(np.minimum(keep - low, cap) * scale).astype(np.int32)  # cut when it keeps its label
    s, t = n, n + 1
    graph = sp.csr_matrix(
        (np.concatenate([to_source, to_sink, np.rint(pair * scale).astype(np.int32)]),
         (np.concatenate([np.full(n, s), np.arange(n), i]), np.concatenate([np.arange(n), np.full(n, t), j]))),
        shape=(n + 2, n + 2))
    graph.sum_duplicates()
    flow = maximum_flow(graph, s, t, method="dinic").flow
    residual = (graph - flow).tocsr()
    residual.data[residual.data < 0] = 0
    residual.eliminate_zeros()
    reached = np.zeros(n + 2, bool)
    reached[breadth_first_order(residual, s, directed=True, return_predecessors=False)] = True
    out = labels.copy()
    out[idx[~reached[:n]]] = alpha
    return out


def label_pieces(labels: np.ndarray, W: sp.csr_matrix) -> np.ndarray:
    """[N] index of each Gaussian's connected piece of its own label in the graph `W`."""
    coo = W.tocoo()
    same = labels[coo.row] == labels[coo.col]
    G = sp.csr_matrix((np.ones(same.sum()), (coo.row[same], coo.col[same])), shape=W.shape)
    return connected_components(G, directed=False)[1]


def anchored(new: np.ndarray, old: np.ndarray, W: sp.csr_matrix) -> np.ndarray:
    """`new` labels, except that a connected piece of a class holding none of that class's
    Gaussians in `old` goes back to `old`."""
    comp = label_pieces(new, W)
    kept = np.zeros(comp.max() + 1, bool)
    kept[comp[new == old]] = True
    return np.where(kept[comp], new, old)


def segment_moves(labels: np.ndarray, cost: np.ndarray, rows: np.ndarray, cols: np.ndarray, weights: np.ndarray,
                  fixed: np.ndarray, mu: float, strong: float, rounds: int = 20) -> np.ndarray:
    """Block moves under the exact Potts energy: each *segment* — a connected piece of one
    label whose Gaussians are joined by `strong` edges (one smooth surface, not across a
    crease) — moves as a whole to the neighbouring label that lowers the energy most.
    α-expansion with truncated stakes cannot move such a piece when it hangs on its own
    object by a few strong edges whose stakes the truncation caps (a neighbour's wall
    seen past the object in front). A label's largest segment never moves, so no label
    is emptied; segments touching `fixed` Gaussians stay; neighbouring segments never
    move in the same round, so every round lowers the energy."""
    labels = labels.copy()
    n, n_classes = len(labels), cost.shape[1]
    a = np.concatenate([rows, cols])
    b = np.concatenate([cols, rows])
    w = np.concatenate([weights, weights])
    for _ in range(rounds):
        inner = (labels[rows] == labels[cols]) & (weights >= strong)
        graph = sp.csr_matrix((np.ones(inner.sum()), (rows[inner], cols[inner])), shape=(n, n))
        seg = connected_components(graph, directed=False)[1]
        n_seg = seg.max() + 1
        size = np.bincount(seg, minlength=n_seg)
        seg_label = np.zeros(n_seg, int)
        seg_label[seg] = labels
        body = np.full(n_classes, -1)
        order = np.argsort(size, kind="stable")  # ascending: the last write per label is its largest segment
        body[seg_label[order]] = order
        border = seg[a] != seg[b]
        candidate = np.zeros(n_seg, bool)
        candidate[seg[a[border]]] = True
        candidate[seg[fixed]] = False
        candidate[body[body >= 0]] = False
        cand = np.flatnonzero(candidate)
        if not len(cand):
            break
        pos = np.full(n_seg, -1)
        pos[cand] = np.arange(len(cand))
        mine = np.flatnonzero(pos[seg] >= 0)
        unary = np.asarray(sp.csr_matrix((np.ones(len(mine)), (pos[seg[mine]], mine)), shape=(len(cand), n)) @ cost)
        e = border & (pos[seg[a]] >= 0)
        bound = np.bincount(pos[seg[a[e]]] * n_classes + labels[b[e]], w[e],
                            minlength=len(cand) * n_classes).reshape(len(cand), n_classes)
        # E(move to l) − E(stay): unary change, plus the boundary to l that stops counting and that to the own label that starts
        own = seg_label[cand]
        delta = unary - unary[np.arange(len(cand)), own][:, None] + mu * (bound[np.arange(len(cand)), own][:, None] - bound)
        delta[bound <= 0] = np.inf  # only labels the segment touches
        delta[np.arange(len(cand)), own] = np.inf
        best = delta.argmin(1)
        gain = -delta[np.arange(len(cand)), best]
        movers = np.flatnonzero(gain > 1e-9)
        if not len(movers):
            break
        # an independent set of the movers, greediest first: their gains add up exactly
        adjacent = sp.csr_matrix((np.ones(e.sum()), (pos[seg[a[e]]], seg[b[e]])), shape=(len(cand), n_seg)).tolil().rows
        blocked = np.zeros(n_seg, bool)
        for i in movers[np.argsort(-gain[movers], kind="stable")]:
            if not blocked[cand[i]]:
                seg_label[cand[i]] = best[i]
                blocked[cand[i]] = True
                blocked[adjacent[i]] = True
        labels = seg_label[seg]
    return labels


def refine_labels(labels: np.ndarray, evidence: np.ndarray, W: sp.csr_matrix, fixed: np.ndarray, mu: float,
                  cap: float = 20.0, sweeps: int = 4, support: np.ndarray | None = None,
                  object_support: float = 0.5, strong: float | None = None) -> np.ndarray:
    """α-expansion from `labels` [N] (classes of `evidence` [N, C], median-normalised).
    `W`: the symmetric surface graph; `fixed` Gaussians keep their label. `support` [C]:
    how many masks delineate each class (0 for the background); a class the cut would
    empty into another keeps its Gaussians when it has at least `object_support` times
    the other's masks — an object as many views segmented apart, not a part. `strong`:
    the edge weight that joins Gaussians into one segment for the block moves that
    follow the expansions (segment_moves; None: none)."""
    cost = np.minimum(evidence.sum(1, keepdims=True) - evidence, cap)
    coo = sp.triu(W, k=1).tocoo()
    rows, cols, weights = coo.row, coo.col, coo.data.astype(np.float64)
    start = labels
    for _ in range(sweeps):
        before = labels
        for alpha in np.unique(start):
            labels = expansion_move(labels, cost, rows, cols, weights, fixed, int(alpha), mu, cap)
        if np.array_equal(labels, before):
            break
    labels = anchored(labels, start, W)
    if support is not None:
        for c in np.setdiff1d(np.unique(start), np.unique(labels)):
            was = start == c
            into = np.bincount(labels[was]).argmax()
            if into > 0 and support[c] >= object_support * support[into]:
                labels[was] = c
    if strong is not None:
        labels = segment_moves(labels, cost, rows, cols, weights, fixed, mu, strong)
    return labels
