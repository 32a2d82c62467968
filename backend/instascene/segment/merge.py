"""One object, one instance: merge coarse instances that the views say move together.

SAM splits objects into parts (a handle, a lid, the halves of a toy) in some views, and
when that happens often enough the view consensus (consensus.py) keeps the parts apart:
the whole-object masks are split in too many frames and are dropped as under-segmented,
and the part masks never reach its 90 % support. The same masks still say how to join
the parts again. In every frame, each instance has a *holding mask*: the mask that holds
more than half of its Gaussians covered by that frame's masks. For two instances whose
Gaussians touch (nearest neighbours within the scene's DBSCAN radius), a frame where both
have a holding mask and it is the same one *joins* them; a frame where both have one and
they differ *separates* them. They are one object when the joining frames are the
majority of those frames (neighbouring objects are merged by SAM only now and then, the
parts of one object are split only now and then).

Merging is greedy, strongest agreement first, and the evidence is recounted after every
merge (a part joined to the body is judged with the body's masks). On the final
instances a second pass judges each pair from the smaller one's side: a part seen from
a few views only is masked with its body there, but the body is often split among
several masks in those views and has no holding mask; the part's holding mask reaching
well into the body says they are one (practice 22 with 19 of its views: a 139-Gaussian
piece of the bunny). Last, two instances that no view shows together — a toy's halves
masked from opposite sides only — cannot be joined or separated by masks at all; when
their surfaces run smoothly into each other (join_seams) they are one (seed 21: a duck
in two halves). On the final instances, parts that the masks join only now and then
but that are made of one material (join_alike: a teddy's head and body, cut by SAM at
the neck in most views) are one. Background instances (table, floor, wall) never merge
with objects. It runs on the coarse instances, so that the feature field and the final
labels treat the parts as one, and once more on the final instances, whose denser
Gaussian sets let more views decide. Everything is products over the tracked masks:
masks × instances, never Gaussians × masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from .postprocess import Instance
from .tracker import MaskTracks


@dataclass
class MergeParams:
    joined_fraction: float = 0.5  # merge when more than this share of the deciding frames join the two
    min_frames: int = 3  # frames that must decide before two instances may merge
    min_covered: float = 0.1  # a frame decides for an instance when its masks cover this share of it
    neighbours: int = 8  # nearest Gaussians looked at for contact
    part_covered: float = 0.05  # part_agreement: a frame decides for a part when its masks cover this share of it
    part_reach: float = 0.5  # ... and joins it to a body its holding mask holds this many Gaussians of per part one
    seam: float = 0.02  # never seen together: one object when smooth-surface edges join them, per Gaussian of the smaller
    alike_share: float = 0.12  # join_alike: masks join the two in at least this share of the deciding frames ...
    alike_frames: int = 2  # ... and in at least this many frames ...
    alike_colour: float | None = 0.6  # ... and their colours' chromaticity histograms overlap this much (None: off) ...
    alike_contact: float = 0.15  # ... and this share of the smaller one's Gaussians lies within the contact radius of the other


def _membership(instances: list[Instance], n: int) -> sp.csr_matrix:
    """[N, K] one-hot of instance membership (a Gaussian in several instances counts in each)."""
    rows = np.concatenate([inst.gaussians for inst in instances]) if instances else np.zeros(0, int)
    cols = np.concatenate([np.full(len(inst.gaussians), k) for k, inst in enumerate(instances)]) if instances \
        else np.zeros(0, int)
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n, len(instances)))
    m.data[:] = 1.0
    return m


def instances_of(labels: np.ndarray) -> list[Instance]:
    """Per-Gaussian object labels (-1 = background, objects 0..K-1) as Instances."""
    K = int(labels.max()) + 1 if len(labels) else 0
    return [Instance(np.flatnonzero(labels == k), np.zeros(0, int)) for k in range(K)]


def labels_of(instances: list[Instance], n: int, dtype=np.int64) -> np.ndarray:
    """The inverse of instances_of: [n] labels, -1 where no instance holds a Gaussian."""
    out = np.full(n, -1, dtype=dtype)
    for k, inst in enumerate(instances):
        out[inst.gaussians] = k
    return out


def join_pairs(labels: np.ndarray, join: np.ndarray) -> np.ndarray:
    """Object labels with every pair (i, j) where the [K, K] bool `join` holds in one
    instance (connected components), renumbered 0..K'-1; background (-1) stays."""
    if not join.any():
        return labels
    _, comp = connected_components(sp.csr_matrix(join.astype(np.float64)), directed=False)
    _, index = np.unique(comp, return_inverse=True)
    return np.where(labels >= 0, index[np.maximum(labels, 0)], -1)


