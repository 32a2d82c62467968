"""From mask clusters to coarse 3D instances (method.md §2, "Post-process" and "Re-attach").

Per cluster of masks (node): split its Gaussians into spatially connected parts
(DBSCAN on centres, at a radius derived from the scene's own point spacing — the
official eps = 0.1 is in arbitrary COLMAP units), give each of the node's masks to the
part it overlaps most, keep the points that lie inside the node's masks in more than
half of the node's frames where they are visible (majority-in-mask), drop parts made of
fewer than `min_masks` masks, and drop an instance that is mostly (> 80 %) inside another with
an overlapping box. Under-segmented masks then re-attach to the instance that holds
more than 80 % of their Gaussians.

The official code needs two masks per part; here one is enough. A small object is often
masked cleanly in one view only (hidden elsewhere, or missing from the noisy masks), and
the one mask that survived the consensus (visible and contained wherever its Gaussians
are seen) is all there is of it: with two, practice scene 22's figurine ended inside its
neighbour. A one-mask part of a bigger object lies inside that object's instance and is
dropped with the contained ones; a one-mask piece of table is background. Measured on
the practice and built-in scenes (docs/benchmarks.md): no scene gained an instance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from .consensus import Consensus, Node
from .tracker import MaskTracks


@dataclass
class PostParams:
    min_masks: int = 1  # the official code drops parts of fewer than two masks (the ablation's "paper" row)
    point_filter_threshold: float = 0.5
    overlap_ratio: float = 0.8
    reattach_threshold: float = 0.8
    dbscan_min_points: int = 4
    dbscan_eps: float | None = None  # None: derived from the scene (dbscan_spacing_factor × median NN spacing)
    dbscan_spacing_factor: float = 10.0

    def scale(self, means: np.ndarray) -> float:
        """The scene's length scale: `dbscan_eps`, or the factor × median point spacing.
        DBSCAN uses it as is; the support-plane tests use fractions of it."""
        return self.dbscan_eps if self.dbscan_eps is not None else scene_eps(means, self.dbscan_spacing_factor)


@dataclass
class Instance:
    gaussians: np.ndarray  # sorted Gaussian indices
    masks: np.ndarray  # mask indices (into MaskTracks) that make this instance


def scene_eps(means: np.ndarray, factor: float, sample: int = 20000, seed: int = 0) -> float:
    """`factor` × the median distance from a Gaussian centre to its nearest neighbour."""
    rng = np.random.default_rng(seed)
    pick = means if len(means) <= sample else means[rng.choice(len(means), sample, replace=False)]
    d, _ = cKDTree(means).query(pick, k=2)
    return factor * float(np.median(d[:, 1]))


def dbscan(points: np.ndarray, eps: float, min_points: int) -> np.ndarray:
    """DBSCAN labels (0..k-1 clusters, -1 noise) with a sparse radius graph: core points
    have ≥ min_points neighbours within eps (themselves included); clusters are connected
    components of core points; border points join a neighbouring core point's cluster."""
    n = len(points)
    if n == 0:
        return np.zeros(0, int)
    tree = cKDTree(points)
    pairs = tree.query_pairs(eps, output_type="ndarray")
    deg = np.bincount(pairs.ravel(), minlength=n) + 1
    core = deg >= min_points
    cc = pairs[core[pairs[:, 0]] & core[pairs[:, 1]]]
    g = sp.csr_matrix((np.ones(len(cc)), (cc[:, 0], cc[:, 1])), shape=(n, n))
    _, comp = connected_components(g, directed=False)
    labels = np.full(n, -1)
    core_ids = np.flatnonzero(core)
    _, labels[core_ids] = np.unique(comp[core_ids], return_inverse=True)
    border = pairs[core[pairs[:, 0]] ^ core[pairs[:, 1]]]  # one core, one not
    b_core = np.where(core[border[:, 0]], border[:, 0], border[:, 1])
    b_other = np.where(core[border[:, 0]], border[:, 1], border[:, 0])
    unassigned = labels[b_other] < 0
    labels[b_other[unassigned]] = labels[b_core[unassigned]]
    return labels


def _split_node(node: Node, t: MaskTracks, cons: Consensus, means: np.ndarray, eps: float, p: PostParams):
    """Parts of one node: (points, masks, bbox) per kept part."""
    A_node = t.A[node.masks]
    pts = np.unique(A_node.indices)
    labels = dbscan(means[pts], eps, p.dbscan_min_points) + 1  # noise becomes part 0
    n_parts = int(labels.max()) + 1
    frames = np.flatnonzero(np.asarray(cons.visible[node.masks].sum(axis=0)).ravel() > 0)
    # masks of the node seen from its observing frames, each given to its best part
    in_frames = np.isin(t.frame_of[node.masks], frames)
    masks = node.masks[in_frames]
    Z = t.A[masks][:, pts]  # [masks, points]
    part_onehot = sp.csr_matrix((np.ones(len(pts)), (np.arange(len(pts)), labels)), shape=(len(pts), n_parts))
    overlap = np.asarray((Z @ part_onehot).todense())
    best = overlap.argmax(axis=1) if len(masks) else np.zeros(0, int)
    has = overlap.max(axis=1) > 0 if len(masks) else np.zeros(0, bool)
    # majority-in-mask: frames where a point lies in a node mask / frames where it is visible
    frame_index = {f: i for i, f in enumerate(frames)}
    mf = np.array([frame_index[f] for f in t.frame_of[masks]], int)
    in_node = sp.csr_matrix((np.ones(len(masks)), (mf, np.arange(len(masks)))), shape=(len(frames), len(masks))) @ Z
    in_node = np.asarray((in_node > 0).sum(axis=0)).ravel()
    appear = np.asarray(t.W[frames][:, pts].sum(axis=0)).ravel()
    keep_pt = in_node / (appear + 1e-6) > p.point_filter_threshold
    parts = []
    for k in range(n_parts):
        mine = labels == k
        part_masks = masks[has & (best == k)]
        kept = pts[mine & keep_pt]
        if len(kept) == 0 or len(part_masks) < p.min_masks:
            continue
        box = (means[pts[mine]].min(axis=0), means[pts[mine]].max(axis=0))
        parts.append((kept, part_masks, box))
    return parts


