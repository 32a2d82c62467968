"""Edited layouts (issue 18): the table (and a wall behind) closed where an object stood,
with the surface's own texture, fitted to the views where they see it; an instance sheds
pieces glued to nothing before it is completed."""

import numpy as np

from instascene.complete.background import BackgroundParams, complete_background, fit_background
from instascene.complete.guard import guard_labels
from instascene.io.splats import SH_C0, Splats

PERIOD = 0.05  # m: the table's stripes along x


def stripes(x: np.ndarray) -> np.ndarray:
    return np.stack([0.5 + 0.3 * np.sin(2 * np.pi * x / PERIOD), np.full_like(x, 0.4), np.full_like(x, 0.3)], 1)


def table_without_box(half=0.2, box=0.04, spacing=0.004, seed=0) -> Splats:
    """Surfels on z = 0 over a square table, striped, none under a box of half-size `box`."""
    rng = np.random.default_rng(seed)
    g = np.arange(-half, half, spacing) + spacing / 2
    x, y = [a.ravel() for a in np.meshgrid(g, g)]
    x, y = x + rng.normal(0, 0.15 * spacing, len(x)), y + rng.normal(0, 0.15 * spacing, len(y))
    keep = (np.abs(x) > box) | (np.abs(y) > box)
    x, y = x[keep], y[keep]
    n = len(x)
    return Splats(
        means=np.stack([x, y, np.zeros(n)], 1).astype(np.float32),
        quats=np.tile([1.0, 0, 0, 0], (n, 1)).astype(np.float32),  # local z = world z
        log_scales=np.full((n, 2), np.log(0.7 * spacing), np.float32),
        opacity_logits=np.full(n, 3.0, np.float32),
        sh_dc=((stripes(x) - 0.5) / SH_C0).astype(np.float32),
        sh_rest=np.zeros((n, 0, 3), np.float32),
    )


def test_the_table_under_a_removed_box_is_closed_with_the_tables_texture():
    table = table_without_box()
    new, _, info = complete_background(table, (np.array([0.0, 0.0, 1.0]), 0.0), p=BackgroundParams())
    assert info["coverage_observed"] < 0.975 and info["coverage_completed"] >= 0.99, info
    m = new.means.astype(np.float64)
    assert np.abs(m[:, 2]).max() < 1e-6  # on the table's plane
    inside = (np.abs(m[:, 0]) < 0.04) & (np.abs(m[:, 1]) < 0.04)
    # the box's footprint (0.08 m square) is covered; hardly anything is added elsewhere
    assert inside.sum() >= 0.9 * (0.08 / info["planes"][0]["cell"]) ** 2 and inside.mean() > 0.8
    # the stripes continue through it: a flat average would be 0.19 off on red
    err = np.abs(new.base_colors()[inside] - stripes(m[inside, 0])).mean(0)
    assert err[0] < 0.04 and err[1:].max() < 0.02, err


def surfels(points: np.ndarray, normal_axis: int, colors: np.ndarray, spacing: float) -> Splats:
    """Flat surfels at `points` facing along world axis `normal_axis` (2 = z, 0 = x)."""
    from surfel_splats import facing_surfels

    return facing_surfels(points, np.eye(3)[normal_axis], 0.7 * spacing, 3.0, colors)


def test_a_wall_behind_the_removed_box_is_closed_too_with_the_walls_texture():
    from instascene.complete.shape import concat_splats

    table = table_without_box()
    s = 0.004
    g = np.arange(-0.2, 0.2, s) + s / 2
    y, z = [a.ravel() for a in np.meshgrid(g, g[g > 0])]
    hidden = (np.abs(y) < 0.05) & (z < 0.1)  # the box's shadow on the wall: no camera saw it
    y, z = y[~hidden], z[~hidden]
    wall_rgb = lambda y: np.stack([np.full_like(y, 0.2), 0.5 + 0.3 * np.sin(2 * np.pi * y / PERIOD),  # noqa: E731
                                   np.full_like(y, 0.8)], 1)
    wall = surfels(np.stack([np.full_like(y, 0.2), y, z], 1), 0, wall_rgb(y), s)
    new, closing, info = complete_background(concat_splats(table, wall), (np.array([0.0, 0.0, 1.0]), 0.0))
    assert len(info["planes"]) == 2 and abs(abs(info["planes"][1]["normal"][0]) - 1) < 1e-3, info
    assert info["planes"][1]["coverage_completed"] >= 0.99 > info["planes"][1]["coverage_observed"]
    m = new.means.astype(np.float64)
    on_wall = np.abs(m[:, 0] - 0.2) < 1e-3
    behind = on_wall & (np.abs(m[:, 1]) < 0.05) & (m[:, 2] < 0.1)
    assert behind.sum() >= 0.9 * (0.1 * 0.1) / closing[1].grid.cell ** 2
    err = np.abs(new.base_colors()[behind] - wall_rgb(m[behind, 1])).mean(0)
    assert err[1] < 0.05 and err[[0, 2]].max() < 0.02, err  # the stripes continue across the wall too


