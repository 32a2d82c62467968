"""Background completion: close the surfaces the objects hid.

No camera saw the table under an object, so the observed background has a hole in
every footprint (and in the strips behind objects that every view had occluded);
moving an object aside shows void. InstaScene refines the background with new
Gaussians in the removed region (`refineBackgroud`, method.md §in-situ generation);
here, on the support plane that the objects' completion already uses and on every
further plane the background holds (a wall behind, a floor: `background_planes`):

  1. a grid on the plane at the observed surfels' spacing; each cell's coverage is the
     opacity the observed surfels lying on the plane give it (shape.disc_alpha). The
     surface's extent is the convex hull of the covered cells (a table top, a wall);
     a bare cell inside it is a hole;
  2. texture: each hole copies the colours of a shifted patch of nearby known surface
     whose ring around the hole matches best, so the grain or the carpet continues,
     plus a harmonic correction of the difference along the hole's border so the copy
     meets it without a seam;
  3. one surfel per hole cell, on the plane, with the observed surfels' size and
     opacity (`close_background`);
  4. the colours fitted to the real views where they show after all (the rims of the
     footprints, gaps between observed surfels): the scene evidence of the objects'
     completion is rasterized with the new surfels in place and keeps the pixels'
     composited pairs, a contribution cache — no second rasterization; what stays
     hidden takes the texture again, anchored on the fitted colours (`fit_background`).

The result is written as RUN/background_completed.ply: the observed background first,
unchanged, then the new surfels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from ..io.splats import SH_C0, Splats
from .evidence import SceneEvidence
from .finetune import FinetuneParams
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
    chunk: int = 20_000  # cells per coverage batch (memory)
    rim_cells: int = 4  # bare cells this close to the surface's outline are its rim, not a hole, unless wider
    max_planes: int = 3  # the support plane and at most this many minus one further planes (walls, a floor)
    min_plane_share: float = 0.1  # ... each holding at least this share of the background's surfels
    min_plane_surfels: int = 500  # ... and at least this many
    fit_share: float = 0.05  # a pixel is fitted where the new surfels give at least this weight
    fit_views: int = 24  # ... in at most this many real views, spread out (the evidence keeps their pairs)
    fit_seen: float = 1.0  # a new surfel keeps its fitted colour when seen for this many pixels' worth of weight
    fit: FinetuneParams = field(default_factory=FinetuneParams)


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
    n, d = plane
    means = background.means.astype(np.float64)
    normals = background.normals()
    return (np.abs(means @ n + d) < tol) & (np.abs(normals @ n) > np.cos(np.radians(max_tilt_deg)))


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
    # the sources that fill the most of the hole; among them the best match on its ring
    # (half the ring is enough to judge: a hole at the surface's edge has a ring on one side)
    fills, judged = hok.mean(1), rok.mean(1)
    best = np.flatnonzero((fills >= fills.max() - 1e-9) & (judged >= 0.5 * judged.max()))
    b = best[np.argmin(cost[best])]
    if fills[b] <= 0 or judged[b] <= 0:
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




def background_planes(background: Splats, support, p: BackgroundParams) -> list:
    """The planes to close: the support plane, then each further plane (a wall, a floor)
    that holds at least `min_plane_share` of the background's surfels lying flat on it
    (RANSAC on what the planes found so far leave), at most `max_planes` in all."""
    from ..segment.instances import dominant_plane

    if support is None:
        return []
    planes = [support]
    means = background.means.astype(np.float64)
    spacing = surfel_spacing(means)
    tol = p.plane_tolerance * spacing
    left = ~support_surfels(background, support, tol, p.max_tilt_deg)
    need = max(p.min_plane_surfels, p.min_plane_share * len(background))
    while len(planes) < p.max_planes and left.sum() >= need:
        plane = dominant_plane(means[left], tol)
        on = support_surfels(background, plane, tol, p.max_tilt_deg) & left
        if on.sum() < need:
            break
        planes.append(plane)
        left &= ~on
    return planes


@dataclass
class PlaneHoles:
    """One plane's grid: where the observed surfels cover it, and the holes to close."""

    plane: tuple
    grid: PlaneGrid
    alpha: np.ndarray  # [h, w] opacity the observed surfels give each cell
    covered: np.ndarray  # [h, w] alpha >= cover_alpha
    region: np.ndarray  # [h, w] the surface's extent: the convex hull of the covered cells, less its bare rim
    holes: np.ndarray  # [h, w] bare cells inside it
    colors: np.ndarray  # [h, w, 3] observed colour where covered, the texture fill in the holes
    tol: float  # distance within which a surfel lies on the plane
    sigma: float  # the new surfels' scale
    opacity: float  # ... and opacity