def _drop_contained(parts, ratio: float):
    """Drop an instance whose points are > `ratio` inside another one with an overlapping box."""
    n = len(parts)
    invalid = np.zeros(n, bool)
    for i in range(n):
        if invalid[i]:
            continue
        for j in range(i + 1, n):
            if invalid[j]:
                continue
            (pi, _, (lo_i, hi_i)), (pj, _, (lo_j, hi_j)) = parts[i], parts[j]
            if np.any(lo_i > hi_j) or np.any(lo_j > hi_i):
                continue
            inter = len(np.intersect1d(pi, pj, assume_unique=True))
            if inter / len(pi) > ratio:
                invalid[i] = True
                break
            if inter / len(pj) > ratio:
                invalid[j] = True
    return [part for part, bad in zip(parts, invalid) if not bad]


def coarse_instances(nodes: list[Node], t: MaskTracks, cons: Consensus, means: np.ndarray,
                     p: PostParams = PostParams(), eps: float | None = None) -> list[Instance]:
    """`eps`: the DBSCAN radius, `p.scale(means)` unless the caller already has it."""
    eps = p.scale(means) if eps is None else eps
    parts = []
    for node in nodes:
        if len(node.masks) >= p.min_masks:
            parts.extend(_split_node(node, t, cons, means, eps, p))
    parts = _drop_contained(parts, p.overlap_ratio)
    instances = [Instance(np.sort(pts), np.sort(masks)) for pts, masks, _ in parts]
    return reattach_undersegmented(instances, t, cons, p.reattach_threshold)


def reattach_undersegmented(instances: list[Instance], t: MaskTracks, cons: Consensus, threshold: float):
    """An under-segmented mask joins the instance holding > `threshold` of its Gaussians."""
    under = np.flatnonzero(cons.undersegmented)
    if not len(under) or not instances:
        return instances
    n = t.n_gaussians
    rows = np.concatenate([np.full(len(inst.gaussians), i) for i, inst in enumerate(instances)])
    cols = np.concatenate([inst.gaussians for inst in instances])
    member = sp.csr_matrix((np.ones(len(rows)), (cols, rows)), shape=(n, len(instances)))
    counts = np.asarray((t.A[under] @ member).todense())
    size = t.sizes()[under]
    best = counts.argmax(axis=1)
    ok = counts[np.arange(len(under)), best] / np.maximum(size, 1) > threshold
    for u, i in zip(under[ok], best[ok]):
        instances[i].masks = np.union1d(instances[i].masks, [u])
    return instances


def consistent_label_maps(instances: list[Instance], t: MaskTracks, label_maps) -> list[np.ndarray | None]:
    """Multi-view-consistent 2D labels: in each frame, the pixels of a mask that belongs to
    instance i get label i + 1 (0 elsewhere; a mask claimed twice goes to the larger)."""
    owner = np.zeros(t.n_masks, int)  # instance + 1, 0 = none
    order = np.argsort([len(inst.gaussians) for inst in instances])  # larger ones written last win
    for i in order:
        owner[instances[i].masks] = i + 1
    out = []
    for f, labels in enumerate(label_maps):
        if labels is None:
            out.append(None)
            continue
        mine = np.flatnonzero(t.frame_of == f)
        lut = np.zeros(int(labels.max()) + 1, np.int32)
        lut[t.label_of[mine]] = owner[mine]
        out.append(lut[labels])
    return out


def vote_labels(evidence: np.ndarray, min_share: float = 0.5) -> np.ndarray:
    """Dense coarse labels from `evidence` [N, n_instances] (each Gaussian's blending
    weight into each instance's consistent 2D labels, propagate.label_evidence): the
    instance holding more than `min_share` of a Gaussian's labelled weight, -1 where
    none does or nothing labelled it. The feature field's 3D loss trains on these; the
    final labels (instances.assign_instances) start from the same evidence, so both
    read the views alike."""
    if evidence.shape[1] == 0:
        return np.full(len(evidence), -1)
    total = evidence.sum(1)
    best = evidence.argmax(1)
    share = evidence[np.arange(len(evidence)), best] / np.maximum(total, 1e-12)
    return np.where((total > 0) & (share > min_share), best, -1)