def test_the_fit_keeps_each_planes_new_surfels_in_their_own_colours():
    """Table and wall closed together, then fitted to views that see both: the wall's
    new surfels (the second plane's, after the table's in the file) stay wall-coloured
    and the table's table-coloured — the refill after the fit keeps the planes apart."""
    import torch

    from instascene.complete.evidence import scene_evidence
    from instascene.complete.shape import concat_splats
    from instascene.io.cameras import Camera, intrinsics, look_at
    from instascene.render import Gaussians, View, rasterize

    s = 0.005
    g = np.arange(-0.2, 0.2, s) + s / 2
    x, y = [a.ravel() for a in np.meshgrid(g, g)]
    table = surfels(np.stack([x, y, np.zeros_like(x)], 1), 2, np.tile([0.8, 0.6, 0.3], (len(x), 1)), s)
    wy, wz = [a.ravel() for a in np.meshgrid(g, g[g > 0])]
    wall = surfels(np.stack([np.full_like(wy, 0.2), wy, wz], 1), 0, np.tile([0.2, 0.3, 0.9], (len(wy), 1)), s)
    hidden_t = (np.abs(x) < 0.05) & (np.abs(y) < 0.05)  # under a removed box
    hidden_w = (np.abs(wy) < 0.05) & (wz < 0.08)  # its shadow on the wall
    observed = concat_splats(table.subset(~hidden_t), wall.subset(~hidden_w))
    cams = [Camera(f"v{i}", 96, 96, intrinsics(120.0, 120.0, 48.0, 48.0),
                   look_at(np.array([-0.35, 0.25 * np.sin(a), 0.3]), np.array([0.1, 0.0, 0.05])), f"v{i}.png")
            for i, a in enumerate(np.linspace(-1, 1, 3))]
    gfull = Gaussians.from_splats(concat_splats(table, wall))
    with torch.no_grad():
        images = {c.name: rasterize(gfull, View.from_camera(c)).rgb.numpy() for c in cams}
    new, closing, info = complete_background(observed, (np.array([0.0, 0.0, 1.0]), 0.0))
    assert len(closing) == 2
    scene = concat_splats(observed, new)
    ev = scene_evidence(scene, np.full(len(scene), -1), cams, watch=np.arange(len(scene)) >= len(observed))
    fitted, fit = fit_background(new, closing, scene.base_colors(), ev, images.get)
    assert fit["fitted"] > 0
    m, c = fitted.means.astype(np.float64), fitted.base_colors()
    on_wall = np.abs(m[:, 0] - 0.2) < 1e-3
    assert on_wall.sum() > 50 and (~on_wall).sum() > 50
    assert np.abs(c[on_wall] - [0.2, 0.3, 0.9]).mean(1).max() < 0.1
    assert np.abs(c[~on_wall] - [0.8, 0.6, 0.3]).mean(1).max() < 0.1


