"""Instances that meet in the views on continuous depth are parts of one object (segment/seams.py)."""

from __future__ import annotations

import numpy as np

from instascene.io.cameras import ring_cameras
from instascene.complete.shape import concat_splats
from instascene.render import Gaussians, View, contributions
from instascene.segment.seams import ImageSeams, SeamParams, join_continuous


def _sphere(center, radius: float, n: int):
    """n points evenly spread on a sphere (Fibonacci lattice) and their outward normals."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    phi = np.pi * (1 + 5 ** 0.5) * i
    d = np.stack([np.sqrt(1 - z ** 2) * np.cos(phi), np.sqrt(1 - z ** 2) * np.sin(phi), z], 1)
    return np.asarray(center) + radius * d, d


def _seams(splats, cams) -> ImageSeams:
    g = Gaussians.from_splats(splats, device="cpu")
    means = splats.means.astype(np.float64)
    seams = ImageSeams(len(means))
    for cam in cams:
        c = contributions(g, View.from_camera(cam, device="cpu"), None).select("crossing")
        seams.add_view(c.pixel.numpy(), c.gaussian.numpy(), c.width, c.height,
                       means @ cam.world_to_camera[2, :3] + cam.world_to_camera[2, 3])
    return seams


def test_a_ball_masked_in_two_halves_is_one_object_and_the_ball_it_touches_is_another():
    """A ball whose masks always cut it into the same two halves (as SAM cuts a soccer ball
    into its patches), and a second ball touching it. Where the halves meet in an image
    the surface runs on; where the two balls meet, one is mostly in front of the other.
    The halves join; the other ball stays apart, and so does a label no view shows."""
    from surfel_splats import facing_surfels

    pa, na = _sphere((0.0, 0.0, 0.3), 0.3, 4000)
    pb, nb = _sphere((0.45, 0.0, 0.15), 0.15, 1200)
    splats = concat_splats(facing_surfels(pa, na, 0.012), facing_surfels(pb, nb, 0.012))
    labels = np.r_[(pa[:, 1] >= 0).astype(int), np.full(len(pb), 2)]
    cams = ring_cameras((0.1, 0.0, 0.25), 2.0, 8, 30.0, 128, 96)
    seams = _seams(splats, cams)

    boundary, on_jump = seams.between(labels)
    assert boundary[0, 1] > 200 and on_jump[0, 1] < 0.05 * boundary[0, 1]  # halves: continuous
    assert boundary[0, 2] + boundary[1, 2] > 100  # the balls do meet in the images ...
    assert on_jump[0, 2] + on_jump[1, 2] > 0.5 * (boundary[0, 2] + boundary[1, 2])  # ... mostly on a jump

    joined = join_continuous(labels, seams)
    assert len(np.unique(joined[labels < 2])) == 1
    assert joined[labels == 2][0] != joined[0] and len(np.unique(joined)) == 2
    strict = join_continuous(labels, seams, SeamParams(min_pixels=10 ** 9))  # no pair seen enough: nothing joins
    assert (strict == labels).all()