def _coverage(t: MaskTracks, instances: list[Instance], min_covered: float):
    """What each frame's masks cover of each instance: C [M, K] Gaussians of instance k in
    mask m (small), per_frame [F, M] mask-to-frame indicator, covered [F, K], sizes [K],
    and holds [M, K]: mask m is k's holding mask — more than half of k's covered Gaussians
    in its frame, which covers at least `min_covered` of k."""
    C = np.asarray((t.A @ _membership(instances, t.n_gaussians)).todense())
    per_frame = sp.csr_matrix((np.ones(t.n_masks), (t.frame_of, np.arange(t.n_masks))),
                              shape=(len(t.frames), t.n_masks))
    covered = np.asarray(per_frame @ C)
    sizes = np.array([len(inst.gaussians) for inst in instances], float)
    decides = (covered >= min_covered * sizes[None, :]) & (covered > 0)
    # a tracked Gaussian is in one mask per frame, so at most one mask holds more than half
    holds = (C > 0.5 * covered[t.frame_of]) & decides[t.frame_of]
    return C, per_frame, covered, sizes, holds


def frame_agreement(t: MaskTracks, instances: list[Instance], min_covered: float = 0.1):
    """(joined, deciding): [K, K] counts of frames that join / decide each pair of instances.

    In frame f, instance i's covered Gaussians are those in any mask of f; its holding
    mask is the mask with more than half of them. Frame f decides for i when it covers
    at least `min_covered` of i's Gaussians and i has a holding mask there."""
    K = len(instances)
    if K == 0 or t.n_masks == 0:
        return np.zeros((K, K)), np.zeros((K, K))
    _, per_frame, _, _, holds = _coverage(t, instances, min_covered)
    decides = (per_frame @ holds.astype(np.float64)) > 0  # [F, K]
    H, D = holds.astype(np.float64), decides.astype(np.float64)
    return H.T @ H, D.T @ D


def part_agreement(t: MaskTracks, instances: list[Instance], min_covered: float = 0.05, reach: float = 0.5):
    """(joined, deciding) [K, K] from the smaller instance's side: for a part i and a larger
    instance j, a frame decides when i has a holding mask there (frame_agreement's, with
    `min_covered`) and j's Gaussians are covered there too; it joins them when that mask
    holds at least `reach` times as many of j's Gaussians as of i's. A small part seen
    from a few views is masked with its body, but the body is often split among several
    masks in those views: it has no holding mask, and frame_agreement cannot decide."""
    K = len(instances)
    if K < 2 or t.n_masks == 0:
        return np.zeros((K, K)), np.zeros((K, K))
    C, _, covered, sizes, holds = _coverage(t, instances, min_covered)
    seen = covered[t.frame_of] > 0  # [M, K]
    deciding = np.einsum("mi,mj->ij", holds.astype(np.float64), seen.astype(np.float64))
    joined = np.einsum("mi,mj,mij->ij", holds.astype(np.float64), seen.astype(np.float64),
                       (C[:, None, :] >= reach * C[:, :, None]).astype(np.float64))
    order = np.arange(K)
    part = (sizes[:, None] < sizes[None, :]) | ((sizes[:, None] == sizes[None, :]) & (order[:, None] < order[None, :]))
    joined, deciding = np.where(part, joined, 0.0), np.where(part, deciding, 0.0)
    return joined + joined.T, deciding + deciding.T


def contact(instances: list[Instance], means: np.ndarray, radius: float, neighbours: int = 8) -> np.ndarray:
    """[K, K] bool: some Gaussian of i has a Gaussian of j among its nearest neighbours
    (within `radius`) among all instances' Gaussians."""
    K = len(instances)
    out = np.zeros((K, K), bool)
    if K < 2:
        return out
    idx = np.concatenate([inst.gaussians for inst in instances])
    owner = np.concatenate([np.full(len(inst.gaussians), k) for k, inst in enumerate(instances)])
    k = min(neighbours + 1, len(idx))
    dist, nb = cKDTree(means[idx]).query(means[idx], k=k)
    near = dist <= radius
    a = np.repeat(owner, k).reshape(-1, k)[near]
    b = owner[nb[near]]
    out[a, b] = True
    out |= out.T
    np.fill_diagonal(out, False)
    return out


