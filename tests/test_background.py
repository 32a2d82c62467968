"""Edited layouts (issue 18): the table closed where an object stood, with the table's
own texture; an instance sheds pieces glued to nothing before it is completed."""

import numpy as np

from instascene.complete.background import BackgroundParams, complete_background
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
    new, info = complete_background(table, (np.array([0.0, 0.0, 1.0]), 0.0), p=BackgroundParams())
    assert info["coverage_observed"] < 0.975 and info["coverage_completed"] >= 0.99, info
    m = new.means.astype(np.float64)
    assert np.abs(m[:, 2]).max() < 1e-6  # on the table's plane
    inside = (np.abs(m[:, 0]) < 0.04) & (np.abs(m[:, 1]) < 0.04)
    # the box's footprint (0.08 m square) is covered; hardly anything is added elsewhere
    assert inside.sum() >= 0.9 * (0.08 / info["cell"]) ** 2 and inside.mean() > 0.8
    # the stripes continue through it: a flat average would be 0.19 off on red
    err = np.abs(new.base_colors()[inside] - stripes(m[inside, 0])).mean(0)
    assert err[0] < 0.04 and err[1:].max() < 0.02, err


def test_a_table_with_nothing_missing_gets_nothing():
    table = table_without_box(box=0.0)
    new, info = complete_background(table, (np.array([0.0, 0.0, 1.0]), 0.0))
    assert info["coverage_observed"] > 0.99 and len(new) < 0.01 * len(table)


def test_no_support_plane_is_said_not_guessed():
    table = table_without_box()
    new, info = complete_background(table.subset(np.arange(50)), (np.array([0.0, 0.0, 1.0]), 0.0))
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
