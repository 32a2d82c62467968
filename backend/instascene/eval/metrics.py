"""Evaluation metrics (shared/reference/generation.md §6): pure functions on numpy arrays.

Every constant is a parameter; everything is vectorised (nearest neighbours through
`scipy.spatial.cKDTree`, label overlaps through `np.unique`, voxel occupancy through
`scipy.ndimage`). No torch here.

Geometry
  sample_surface(mesh, n, seed)          area-weighted surface samples of a triangle mesh
  outer_surface(mesh, n, seed)           ... without those on faces buried inside the solid
  winding_numbers(points, mesh)          generalised winding number (1 inside, 0 outside)
  chamfer_l1(pred, gt)                   (accuracy + completeness) / 2, both terms returned
  fscore(pred, gt, tau)                  precision, recall, F at distance tau
  fscore_curve(pred, gt, diag, fractions) F at tau = fraction x diag for several fractions
  volume_iou(a, b, resolution, pad)      occupancy IoU on a voxel grid set by b (the GT)
Images
  psnr(a, b, mask)                       10 log10(range² / MSE) over the masked pixels only
Segmentation
  hungarian_miou(pred_labels, gt_labels) one-to-one matching of instances, mean IoU over GT objects
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

DEFAULT_FRACTIONS = (0.005, 0.01, 0.02, 0.05, 0.1)


# ------------------------------------------------------------------ surfaces


def _mesh_arrays(mesh) -> tuple[np.ndarray, np.ndarray]:
    """(vertices [V, 3] float64, faces [F, 3] int64) of a trimesh-like object or a (V, F) tuple."""
    if isinstance(mesh, tuple) and len(mesh) == 2:
        v, f = mesh
    else:
        v, f = mesh.vertices, mesh.faces
    v = np.asarray(v, dtype=np.float64).reshape(-1, 3)
    f = np.asarray(f, dtype=np.int64).reshape(-1, 3)
    return v, f


def mesh_area(mesh) -> float:
    v, f = _mesh_arrays(mesh)
    if len(f) == 0:
        return 0.0
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    return float(0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1).sum())


def sample_surface(mesh, n: int, seed: int = 0) -> np.ndarray:
    """`n` points [n, 3] (float64) uniformly distributed over the mesh surface: triangles
    picked with probability proportional to their area, uniform barycentric position
    inside (the square-root trick). Deterministic per `seed`. A mesh without area
    gives an empty [0, 3] array. `mesh`: a trimesh.Trimesh or (vertices, faces).
    """
    v, f = _mesh_arrays(mesh)
    n = int(n)
    if n <= 0 or len(f) == 0:
        return np.zeros((0, 3))
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    area = np.where(np.isfinite(area), area, 0.0)
    total = area.sum()
    if not total > 0:
        return np.zeros((0, 3))
    rng = np.random.default_rng(seed)
    tri = rng.choice(len(f), size=n, p=area / total)
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    w0, w1, w2 = 1.0 - s, s * (1.0 - r2), s * r2
    return w0[:, None] * a[tri] + w1[:, None] * b[tri] + w2[:, None] * c[tri]


def _solid_angles(p: np.ndarray, v: np.ndarray, f: np.ndarray, chunk: int = 1 << 21) -> np.ndarray:
    """Σ over the faces of each face's signed solid angle seen from each point, / 4π
    (Van Oosterom–Strackee), exactly; chunked over points × faces."""
    out = np.zeros(len(p))
    if len(f) == 0:
        return out
    step = max(1, chunk // len(f))
    for s in range(0, len(p), step):
        a, b, c = (v[f[:, i]][None] - p[s:s + step, None] for i in range(3))
        la, lb, lc = (np.linalg.norm(x, axis=-1) for x in (a, b, c))
        det = np.einsum("pfi,pfi->pf", a, np.cross(b, c))
        den = (la * lb * lc + np.einsum("pfi,pfi->pf", a, b) * lc + np.einsum("pfi,pfi->pf", b, c) * la
               + np.einsum("pfi,pfi->pf", c, a) * lb)
        out[s:s + step] = np.arctan2(det, den).sum(1) / (2 * np.pi)
    return out


def winding_numbers(points, mesh, cells: int = 16, near: float = 2.0) -> np.ndarray:
    """Generalised winding number of each point [P] (Jacobson et al. 2013): 1 inside a
    closed outward-oriented surface, 0 outside, 2 inside two overlapping closed parts,
    the sign flipping with the orientation. Fast form (Barill et al. 2018, first order):
    the faces are grouped by a `cells`³ grid over the mesh; a group counts exactly for
    points within `near` × its radius, as a dipole (its area vector at its centre) beyond."""
    v, f = _mesh_arrays(mesh)
    p = _points(points)
    out = np.zeros(len(p))
    if len(f) == 0 or len(p) == 0:
        return out
    tri = v[f]
    centre = tri.mean(1)
    lo, hi = centre.min(0), centre.max(0)
    cell = np.floor((centre - lo) / np.maximum(hi - lo, 1e-12) * cells * (1 - 1e-9)).astype(np.int64)
    group = np.ravel_multi_index(cell.T, (cells,) * 3)
    area_vec = 0.5 * np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    for g in np.unique(group):
        sel = group == g
        fg = f[sel]
        c = centre[sel].mean(0)
        r = float(np.linalg.norm(v[fg].reshape(-1, 3) - c, axis=1).max())
        d = p - c
        dist = np.linalg.norm(d, axis=1)
        close = dist <= near * r
        if close.any():
            out[close] += _solid_angles(p[close], v, fg)
        far = ~close
        out[far] += (d[far] @ -area_vec[sel].sum(0)) / (4 * np.pi * dist[far] ** 3)
    return out


def outer_surface(mesh, n: int, seed: int = 0, piece: float = 1 / 16, offset: float = 1e-4
                  ) -> tuple[np.ndarray, float]:
    """`n` surface samples (as `sample_surface`) of the mesh without its buried faces, and
    the share of the area dropped. Some meshes have faces inside their own solid (the
    practice scenes' teddy, a stitched convex decomposition, has 30 % of its area inside;
    the lego 13 %): no camera sees them and no reconstruction of the outer surface
    reaches them. The faces are cut into pieces no longer than `piece` × the box diagonal;
    a piece is buried when the points just off its centre on both sides (`offset` × the
    diagonal) are inside (|winding number| > ½); on the outer surface, or on the wall of
    a cavity, one side is outside. Orientation-agnostic."""
    from trimesh.remesh import subdivide_to_size

    v, f = _mesh_arrays(mesh)
    if len(f) == 0:
        return np.zeros((0, 3)), 0.0
    diag = float(np.linalg.norm(v.max(0) - v.min(0)))
    v, f = subdivide_to_size(v, f, max_edge=piece * diag, max_iter=20)
    normal = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    area = 0.5 * np.linalg.norm(normal, axis=1)
    normal /= np.maximum(2 * area[:, None], 1e-300)
    centre = v[f].mean(1)
    w = np.abs(winding_numbers(np.r_[centre + offset * diag * normal, centre - offset * diag * normal], (v, f)))
    buried = np.minimum(w[: len(f)], w[len(f):]) > 0.5
    return sample_surface((v, f[~buried]), n, seed), float(area[buried].sum() / max(area.sum(), 1e-300))


# ------------------------------------------------------------------ distances


def _points(p) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.size == 0:
        return np.zeros((0, 3))
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"expected points [N, 3], got shape {p.shape}")
    return p


def nearest_distances(a, b, workers: int = -1) -> np.ndarray:
    """For every point of `a` [N, 3], the Euclidean distance to its nearest point of `b`
    (inf when `b` is empty). KD-tree on `b`, queried in parallel."""
    from scipy.spatial import cKDTree

    a, b = _points(a), _points(b)
    if len(a) == 0:
        return np.zeros(0)
    if len(b) == 0:
        return np.full(len(a), np.inf)
    d, _ = cKDTree(b).query(a, k=1, workers=workers)
    return np.asarray(d, dtype=np.float64)


class Chamfer(NamedTuple):
    chamfer: float  # (accuracy + completeness) / 2
    accuracy: float  # mean distance predicted -> GT
    completeness: float  # mean distance GT -> predicted


class FScore(NamedTuple):
    precision: float  # fraction of predicted points within tau of the GT
    recall: float  # fraction of GT points within tau of the prediction
    f: float  # 2PR / (P + R), 0 when both are 0


def chamfer_from_distances(d_pred_to_gt: np.ndarray, d_gt_to_pred: np.ndarray) -> Chamfer:
    """Chamfer-L1 from precomputed nearest distances; inf when either side is empty."""
    if len(d_pred_to_gt) == 0 or len(d_gt_to_pred) == 0:
        return Chamfer(math.inf, math.inf, math.inf)
    acc, comp = float(np.mean(d_pred_to_gt)), float(np.mean(d_gt_to_pred))
    return Chamfer((acc + comp) / 2.0, acc, comp)


def fscore_from_distances(d_pred_to_gt: np.ndarray, d_gt_to_pred: np.ndarray, tau: float) -> FScore:
    """F-score at threshold `tau` from precomputed nearest distances (empty side -> 0)."""
    p = float(np.mean(d_pred_to_gt < tau)) if len(d_pred_to_gt) else 0.0
    r = float(np.mean(d_gt_to_pred < tau)) if len(d_gt_to_pred) else 0.0
    f = 2.0 * p * r / (p + r) if p + r > 0 else 0.0
    return FScore(p, r, f)


def chamfer_l1(pred_pts, gt_pts, workers: int = -1) -> Chamfer:
    """Chamfer-L1 = (Acc + Comp) / 2 with Acc = mean over predicted points of the distance to
    the nearest GT point and Comp the reverse (DP-Recon's definition), in the points' units."""
    return chamfer_from_distances(nearest_distances(pred_pts, gt_pts, workers), nearest_distances(gt_pts, pred_pts, workers))


def fscore(pred_pts, gt_pts, tau: float, workers: int = -1) -> FScore:
    """precision = mean(d(P→G) < tau), recall = mean(d(G→P) < tau), F = 2PR / (P + R)."""
    return fscore_from_distances(nearest_distances(pred_pts, gt_pts, workers), nearest_distances(gt_pts, pred_pts, workers), tau)


def fscore_curve(pred, gt, diag: float, fractions=DEFAULT_FRACTIONS, workers: int = -1) -> list[dict]:
    """F-score at tau = fraction x `diag` (the GT object's bounding-box diagonal) for every
    fraction; nearest distances are computed once. Rows: fraction, tau, precision, recall, f."""
    d_pg, d_gp = nearest_distances(pred, gt, workers), nearest_distances(gt, pred, workers)
    rows = []
    for frac in fractions:
        tau = float(frac) * float(diag)
        fs = fscore_from_distances(d_pg, d_gp, tau)
        rows.append({"fraction": float(frac), "tau": tau, **fs._asdict()})
    return rows


# ------------------------------------------------------------------ volume


def _is_mesh(geom) -> bool:
    """A trimesh-like object (has .faces) or a (vertices, faces) tuple; anything else is points."""
    return hasattr(geom, "faces") or (isinstance(geom, tuple) and len(geom) == 2)


def _bounds(geom) -> tuple[np.ndarray, np.ndarray] | None:
    if not _is_mesh(geom):
        p = _points(geom)
    else:
        v, f = _mesh_arrays(geom)
        p = v[np.unique(f)] if len(f) else np.zeros((0, 3))
    p = p[np.isfinite(p).all(axis=1)]
    if len(p) == 0:
        return None
    return p.min(axis=0), p.max(axis=0)


def _surface_points(geom, spacing: float, max_samples: int, min_samples: int, seed: int) -> np.ndarray:
    """Points on the surface of `geom`: a point array is used as is; a mesh is sampled so
    that one sample falls on every `spacing`² of area (capped at `max_samples`)."""
    if not _is_mesh(geom):
        return _points(geom)
    n = int(np.clip(math.ceil(mesh_area(geom) / (spacing * spacing)), min_samples, max_samples))
    return sample_surface(geom, n, seed)


def occupancy(points: np.ndarray, lo: np.ndarray, h: np.ndarray, shape: tuple[int, int, int], close_iterations: int = 1) -> np.ndarray:
    """Solid occupancy [shape] bool of the surface sampled by `points` on the grid with
    corner `lo` and voxel size `h`: the voxels holding a sample form a shell, gaps up to
    about 2·close_iterations voxels wide are closed (dilate), enclosed voxels are filled
    (scipy.ndimage.binary_fill_holes, 6-connected flood from the border), and the
    dilation is undone (erode, then the shell is added back). Samples outside the grid
    are clamped onto its border voxels, which caps a surface cut by the grid.

    An open surface (a scan of one side, a cup's rim without the bottom) encloses nothing:
    its occupancy is the shell alone and its volume IoU against a solid is low.
    """
    from scipy import ndimage

    shell = np.zeros(shape, dtype=bool)
    p = _points(points)
    p = p[np.isfinite(p).all(axis=1)]
    if len(p):
        idx = np.floor((p - lo) / h).astype(np.int64)
        idx = np.clip(idx, 0, np.asarray(shape) - 1)
        shell[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    if not shell.any():
        return shell
    k = int(close_iterations)
    grown = ndimage.binary_dilation(shell, iterations=k) if k > 0 else shell
    solid = ndimage.binary_fill_holes(grown)
    if k > 0:
        solid = ndimage.binary_erosion(solid, iterations=k, border_value=1)
    return solid | shell


def volume_iou(
    mesh_a,
    mesh_b,
    resolution: int = 64,
    pad: float = 0.05,
    samples_per_voxel: float = 16.0,
    min_samples: int = 10_000,
    max_samples: int = 4_000_000,
    max_cells: int | None = None,
    close_iterations: int = 1,
    seed: int = 0,
) -> float:
    """Volume IoU of two closed surfaces on a shared voxel grid: |A ∧ B| / |A ∨ B|.

    The grid is set by `mesh_b` (the GT): `resolution` voxels per axis over its bounding
    box grown by `pad` x its largest extent on every side. Where `mesh_a` reaches
    beyond, the grid is extended by whole voxels of the same size (so that overshoot
    counts in the union), up to `max_cells` per axis (default 4 x resolution); beyond
    that the prediction is clamped onto the border. Occupancy: see `occupancy` — mesh
    surfaces are sampled densely (`samples_per_voxel` per smallest voxel face area),
    point arrays [P, 3] are used as they are (they must be denser than the voxels to
    enclose anything). No rtree/embree/SDF is needed.

    An open surface has no interior: it occupies only its shell of voxels and scores low.
    The shell itself adds about half a voxel around each solid (a small upward bias of
    both volumes that cancels when the shapes agree). Returns 0.0 when `mesh_a` is empty;
    raises ValueError when `mesh_b` is.
    """
    bb = _bounds(mesh_b)
    if bb is None:
        raise ValueError("volume_iou: the reference geometry (mesh_b) is empty")
    lo_b, hi_b = bb
    ext = hi_b - lo_b
    margin = pad * float(ext.max()) if ext.max() > 0 else 1e-3
    lo, hi = lo_b - margin, hi_b + margin
    res = int(resolution)
    h = (hi - lo) / res
    h = np.where(h > 0, h, float(h.max()))
    ba = _bounds(mesh_a)
    if ba is None:
        return 0.0
    lo_a, hi_a = ba
    cap = int(max_cells if max_cells is not None else 4 * res)
    # whole voxels to add on each side so that a's surface stays 2 voxels inside the grid
    n_lo = np.maximum(0, np.ceil((lo + 2 * h - lo_a) / h)).astype(np.int64)
    n_hi = np.maximum(0, np.ceil((hi_a - (hi - 2 * h)) / h)).astype(np.int64)
    room = max(cap - res, 0)
    over = n_lo + n_hi > room
    if over.any():
        scale = room / np.maximum(n_lo + n_hi, 1)
        n_lo = np.where(over, np.floor(n_lo * scale), n_lo).astype(np.int64)
        n_hi = np.where(over, np.floor(n_hi * scale), n_hi).astype(np.int64)
    lo = lo - n_lo * h
    shape = tuple(int(s) for s in (res + n_lo + n_hi))

    spacing = float(h.min()) / math.sqrt(samples_per_voxel)
    pa = _surface_points(mesh_a, spacing, max_samples, min_samples, seed)
    pb = _surface_points(mesh_b, spacing, max_samples, min_samples, seed + 1)
    occ_a = occupancy(pa, lo, h, shape, close_iterations)
    occ_b = occupancy(pb, lo, h, shape, close_iterations)
    union = np.count_nonzero(occ_a | occ_b)
    if union == 0:
        return 0.0
    return float(np.count_nonzero(occ_a & occ_b) / union)


# ------------------------------------------------------------------ images


def psnr(a, b, mask=None, data_range: float = 1.0, min_mse: float = 1e-10) -> float | None:
    """PSNR = 10 log10(data_range² / MSE) between images `a` and `b` ([H, W] or [H, W, C],
    values in [0, data_range]) over the pixels where `mask` [H, W] is true (all pixels
    when None). MSE is floored at `min_mse` (identical images give a finite 100 dB at the
    defaults). None when the mask selects no pixel or the values are not finite.
    Pass stacked views ([V, H, W, C] with a [V, H, W] mask) to pool the error over views.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"psnr: image shapes differ: {a.shape} vs {b.shape}")
    diff = a - b
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.shape != a.shape[: m.ndim]:
            raise ValueError(f"psnr: mask shape {m.shape} does not fit image shape {a.shape}")
        diff = diff[m]
    if diff.size == 0:
        return None
    mse = float(np.mean(diff * diff))
    if not math.isfinite(mse):
        return None
    return 10.0 * math.log10(data_range * data_range / max(mse, min_mse))


# ------------------------------------------------------------------ segmentation


@dataclass
class HungarianResult:
    """One-to-one matching of predicted instances to GT objects."""

    miou: float | None  # mean over GT objects of the matched IoU (0 when unmatched); None without objects
    gt_ids: np.ndarray  # [K] the GT object ids averaged over
    matched_pred: np.ndarray  # [K] the predicted id matched to each GT object, -1 = none
    iou: np.ndarray  # [K] IoU of each GT object with its match (0 when unmatched)
    gt_sizes: np.ndarray  # [K] number of elements of each GT object
    pred_ids: np.ndarray  # every predicted instance id (>= 0) present

    def pred_to_gt(self) -> dict[int, int]:
        """Matched predicted id -> GT id."""
        return {int(p): int(g) for p, g in zip(self.matched_pred, self.gt_ids) if p >= 0}

    def to_dict(self) -> dict:
        return {
            "miou": self.miou,
            "objects": [
                {"gt_id": int(g), "pred_id": (int(p) if p >= 0 else None), "iou": float(i), "size": int(s)}
                for g, p, i, s in zip(self.gt_ids, self.matched_pred, self.iou, self.gt_sizes)
            ],
            "predicted_instances": int(len(self.pred_ids)),
            "unmatched_predictions": int(len(self.pred_ids) - np.count_nonzero(self.matched_pred >= 0)),
        }


def hungarian_miou(pred_labels, gt_labels, gt_ids=None) -> HungarianResult:
    """One-to-one (Hungarian) instance mIoU on per-element labels (Gaussians or pixels).

    `pred_labels`, `gt_labels`: integer arrays of the same shape; negative = background.
    IoU(p, g) = |P ∩ G| / |P ∪ G| where |P| counts every element labelled p, background
    GT elements included — so a predicted instance that swallows the table loses IoU.
    Overlaps are counted sparsely (np.unique of the pair keys p·K + g over the elements
    where both are objects), never as a dense N x K matrix; the matching
    (scipy.optimize.linear_sum_assignment, maximising total IoU) runs on the small
    (overlapping predictions x GT objects) IoU matrix. mIoU = mean over GT objects of the
    matched IoU, 0 for a GT object left unmatched.

    `gt_ids`: the GT objects to average over (default: every id >= 0 in `gt_labels`);
    GT labels outside it count as background, ids in it without any element score 0.
    """
    from scipy.optimize import linear_sum_assignment

    p = np.asarray(pred_labels).ravel().astype(np.int64)
    g = np.asarray(gt_labels).ravel().astype(np.int64)
    if p.shape != g.shape:
        raise ValueError(f"hungarian_miou: {p.size} predicted labels vs {g.size} GT labels")
    gt_ids = np.unique(g[g >= 0]) if gt_ids is None else np.unique(np.asarray(gt_ids, dtype=np.int64))
    K = len(gt_ids)
    pv = p >= 0
    gi = np.searchsorted(gt_ids, g)
    gv = (g >= 0) & (gi < K)
    gv[gv] = gt_ids[gi[gv]] == g[gv]
    pred_ids, p_inv = np.unique(p[pv], return_inverse=True)
    pred_sizes = np.bincount(p_inv, minlength=len(pred_ids))
    gt_sizes = np.bincount(gi[gv], minlength=K)[:K] if K else np.zeros(0, dtype=np.int64)

    matched = np.full(K, -1, dtype=np.int64)
    iou = np.zeros(K)
    both = pv & gv
    if K and both.any():
        pi = np.searchsorted(pred_ids, p[both])
        key, inter = np.unique(pi * K + gi[both], return_counts=True)
        ri, ci = np.divmod(key, K)
        pair_iou = inter / (pred_sizes[ri] + gt_sizes[ci] - inter)
        rows, r_inv = np.unique(ri, return_inverse=True)  # only predictions that touch an object
        M = np.zeros((len(rows), K))
        M[r_inv, ci] = pair_iou
        r, c = linear_sum_assignment(M, maximize=True)
        ok = M[r, c] > 0
        matched[c[ok]] = pred_ids[rows[r[ok]]]
        iou[c[ok]] = M[r[ok], c[ok]]
    miou = float(iou.mean()) if K else None
    return HungarianResult(miou, gt_ids, matched, iou, gt_sizes, pred_ids)