def test_new_surfels_the_views_see_take_the_colour_the_views_show():
    """A patch of table that the observed background lacks but the cameras saw (red,
    unlike anything around it): the texture fill cannot know it, the fit to the views
    through the evidence's contribution pairs does; what no view saw keeps the texture."""
    import torch

    from instascene.complete.evidence import scene_evidence
    from instascene.complete.shape import concat_splats
    from instascene.io.cameras import Camera, intrinsics, look_at
    from instascene.render import Gaussians, View, rasterize

    s = 0.005
    g = np.arange(-0.2, 0.2, s) + s / 2
    x, y = [a.ravel() for a in np.meshgrid(g, g)]
    red = (np.abs(x - 0.03) < 0.02) & (np.abs(y) < 0.03)
    rgb = np.where(red[:, None], [0.9, 0.1, 0.1], [0.5, 0.5, 0.5])
    full = surfels(np.stack([x, y, np.zeros_like(x)], 1), 2, rgb, s)
    missing = (np.abs(x) < 0.06) & (np.abs(y) < 0.04)
    observed = full.subset(~missing)
    cams = [Camera(f"v{i}", 96, 96, intrinsics(150.0, 150.0, 48.0, 48.0),
                   look_at(np.array([0.3 * np.cos(a), 0.3 * np.sin(a), 0.45]), np.zeros(3)), f"v{i}.png")
            for i, a in enumerate(np.linspace(0, 2 * np.pi, 4, endpoint=False))]
    gfull = Gaussians.from_splats(full)
    with torch.no_grad():
        images = {c.name: rasterize(gfull, View.from_camera(c)).rgb.numpy() for c in cams}

    plane = (np.array([0.0, 0.0, 1.0]), 0.0)
    new, closing, _ = complete_background(observed, plane)
    scene = concat_splats(observed, new)
    watch = np.arange(len(scene)) >= len(observed)
    ev = scene_evidence(scene, np.full(len(scene), -1), cams, watch=watch)
    fitted, info = fit_background(new, closing, scene.base_colors(), ev, images.get)
    m = new.means.astype(np.float64)
    in_red = (np.abs(m[:, 0] - 0.03) < 0.015) & (np.abs(m[:, 1]) < 0.025)
    grey = (np.abs(m[:, 0] + 0.04) < 0.015) & (np.abs(m[:, 1]) < 0.025)
    assert in_red.sum() > 10 and grey.sum() > 10 and info["fitted"] > 0.5 * len(new)
    assert np.abs(new.base_colors()[in_red] - [0.9, 0.1, 0.1]).mean() > 0.2  # the texture fill alone: grey
    assert np.abs(fitted.base_colors()[in_red] - [0.9, 0.1, 0.1]).mean(1).max() < 0.1
    assert np.abs(fitted.base_colors()[grey] - 0.5).mean(1).max() < 0.1
    np.testing.assert_array_equal(fitted.means, new.means)
    # memory stays bounded: pairs are kept only in the views asked for
    one = scene_evidence(scene, np.full(len(scene), -1), cams, watch=watch, watch_views=[2])
    assert [p is None for p in one.pairs] == [True, True, False, True] and len(one.pairs[2]) > 0


def test_a_table_with_nothing_missing_gets_nothing():
    table = table_without_box(box=0.0)
    new, _, info = complete_background(table, (np.array([0.0, 0.0, 1.0]), 0.0))
    assert info["coverage_observed"] > 0.99 and len(new) < 0.01 * len(table)


def test_no_support_plane_is_said_not_guessed():
    table = table_without_box()
    new, _, info = complete_background(table.subset(np.arange(50)), (np.array([0.0, 0.0, 1.0]), 0.0))
    assert len(new) == 0 and "no support plane" in info["reason"]


def test_an_instance_sheds_a_detached_scrap_but_keeps_its_parts():
    rng = np.random.default_rng(1)
    ball = rng.normal(0, 1, (600, 3))
    ball = 0.05 * ball / np.linalg.norm(ball, axis=1, keepdims=True)
    scrap = ball[:20] * 0.2 + [0.3, 0.0, 0.0]  # 20 Gaussians glued to nothing, 0.25 m away
    halves = np.r_[ball[:300] + [0, 0.5, 0], ball[300:] + [0.0, 0.6, 0]]  # two touching halves
    means = np.r_[ball, scrap, halves]
    labels = np.r_[np.zeros(620, np.int32), np.ones(600, np.int32)]
    out, shed = guard_labels(labels, means)
    assert (out[600:620] == -1).all() and (out[:600] == 0).all() and (out[620:] == 1).all()
    assert shed == {0: 20, 1: 0}


def test_a_neighbours_fragment_goes_to_the_neighbour_and_an_outlying_bit_stays():
    from instascene.complete.shape import surfel_spacing

    rng = np.random.default_rng(2)
    sphere = rng.normal(0, 1, (600, 3))
    sphere = 0.05 * sphere / np.linalg.norm(sphere, axis=1, keepdims=True)
    a, b = sphere, sphere + [0.2, 0.0, 0.0]  # two balls 0.1 m apart
    spacing = surfel_spacing(np.r_[a, b])
    fragment = np.argsort(b[:, 0])[:20]  # B's side facing A, labelled A by a bad segmentation
    bit = np.array([-0.05 - 8 * spacing, 0.0, 0.0]) + rng.normal(0, 0.3 * spacing, (5, 3))  # A's own, 8 spacings out
    means = np.r_[a, b, bit]
    labels = np.r_[np.zeros(600, np.int32), np.ones(600, np.int32), np.zeros(5, np.int32)]
    labels[600 + fragment] = 0
    out, shed = guard_labels(labels, means)
    assert (out[600:1200] == 1).all()  # the fragment went back to B, whose surface it is
    assert (out[1200:] == 0).all() and (out[:600] == 0).all()  # the bit stays with A: no scrap left floating
    assert shed == {0: 20, 1: 0}
