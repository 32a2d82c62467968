"""Instances that meet in the views on continuous, convex surface are parts of one object (segment/seams.py)."""

from __future__ import annotations

import numpy as np

from instascene.complete.shape import concat_splats
from instascene.io.cameras import ring_cameras
from instascene.render import Gaussians, View, contributions
from instascene.segment.seams import ImageSeams, SeamParams, join_continuous


def _sphere(center, radius: float, n: int):
    """n points evenly spread on a sphere and their outward normals."""
    from surfel_splats import sphere_directions

    d = sphere_directions(n)
    return np.asarray(center) + radius * d, d


def _box(lo, hi, step: float, bottom: bool = True):
    """Points on the faces of an axis-aligned box on a grid `step` apart, outward normals."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    pts, nrm = [], []
    for axis in range(3):
        u, v = [a for a in range(3) if a != axis]
        gu = np.arange(lo[u] + step / 2, hi[u], step)
        gv = np.arange(lo[v] + step / 2, hi[v], step)
        uu, vv = [a.ravel() for a in np.meshgrid(gu, gv)]
        for side, value in ((-1.0, lo[axis]), (1.0, hi[axis])):
            if axis == 2 and side < 0 and not bottom:
                continue
            p = np.zeros((len(uu), 3))
            p[:, axis], p[:, u], p[:, v] = value, uu, vv
            n = np.zeros((len(uu), 3))
            n[:, axis] = side
            pts.append(p)
            nrm.append(n)
    return np.concatenate(pts), np.concatenate(nrm)


def _seams(splats, cams, p: SeamParams = SeamParams()) -> ImageSeams:
    g = Gaussians.from_splats(splats, device="cpu")
    seams = ImageSeams(splats.means, splats.to_2dgs().normals(), p)
    for cam in cams:
        c = contributions(g, View.from_camera(cam, device="cpu"), None).select("crossing")
        seams.add_view(c.pixel.numpy(), c.gaussian.numpy(), c.width, c.height, cam.world_to_camera)
    return seams


def test_a_ball_masked_in_two_halves_is_one_object_and_the_ball_it_touches_is_another():
    """A ball whose masks always cut it into the same two halves (as SAM cuts a soccer ball
    into its patches), and a second ball touching it. Where the halves meet in an image
    the surface runs on; where the two balls meet, one is mostly in front of the other.
    The halves join; the other ball stays apart."""
    from surfel_splats import facing_surfels

    pa, na = _sphere((0.0, 0.0, 0.3), 0.3, 4000)
    pb, nb = _sphere((0.45, 0.0, 0.15), 0.15, 1200)
    splats = concat_splats(facing_surfels(pa, na, 0.012), facing_surfels(pb, nb, 0.012))
    labels = np.r_[(pa[:, 1] >= 0).astype(int), np.full(len(pb), 2)]
    seams = _seams(splats, ring_cameras((0.1, 0.0, 0.25), 2.0, 8, 30.0, 128, 96))

    boundary, apart = seams.between(labels)
    assert boundary[0, 1] > 200 and apart[0, 1] < 0.05 * boundary[0, 1]  # halves: one surface
    assert boundary[0, 2] + boundary[1, 2] > 100  # the balls do meet in the images, mostly apart
    assert apart[0, 2] + apart[1, 2] > 0.5 * (boundary[0, 2] + boundary[1, 2])

    joined = join_continuous(labels, seams)
    assert len(np.unique(joined[labels < 2])) == 1
    assert joined[labels == 2][0] != joined[0] and len(np.unique(joined)) == 2
    seams.p = SeamParams(min_pixels=10 ** 9)  # no pair seen along enough boundary: nothing joins
    assert (join_continuous(labels, seams) == labels).all()


def test_a_brick_masked_as_top_and_sides_is_one_object_and_the_box_standing_on_it_another():
    """A brick whose top face and sides are masked apart (SAM's faces of a toy brick): they
    meet over a convex edge. A smaller box stands on its top: seen from above, the box's
    front foot meets the brick's top on continuous depth — a depth jump alone would join
    them — but in a concave crease. Top and sides join; the box stays apart."""
    from surfel_splats import facing_surfels

    s = 0.01
    pb, nb = _box((-0.3, -0.2, 0.0), (0.3, 0.2, 0.2), s, bottom=False)
    pt, nt = _box((-0.1, -0.08, 0.2), (0.1, 0.08, 0.36), s, bottom=False)
    under = (pb[:, 2] > 0.2 - 1e-9) & (np.abs(pb[:, 0]) < 0.1) & (np.abs(pb[:, 1]) < 0.08)
    pb, nb = pb[~under], nb[~under]
    splats = concat_splats(facing_surfels(pb, nb, 0.7 * s), facing_surfels(pt, nt, 0.7 * s))
    labels = np.r_[(nb[:, 2] < 0.5).astype(int), np.full(len(pt), 2)]  # 0: the brick's top, 1: its sides
    cams = ring_cameras((0.0, 0.0, 0.15), 2.0, 8, 35.0, 128, 96)

    joined = join_continuous(labels, _seams(splats, cams))
    assert joined[labels == 0][0] == joined[labels == 1][0]
    assert joined[labels == 2][0] != joined[labels == 0][0] and len(np.unique(joined)) == 2
    depth_only = join_continuous(labels, _seams(splats, cams, SeamParams(crease=np.inf)))
    assert len(np.unique(depth_only)) == 1