def plane_holes(background: Splats, plane, p: BackgroundParams) -> PlaneHoles | str:
    """The holes of `plane` in the observed background, their texture filled from the
    surface around them (or, as a string, why there is nothing to close)."""
    from skimage.morphology import convex_hull_image

    spacing = surfel_spacing(background.means.astype(np.float64))
    on = support_surfels(background, plane, p.plane_tolerance * spacing, p.max_tilt_deg)
    if on.sum() < 100:
        return "too few background surfels lie on the plane"
    flat = background.subset(on)
    fm = flat.means.astype(np.float64)
    spacing = surfel_spacing(fm)
    tol = p.plane_tolerance * spacing
    grid = plane_grid(fm, plane, spacing, p.max_cells)
    centers = grid.centers()
    alpha = np.concatenate([disc_alpha(flat, centers[i: i + p.chunk], tol)
                            for i in range(0, len(centers), p.chunk)]).reshape(grid.shape)
    covered = alpha >= p.cover_alpha
    region = convex_hull_image(covered)
    holes = region & ~covered
    # the hull's straight edges cut across the surface's scalloped rim: the thin bare
    # fringe along it is no hole (it would grow a ring around a round table); a hole at
    # the rim is kept where it is wide (a footprint at the table's edge)
    near_rim = ~ndimage.binary_erosion(region, iterations=p.rim_cells)
    holes &= ~near_rim | ndimage.binary_opening(holes, np.ones((3, 3), bool), iterations=p.rim_cells)
    region &= covered | holes
    colors = np.zeros((*grid.shape, 3))
    colors[covered] = idw_colors(fm, flat.base_colors().astype(np.float64), centers[covered.ravel()], k=4)
    colors = np.clip(fill_holes(colors, covered, holes, p), 0.0, 1.0)
    sigma = max(float(np.median(np.sqrt(flat.scales().prod(1)))), 0.6 * grid.cell)
    opacity = float(np.clip(np.median(flat.opacities()), 0.5, 0.99))
    return PlaneHoles(plane, grid, alpha, covered, region, holes, colors, tol, sigma, opacity)


def hole_surfels(ph: PlaneHoles, like: Splats) -> Splats:
    """One surfel per hole cell, on the plane, with the observed surfels' size and
    opacity and the cell's colour (SH degree and extras as `like`)."""
    from ..io.rotations import rotmat_to_quat
    from ..synth.surfels import tangent_frames

    hi, hj = np.nonzero(ph.holes)
    pts = ph.grid.centers()[hi * ph.grid.shape[1] + hj]
    n = len(pts)
    rot = rotmat_to_quat(tangent_frames(np.tile(ph.grid.normal, (n, 1)))).astype(np.float32)
    return Splats(
        means=pts.astype(np.float32),
        quats=rot,
        log_scales=np.full((n, 2), np.log(ph.sigma), np.float32),
        opacity_logits=np.full(n, np.log(ph.opacity / (1 - ph.opacity)), np.float32),
        sh_dc=((ph.colors[hi, hj] - 0.5) / SH_C0).astype(np.float32),
        sh_rest=np.zeros((n, like.sh_rest.shape[1], 3), np.float32),
        extra={k: np.zeros(n, v.dtype) for k, v in like.extra.items()},
    )


def close_background(background: Splats, planes: list, p: BackgroundParams | None = None
                     ) -> tuple[Splats, list[PlaneHoles], dict]:
    """The new surfels that close every plane's holes (texture-filled colours; the
    support plane's first), the planes' grids, and what was done (JSON-ready)."""
    from .shape import concat_splats

    p = p or BackgroundParams()
    bg = background.to_2dgs()
    new = bg.subset(np.zeros(len(bg), bool))
    if not planes or len(bg) < 100:
        return new, [], {"new_gaussians": 0, "reason": "no support plane in the background"}
    closing, records = [], []
    for plane in planes:
        ph = plane_holes(bg, plane, p)
        if isinstance(ph, str):
            if not closing:
                return new, [], {"new_gaussians": 0, "reason": ph.replace("the plane", "the support plane")}
            continue
        part = hole_surfels(ph, bg)
        hi, hj = np.nonzero(ph.holes)
        after = ph.alpha.copy()
        if len(part):
            own = disc_alpha(part, part.means.astype(np.float64), ph.tol)
            after[hi, hj] = 1.0 - (1.0 - after[hi, hj]) * (1.0 - own)
        closing.append(ph)
        new = concat_splats(new, part)
        records.append({"normal": np.round(ph.grid.normal, 5).tolist(), "offset": round(float(ph.plane[1]), 6),
                        "cell": round(ph.grid.cell, 6), "grid": list(ph.grid.shape),
                        "holes": int(ndimage.label(ph.holes)[1]), "new_gaussians": len(part),
                        "coverage_observed": round(float(ph.covered[ph.region].mean()), 4),
                        "coverage_completed": round(float((after >= p.cover_alpha)[ph.region].mean()), 4)})
    support = records[0]
    info = {"new_gaussians": len(new), "coverage_observed": support["coverage_observed"],
            "coverage_completed": support["coverage_completed"], "planes": records}
    return new, closing, info