def merge_parts(instances: list[Instance], t: MaskTracks, means: np.ndarray, is_background: np.ndarray,
                radius: float, p: MergeParams = MergeParams(), parts: bool = False) -> tuple[list[Instance], np.ndarray]:
    """Instances with the parts of one object merged, and their background flags.

    `radius`: contact distance (the scene's DBSCAN radius). `parts`: judge each pair
    from its smaller instance's side (part_agreement) instead of frame_agreement."""
    def judge(instances):
        joined, deciding = part_agreement(t, instances, p.part_covered, p.part_reach) if parts else \
            frame_agreement(t, instances, p.min_covered)
        share = np.where(deciding >= p.min_frames, joined / np.maximum(deciding, 1), 0.0)
        return share > p.joined_fraction, share

    return _merge_greedy(instances, is_background, means, radius, p.neighbours, judge)


def _merge_greedy(instances: list[Instance], is_background: np.ndarray, means: np.ndarray, radius: float,
                  neighbours: int, judge) -> tuple[list[Instance], np.ndarray]:
    """Merge touching object instances, the best-scored pair first, judging again after
    every merge: `judge(instances)` gives ([K, K] may merge, [K, K] score)."""
    instances = list(instances)
    is_bg = np.asarray(is_background, bool).copy()
    touching = contact(instances, means, radius, neighbours)
    while len(instances) > 1:
        may, score = judge(instances)
        ok = touching & ~is_bg[:, None] & ~is_bg[None, :] & may
        np.fill_diagonal(ok, False)
        if not ok.any():
            break
        i, j = np.unravel_index(np.argmax(np.where(ok, score, -np.inf)), score.shape)
        i, j = min(i, j), max(i, j)
        instances[i] = Instance(np.union1d(instances[i].gaussians, instances[j].gaussians),
                                np.union1d(instances[i].masks, instances[j].masks))
        touching[i] |= touching[j]
        touching[:, i] |= touching[:, j]
        touching[i, i] = False
        keep = np.arange(len(instances)) != j
        del instances[j]
        is_bg = is_bg[keep]
        touching = touching[np.ix_(keep, keep)]
    return instances, is_bg


def merge_labels(labels: np.ndarray, t: MaskTracks, means: np.ndarray, radius: float,
                 p: MergeParams = MergeParams(), surface: tuple[sp.csr_matrix, float] | None = None) -> np.ndarray:
    """`merge_parts` on per-Gaussian object labels (-1 = background), renumbered 0..K-1;
    then once more, each pair judged from its smaller instance's side (part_agreement);
    then, where `surface` = (the surfels' graph, the weight of a smooth edge; None: no
    smooth edges) is given, the pairs no view shows together joined along smooth seams
    (join_seams)."""
    K = int(labels.max()) + 1 if len(labels) else 0
    if K < 2:
        return labels
    merged, flags = merge_parts(instances_of(labels), t, means, np.zeros(K, bool), radius, p)
    merged, _ = merge_parts(merged, t, means, flags, radius, p, parts=True)
    out = labels_of(merged, len(labels), labels.dtype)
    return out if surface is None or surface[1] is None else join_seams(out, t, *surface, p)


def chroma_overlap(labels: np.ndarray, colors: np.ndarray, bins: int = 10, dark: float = 0.15) -> np.ndarray:
    """[K, K] histogram intersection (0..1) of the instances' chromaticities (r, g) /
    (r + g + b): how alike their materials are whatever the shading, which scales all
    three channels (a part in shadow, the side turned from the light). Gaussians darker
    than `dark` (r + g + b) have no reliable hue and do not count."""
    K = int(labels.max()) + 1 if len(labels) else 0
    total = colors.sum(axis=1)
    use = (labels >= 0) & (total > dark)
    rg = colors[use, :2] / total[use, None]
    cell = np.minimum((rg * bins).astype(int), bins - 1)
    hist = np.bincount(labels[use] * bins * bins + cell[:, 0] * bins + cell[:, 1], minlength=K * bins * bins)
    hist = hist.reshape(K, bins * bins).astype(np.float64)
    hist /= np.maximum(hist.sum(axis=1, keepdims=True), 1.0)
    return np.minimum(hist[:, None, :], hist[None, :, :]).sum(axis=2)


