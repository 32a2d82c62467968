"""Background completion: close the support surface where the objects hid it.

No camera saw the table under an object, so the observed background has a hole in
every footprint (and in the strips behind objects that every view had occluded);
moving an object aside shows void. InstaScene refines the background with new
Gaussians in the removed region (`refineBackgroud`, method.md §in-situ generation);
here, on the support plane that the objects' completion already uses:

  1. a grid on the plane at the observed surfels' spacing; each cell's coverage is the
     opacity the observed plane surfels give it (shape.disc_alpha). The support region
     is the convex hull of the covered cells (a table top, a floor patch); a bare cell
     inside it is a hole;
  2. colour where a real view sees the bare spot after all: the visible surface there
     is at the plane's depth and labelled background (the scene evidence the objects'
     completion computed, no new rasterization) — the pixel's colour;
  3. texture for the rest: each hole copies the colours of a shifted patch of nearby
     known surface whose ring around the hole matches best, so the grain or the
     carpet continues, plus a biharmonic correction of the difference along the
     hole's border so the copy meets it without a seam;
  4. one surfel per hole cell, on the plane, with the observed surfels' size and
     opacity.

The result is written as RUN/background_completed.ply: the observed background first,
unchanged, then the new surfels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..io.splats import SH_C0, Splats
from .evidence import SceneEvidence, in_frame, project
from .shape import disc_alpha, idw_colors, surfel_spacing


@dataclass
class BackgroundParams:
    plane_tolerance: float = 3.0  # a surfel within this many spacings of the plane lies on it
    max_tilt_deg: float = 30.0  # ... and its normal within this angle of the plane's
    cover_alpha: float = 0.5  # a cell the observed surfels give less opacity is bare
    max_cells: int = 1024  # grid cells along the longer side at most (coarser cells beyond)
    ring_cells: int = 3  # width of the border a hole's source patch is matched on
    ring_outlier: float = 3.0  # border cells this many median deviations off its median colour are scraps
    max_shifts: int = 2500  # candidate source offsets per hole
    rounds: int = 4  # copy rounds for holes no single patch can fill
    min_patch_cells: int = 8  # smaller holes are gaps between surfels: nearest colour, no patch
    seen_tolerance: float = 1.5  # cells: a view sees a bare spot when its visible depth is this close
    chunk: int = 20_000  # cells per coverage batch (memory)


@dataclass
class PlaneGrid:
    """A regular grid on the plane n·x + d = 0: cell (i, j) is centred at
    origin + (u0 + (j + ½)·cell)·e1 + (v0 + (i + ½)·cell)·e2."""

    origin: np.ndarray
    e1: np.ndarray
    e2: np.ndarray
    normal: np.ndarray
    u0: float
    v0: float
    cell: float
    shape: tuple[int, int]

    def centers(self) -> np.ndarray:
        h, w = self.shape
        v, u = np.mgrid[0:h, 0:w]
        uu = self.u0 + (u.ravel() + 0.5) * self.cell
        vv = self.v0 + (v.ravel() + 0.5) * self.cell
        return self.origin + uu[:, None] * self.e1 + vv[:, None] * self.e2


def plane_grid(points: np.ndarray, plane, spacing: float, max_cells: int) -> PlaneGrid:
    """The grid over the points' extent on the plane, cells `spacing` wide (or coarser,
    so that the longer side has at most `max_cells`)."""
    from ..synth.surfels import tangent_frames

    n, d = np.asarray(plane[0], np.float64), float(plane[1])
    R = tangent_frames(n[None])[0]
    e1, e2 = R[:, 0], R[:, 1]
    origin = -d * n
    uv = np.stack([(points - origin) @ e1, (points - origin) @ e2], 1)
    lo, hi = uv.min(0), uv.max(0)
    cell = max(spacing, float((hi - lo).max()) / max_cells)
    w, h = (np.ceil((hi - lo) / cell).astype(int) + 1).tolist()
    return PlaneGrid(origin, e1, e2, n, float(lo[0]), float(lo[1]), cell, (h, w))


def support_surfels(background: Splats, plane, tol: float, max_tilt_deg: float) -> np.ndarray:
    """Boolean mask of the background surfels that lie flat on the plane."""
    from ..io.rotations import quat_to_rotmat

    n, d = plane
    means = background.means.astype(np.float64)
    normals = quat_to_rotmat(background.unit_quats().astype(np.float64))[:, :, 2]
    return (np.abs(means @ n + d) < tol) & (np.abs(normals @ n) > np.cos(np.radians(max_tilt_deg)))


def seen_colors(ev: SceneEvidence, image, points: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Per point, the mean colour of the real pixels whose visible surface is the point
    itself (at its depth within `tol`, labelled background), and whether any was.
    `image(name)` gives a view's RGB in [0, 1] or None; only views that see a point load."""
    acc = np.zeros((len(points), 3))
    count = np.zeros(len(points))
    for cam, depth, label in zip(ev.cameras, ev.depth, ev.label):
        u, v, z = project(cam, points)
        ok = in_frame(cam, u, v, z)
        i = np.flatnonzero(ok)
        ok[i] = (np.abs(depth[v[i], u[i]] - z[i]) < tol) & (label[v[i], u[i]] == -1)
        i = np.flatnonzero(ok)
        img = image(cam.name) if len(i) else None
        if img is None:
            continue
        acc[i] += img[v[i], u[i], :3]
        count[i] += 1
    return acc / np.maximum(count, 1)[:, None], count > 0


