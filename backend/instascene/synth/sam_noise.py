"""SAM-like 2D masks from true instance maps: the errors the paper's method must survive.

Per view, independently (so the errors differ from view to view), at one knob
`noise` in [0, 1] (0 = the true maps, relabelled):
  * objects over-segmented into parts, split by a plane through the object in its own
    frame (SAM's part masks: handle vs body), chosen per view;
  * touching objects merged into one mask;
  * masks missing in some views;
  * boundaries displaced by a smooth random field (one to a few pixels);
  * the background (table, wall) split into several regions.
Mask ids are shuffled per view; 0 = no mask.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _smooth_field(shape, sigma: float, rng: np.random.Generator) -> np.ndarray:
    f = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return f / (np.abs(f).max() + 1e-12)


def sam_like_masks(
    instance_map: np.ndarray,
    local_points: dict[int, np.ndarray],
    noise: float,
    rng: np.random.Generator,
    part_planes: dict[int, list[np.ndarray]],
) -> np.ndarray:
    """A noisy label map (uint16-ready int32, 0 = none) from `instance_map` (0 = background,
    k + 1 = object k). `local_points[k]` holds, for the pixels of object k (row-major order),
    their 3D coordinates in the object's own frame; `part_planes[k]` the candidate
    splitting planes (unit normals through the object's centre)."""
    H, W = instance_map.shape
    labels = np.zeros((H, W), np.int32)
    next_id = 1
    objects = [int(k) for k in np.unique(instance_map) if k > 0]

    # touching objects merged: pairs whose masks are adjacent
    merged_into = {k: k for k in objects}
    if objects and noise > 0:
        for k in objects:
            if rng.random() >= 0.25 * noise:
                continue
            grown = ndimage.binary_dilation(instance_map == k, iterations=2)
            touching = [j for j in np.unique(instance_map[grown]) if j > 0 and j != k]
            if touching:
                j = int(rng.choice(touching))
                merged_into[k] = merged_into[j]

    for k in objects:
        if merged_into[k] != k:
            continue
        members = [j for j in objects if merged_into[j] == k]
        region = np.isin(instance_map, members)
        if noise > 0 and rng.random() < 0.15 * noise:  # missed in this view
            continue
        if noise > 0 and len(members) == 1 and rng.random() < 0.35 * noise and part_planes.get(k - 1):
            plane = part_planes[k - 1][int(rng.integers(len(part_planes[k - 1])))]
            side = local_points[k - 1] @ plane > 0
            part = np.zeros((H, W), bool)
            part[region] = side
            for piece in (part, region & ~part):
                if piece.any():
                    labels[piece] = next_id
                    next_id += 1
        else:
            labels[region] = next_id
            next_id += 1

    # background split into a few regions (table vs wall vs patches), seeded per view
    bg = instance_map == 0
    if bg.any():
        n_regions = 1 + int(rng.integers(1, 2 + int(4 * noise)))
        seeds = np.stack([rng.uniform(0, H, n_regions), rng.uniform(0, W, n_regions)], 1)
        yy, xx = np.mgrid[0:H, 0:W]
        d = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2
        region_of = np.argmin(d, axis=-1)
        for r in range(n_regions):
            sel = bg & (region_of == r)
            if sel.any():
                labels[sel] = next_id
                next_id += 1

    # boundaries displaced by a smooth random field
    if noise > 0:
        amp = 0.5 + 2.5 * noise
        dy = amp * _smooth_field((H, W), 6.0, rng)
        dx = amp * _smooth_field((H, W), 6.0, rng)
        yy, xx = np.mgrid[0:H, 0:W]
        ys = np.clip(np.round(yy + dy).astype(int), 0, H - 1)
        xs = np.clip(np.round(xx + dx).astype(int), 0, W - 1)
        labels = labels[ys, xs]

    # shuffle ids so that nothing can be read from them
    ids = np.unique(labels[labels > 0])
    perm = np.zeros(int(labels.max()) + 1, np.int32)
    perm[ids] = rng.permutation(len(ids)) + 1
    return perm[labels]