def contact_share(instances: list[Instance], means: np.ndarray, radius: float, pairs) -> np.ndarray:
    """For each pair (i, j): the share of the smaller instance's Gaussians that lie within
    `radius` of the other — how broad the seam between them is."""
    out = np.zeros(len(pairs))
    trees: dict[int, cKDTree] = {}
    for n, (i, j) in enumerate(pairs):
        small, large = (i, j) if len(instances[i].gaussians) <= len(instances[j].gaussians) else (j, i)
        if large not in trees:
            trees[large] = cKDTree(means[instances[large].gaussians])
        dist, _ = trees[large].query(means[instances[small].gaussians], distance_upper_bound=radius)
        out[n] = float(np.mean(dist <= radius))
    return out


def join_alike(labels: np.ndarray, t: MaskTracks, means: np.ndarray, radius: float, colors: np.ndarray,
               p: MergeParams = MergeParams()) -> np.ndarray:
    """Touching instances that the masks join now and then (at least `p.alike_frames`
    frames, `p.alike_share` of those that decide), that are made of the same material
    (`chroma_overlap` ≥ `p.alike_colour`) and that meet along a broad seam
    (`contact_share` ≥ `p.alike_contact`) are one object. SAM cuts an object at a crease
    or a shading edge — a teddy's head from its body — in most views, and such parts meet
    in a concave crease just as two objects do (seams.py); no one of these cues tells
    them from two touching objects (those are masked together now and then too, up to
    8 frames of 17 when one stands on the other; many are of one colour; a small one
    resting on a large one is a broad cap of contact), all three together do on the
    scenes measured (docs/benchmarks.md)."""
    K = int(labels.max()) + 1 if len(labels) else 0
    if K < 2 or p.alike_colour is None:
        return labels

    def judge(instances):
        joined, deciding = frame_agreement(t, instances, p.min_covered)
        share = joined / np.maximum(deciding, 1)
        alike = chroma_overlap(labels_of(instances, len(labels)), colors)
        may = (joined >= p.alike_frames) & (share >= p.alike_share) & (alike >= p.alike_colour)
        pairs = np.argwhere(np.triu(may, 1))
        may[:] = False
        if len(pairs):
            broad = pairs[contact_share(instances, means, radius, pairs) >= p.alike_contact]
            may[broad[:, 0], broad[:, 1]] = may[broad[:, 1], broad[:, 0]] = True
        return may, share

    merged, _ = _merge_greedy(instances_of(labels), np.zeros(K, bool), means, radius, p.neighbours, judge)
    return labels_of(merged, len(labels), labels.dtype)


def join_seams(labels: np.ndarray, t: MaskTracks, surface: sp.csr_matrix, smooth: float,
               p: MergeParams = MergeParams()) -> np.ndarray:
    """Instances that no view shows together (no frame whose masks cover `p.min_covered`
    of each) but whose surfaces run smoothly into each other — edges of weight ≥ `smooth`
    between them, at least `p.seam` per Gaussian of the smaller — are one object: the two
    halves of a toy masked from opposite sides, which the masks never had a chance to
    separate or join. Objects that touch are seen side by side in some view."""
    K = int(labels.max()) + 1 if len(labels) else 0
    if K < 2:
        return labels
    _, _, covered, sizes, _ = _coverage(t, instances_of(labels), p.min_covered)
    seen = (covered >= p.min_covered * sizes[None, :]).astype(np.float64)  # [F, K]
    together = seen.T @ seen
    e = sp.triu(surface, k=1).tocoo()
    a, b = labels[e.row], labels[e.col]
    keep = (e.data >= smooth) & (a >= 0) & (b >= 0) & (a != b)
    seam = np.zeros((K, K))
    np.add.at(seam, (a[keep], b[keep]), 1.0)
    seam += seam.T
    smaller = np.minimum(sizes[:, None], sizes[None, :])
    return join_pairs(labels, (together == 0) & (seam > 0) & (seam >= p.seam * smaller))