def complete_background(background: Splats, plane, p: BackgroundParams | None = None
                        ) -> tuple[Splats, list[PlaneHoles], dict]:
    """`close_background` on the support `plane` and every further plane the background
    holds (background_planes)."""
    p = p or BackgroundParams()
    bg = background.to_2dgs()
    return close_background(bg, background_planes(bg, plane, p) if plane is not None else [], p)


def fit_background(new: Splats, closing: list[PlaneHoles], scene_colors: np.ndarray, ev: SceneEvidence,
                   image, p: BackgroundParams | None = None) -> tuple[Splats, dict]:
    """The new surfels' colours fitted to the real views where the background is seen.

    The scene evidence was rasterized with the new surfels appended to the scene
    (`scene_colors` [N, 3]: every Gaussian's colour, the new ones last) and kept, in up
    to `fit_views` views, the composited pairs of the pixels where they give at least
    `fit_share` of the colour (`ev.pairs`); on those of them whose visible surface is
    background, the new colours are fitted by L1 through the contribution cache
    (finetune.fit_colors, as an object's new Gaussians). A new surfel seen for at least
    `fit_seen` pixels' worth of weight keeps its fitted colour; the others, hidden under
    and behind the objects, take the texture fill again, now anchored on the fitted
    ones too. `image(name)` gives a view's RGB in [0, 1] or None."""
    from ..render import ContributionCache, Contributions, View
    from .finetune import FitView, fit_colors

    p = p or BackgroundParams()
    n_all, first = len(scene_colors), len(scene_colors) - len(new)
    if not len(new) or ev.pairs is None:
        return new, {"fitted": 0, "fit_views": 0}
    views, contribs, fits, seen = [], [], [], np.zeros(len(new))
    for cam, pairs, label in zip(ev.cameras, ev.pairs, ev.label):
        if pairs is None or not len(pairs):
            continue
        pix, gid, w = pairs.pixel.numpy(), pairs.gaussian.numpy(), pairs.weight.numpy().astype(np.float64)
        is_new = gid >= first
        share = np.bincount(pix[is_new], w[is_new], minlength=cam.width * cam.height)
        use = (share >= p.fit_share) & (label.reshape(-1) == -1)
        img = image(cam.name) if use.any() else None
        if img is None:
            continue
        if img.shape[:2] != label.shape:  # photos larger than the working cameras
            img = torch.nn.functional.interpolate(torch.as_tensor(img[..., :3]).permute(2, 0, 1)[None],
                                                  size=label.shape, mode="area")[0].permute(1, 2, 0).numpy()
        at = use[pix] & is_new
        seen += np.bincount(gid[at] - first, w[at], minlength=len(new))
        fits.append(FitView(len(views), img[..., :3].astype(np.float32), use.reshape(label.shape).astype(np.float32),
                            0.0))
        views.append(View.from_camera(cam))
        contribs.append(Contributions(pairs.width, pairs.height, pairs.n_gaussians, pairs.pixel.long(),
                                      pairs.gaussian.long(), pairs.transmittance, pairs.weight))
    if not views:
        return new, {"fitted": 0, "fit_views": 0}
    cache = ContributionCache.from_contributions(views, contribs)
    is_new = torch.zeros(n_all, dtype=torch.bool)
    is_new[first:] = True
    colors = fit_colors([cache], [fits], torch.as_tensor(scene_colors, dtype=torch.float32), is_new, p.fit)
    fitted_colors = colors[first:].numpy().astype(np.float64)
    fitted = seen >= p.fit_seen
    out, start = [], 0
    for ph in closing:  # the unfitted cells: texture again, anchored on the fitted ones
        n = int(ph.holes.sum())
        hi, hj = np.nonzero(ph.holes)
        f = fitted[start: start + n]
        start += n
        if not f.any():  # nothing new to anchor on: the texture fill stands as it was
            out.append(ph.colors[hi, hj])
            continue
        grid_colors = ph.colors.copy()
        grid_colors[hi[f], hj[f]] = fitted_colors[start - n: start][f]
        known = ph.covered.copy()
        known[hi[f], hj[f]] = True
        out.append(np.clip(fill_holes(grid_colors, known, ph.holes, p), 0.0, 1.0)[hi, hj])
    result = Splats(new.means, new.quats, new.log_scales, new.opacity_logits,
                    ((np.concatenate(out) - 0.5) / SH_C0).astype(np.float32), new.sh_rest, new.extra)
    return result, {"fitted": int(fitted.sum()), "fit_views": len(views)}