def fill_holes(colors: np.ndarray, known: np.ndarray, holes: np.ndarray, p: BackgroundParams) -> np.ndarray:
    """`colors` [H, W, 3] with every `holes` cell filled from the `known` cells:
    a shifted copy of the known patch whose ring around the hole matches best, then a
    smooth correction of the copy's difference along the hole's border. Holes no patch
    fills whole take what one copy gives and go round again; pinholes of a few cells
    (gaps between observed surfels) and whatever is left take the nearest known colour."""
    out = colors.copy()
    known = known.copy()
    for _ in range(p.rounds):
        todo = holes & ~known
        if not todo.any() or not known.any():
            break
        lab, _ = ndimage.label(todo)
        for k, box in enumerate(ndimage.find_objects(lab), start=1):
            if (lab[box] == k).sum() > p.min_patch_cells:
                _copy_patch(out, known, lab, k, box, p)
    left = holes & ~known
    if left.any() and known.any():
        _, (ii, jj) = ndimage.distance_transform_edt(~known, return_indices=True)
        out[left] = out[ii[left], jj[left]]
    return out


def _copy_patch(out: np.ndarray, known: np.ndarray, lab: np.ndarray, k: int, box, p: BackgroundParams) -> None:
    """Fill hole `k` (its bounding `box`) of `lab` in place; mark what it filled known."""
    H, W = known.shape
    r = p.ring_cells
    i0, i1 = max(box[0].start - r, 0), min(box[0].stop + r, H)
    j0, j1 = max(box[1].start - r, 0), min(box[1].stop + r, W)
    hole = lab[i0:i1, j0:j1] == k
    ring = ndimage.binary_dilation(hole, iterations=r) & known[i0:i1, j0:j1]
    hi, hj = np.nonzero(hole)
    ri, rj = np.nonzero(ring)
    if len(ri) == 0:
        return
    hi, hj, ri, rj = hi + i0, hj + j0, ri + i0, rj + j0
    # the border as the surface's own colour: a scrap of an object left on the table
    # (a dark rim, a coloured speck) neither steers the match nor tints the correction
    c = out[ri, rj]
    dev = np.abs(c - np.median(c, 0)).sum(1)
    inlier = dev <= max(p.ring_outlier * np.median(dev), 0.1)
    ri, rj = ri[inlier], rj[inlier]
    ext = max(box[0].stop - box[0].start, box[1].stop - box[1].start)
    reach = 3 * (ext + 2 * r) + 4
    step = max(1, int(np.ceil(2 * reach / np.sqrt(p.max_shifts))))
    s = step * np.arange(-(reach // step), reach // step + 1)  # 0 among them: a pure row or column shift
    dy, dx = [a.ravel() for a in np.meshgrid(s, s, indexing="ij")]
    far = np.maximum(np.abs(dy), np.abs(dx)) > ext // 2  # a source on the hole itself is no source
    dy, dx = dy[far], dx[far]

    def shifted(i, j):
        i2, j2 = i[None, :] + dy[:, None], j[None, :] + dx[:, None]
        inside = (i2 >= 0) & (i2 < H) & (j2 >= 0) & (j2 < W)
        i2, j2 = np.clip(i2, 0, H - 1), np.clip(j2, 0, W - 1)
        return i2, j2, inside & known[i2, j2]

    ri2, rj2, rok = shifted(ri, rj)
    hi2, hj2, hok = shifted(hi, hj)
    diff = ((out[ri2, rj2] - out[ri, rj][None]) ** 2).sum(-1)
    cost = np.where(rok, diff, 0).sum(1) / np.maximum(rok.sum(1), 1)
    score = hok.mean(1) * rok.mean(1)
    best = np.flatnonzero(score >= score.max() - 1e-9)
    b = best[np.argmin(cost[best])]
    if score[b] <= 0:
        return
    take, rtake = hok[b], rok[b]
    # the copy's mismatch along the border, spread smoothly over what it fills
    delta = np.zeros(out.shape)
    delta[ri[rtake], rj[rtake]] = out[ri[rtake], rj[rtake]] - out[ri2[b, rtake], rj2[b, rtake]]
    filled = _mask_from(hi[take], hj[take], known.shape)
    fixed = _mask_from(ri[rtake], rj[rtake], known.shape)
    correction = _harmonic(delta, filled, fixed)
    out[hi[take], hj[take]] = out[hi2[b, take], hj2[b, take]] + correction[hi[take], hj[take]]
    known |= filled


def _mask_from(i: np.ndarray, j: np.ndarray, shape) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[i, j] = True
    return m


def _harmonic(values: np.ndarray, unknown: np.ndarray, fixed: np.ndarray, iterations: int = 200) -> np.ndarray:
    """Smooth interpolation of `values` given on `fixed` cells into `unknown` cells:
    Jacobi iterations of Laplace's equation on the hole's bounding box (cells neither
    fixed nor unknown are free too, with zero-gradient borders). Only the hole's box is
    touched."""
    if not unknown.any() or not fixed.any():
        return np.zeros_like(values)
    ii, jj = np.nonzero(unknown | fixed)
    pad = 2
    i0, i1 = max(ii.min() - pad, 0), min(ii.max() + pad + 1, unknown.shape[0])
    j0, j1 = max(jj.min() - pad, 0), min(jj.max() + pad + 1, unknown.shape[1])
    v = values[i0:i1, j0:j1].copy()
    f = fixed[i0:i1, j0:j1]
    mean = v[f].mean(0)
    v[~f] = mean
    for _ in range(iterations):
        q = np.pad(v, ((1, 1), (1, 1), (0, 0)), mode="edge")
        avg = 0.25 * (q[:-2, 1:-1] + q[2:, 1:-1] + q[1:-1, :-2] + q[1:-1, 2:])
        v = np.where(f[..., None], v, avg)
    out = np.zeros_like(values)
    out[i0:i1, j0:j1] = v
    return out


def complete_background(background: Splats, plane, ev: SceneEvidence | None = None, image=None,
                        p: BackgroundParams | None = None) -> tuple[Splats, dict]:
    """The new surfels that close the support surface, and what was done (JSON-ready)."""
    from ..io.rotations import rotmat_to_quat
    from ..synth.surfels import tangent_frames

    p = p or BackgroundParams()
    bg = background.to_2dgs()
    empty = bg.subset(np.zeros(len(bg), bool))
    if plane is None or len(bg) < 100:
        return empty, {"new_gaussians": 0, "reason": "no support plane in the background"}
    spacing = surfel_spacing(bg.means.astype(np.float64))
    on = support_surfels(bg, plane, p.plane_tolerance * spacing, p.max_tilt_deg)
    if on.sum() < 100:
        return empty, {"new_gaussians": 0, "reason": "too few background surfels lie on the support plane"}
    flat = bg.subset(on)
    fm = flat.means.astype(np.float64)
    spacing = surfel_spacing(fm)
    grid = plane_grid(fm, plane, spacing, p.max_cells)
    centers = grid.centers()
    alpha = np.concatenate([disc_alpha(flat, centers[i: i + p.chunk], p.plane_tolerance * spacing)
                            for i in range(0, len(centers), p.chunk)]).reshape(grid.shape)
    covered = alpha >= p.cover_alpha
    from skimage.morphology import convex_hull_image

    region = convex_hull_image(covered)
    holes = region & ~covered
    info = {"plane": {"normal": np.round(grid.normal, 5).tolist(), "offset": round(float(plane[1]), 6)},
            "cell": round(grid.cell, 6), "grid": list(grid.shape),
            "coverage_observed": round(float(covered[region].mean()), 4)}
    if not holes.any():
        return empty, {**info, "new_gaussians": 0, "coverage_completed": info["coverage_observed"]}

    colors = np.zeros((*grid.shape, 3))
    colors[covered] = idw_colors(fm, flat.base_colors().astype(np.float64), centers[covered.ravel()], k=4)
    known = covered.copy()
    seen = 0
    if ev is not None and image is not None:
        hole_idx = np.flatnonzero(holes.ravel())
        rgb, ok = seen_colors(ev, image, centers[hole_idx], p.seen_tolerance * grid.cell)
        hi, hj = np.unravel_index(hole_idx[ok], grid.shape)
        colors[hi, hj] = rgb[ok]
        known[hi, hj] = True
        seen = int(ok.sum())
    colors = np.clip(fill_holes(colors, known, holes, p), 0.0, 1.0)

    hi, hj = np.nonzero(holes)
    pts = centers[hi * grid.shape[1] + hj]
    n = len(pts)
    sigma = max(float(np.median(np.sqrt(flat.scales().prod(1)))), 0.6 * grid.cell)
    opacity = float(np.clip(np.median(flat.opacities()), 0.5, 0.99))
    rot = rotmat_to_quat(tangent_frames(np.tile(grid.normal, (n, 1)))).astype(np.float32)
    new = Splats(
        means=pts.astype(np.float32),
        quats=rot,
        log_scales=np.full((n, 2), np.log(sigma), np.float32),
        opacity_logits=np.full(n, np.log(opacity / (1 - opacity)), np.float32),
        sh_dc=((colors[hi, hj] - 0.5) / SH_C0).astype(np.float32),
        sh_rest=np.zeros((n, bg.sh_rest.shape[1], 3), np.float32),
        extra={k: np.zeros(n, v.dtype) for k, v in bg.extra.items()},
    )
    after = 1.0 - (1.0 - alpha[hi, hj]) * (1.0 - disc_alpha(new, pts, p.plane_tolerance * spacing))
    covered_after = covered.copy()
    covered_after[hi, hj] = after >= p.cover_alpha
    info.update(new_gaussians=n, seen_in_views=seen, holes=int(ndimage.label(holes)[1]),
                coverage_completed=round(float(covered_after[region].mean()), 4))
    return new, info
