"""In-situ completion (issue 5): the closed mesh from depth, the run folder contract, the
geometric and the (tiny, offline) diffusion generator end to end, clear errors."""

import json
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from instascene.io.cameras import ring_cameras
from instascene.io.ply import read_ply, write_ply


def sphere_hits(cam, center, r):
    """Camera-z depths of the sphere's near and far side per pixel (0 = miss) and
    coverage, by ray casting."""
    j, i = np.meshgrid(np.arange(cam.width) + 0.5, np.arange(cam.height) + 0.5)
    d_cam = np.stack([(j - cam.cx) / cam.fx, (i - cam.cy) / cam.fy, np.ones_like(j)], -1)
    R = cam.world_to_camera[:3, :3]
    d = d_cam @ R  # world directions (unnormalised, camera z = 1)
    o = cam.center - center
    a, b, c = (d * d).sum(-1), 2 * (d @ o), o @ o - r * r
    disc = b * b - 4 * a * c
    root = np.sqrt(np.maximum(disc, 0))
    near, far = (np.where(disc > 0, (-b + s * root) / (2 * a), 0.0).astype(np.float32) for s in (-1, 1))
    return near, far, (disc > 0).astype(np.float32)


def test_tsdf_mesh_of_a_sphere_is_closed_and_right():
    from instascene.complete.mesh import MeshParams, extract_mesh, fuse_tsdf

    center, r = np.array([0.2, -0.1, 0.5]), 0.3
    cams = ring_cameras(center, 1.2, 12, 30, 96, 96, 50) + ring_cameras(center, 1.2, 6, -40, 96, 96, 50)
    depth = [sphere_hits(c, center, r)[0] for c in cams]
    grid, tsdf = fuse_tsdf(cams, np.stack(depth), center - r, center + r, None, MeshParams(resolution=48))
    verts, faces = extract_mesh(grid, tsdf)
    import trimesh

    mesh = trimesh.Trimesh(verts, faces, process=False)
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * r**3, rel=0.1)  # positive: faces wind outwards
    dist = np.abs(np.linalg.norm(verts - center, axis=1) - r)
    assert np.percentile(dist, 95) < 2 * grid.size


def test_depth_seen_through_a_thin_rim_does_not_tunnel_the_mesh():
    """Near its silhouette a splatted surface lets some rays through to the far side:
    their depth, far behind their neighbours', is no evidence, or each would carve a
    tunnel through the object."""
    from instascene.complete.mesh import MeshParams, extract_mesh, fuse_tsdf

    center, r = np.array([0.0, 0.0, 0.3]), 0.2
    cams = ring_cameras(center, 0.9, 16, 30, 96, 96, 50)
    rng = np.random.default_rng(0)
    depth = []
    for c in cams:
        near, far, cover = sphere_hits(c, center, r)
        rim = (cover > 0) & (far - near > 0.2 * r) & (far - near < 0.8 * r) & (rng.random(near.shape) < 0.3)
        depth.append(np.where(rim, far, near))
    depth = np.stack(depth)
    import trimesh

    def mesh(p):
        grid, tsdf = fuse_tsdf(cams, depth, center - r, center + r, None, p)
        return trimesh.Trimesh(*extract_mesh(grid, tsdf), process=False), grid

    m, grid = mesh(MeshParams(resolution=48))
    assert m.is_watertight and len(m.split(only_watertight=False)) == 1
    assert m.volume == pytest.approx(4 / 3 * np.pi * r**3, rel=0.1)
    assert np.percentile(np.abs(np.linalg.norm(m.vertices - center, axis=1) - r), 95) < 2 * grid.size
    assert len(mesh(MeshParams(resolution=48, edge_voxels=0.0))[0].split(only_watertight=False)) > 1


def _ball_surfels(center, r, seen_above: float, n: int = 40000, seed: int = 0):
    """Surfels on a ball where its unit direction's z exceeds `seen_above`, normals of random sign."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(n, 3))
    u = u[np.einsum("ij,ij->i", u, u) > 0]
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    u = u[u[:, 2] > seen_above]
    return center + r * u, u * rng.choice([-1.0, 1.0], size=(len(u), 1))


def test_an_object_seen_at_90_percent_keeps_its_seen_surface_in_the_mesh():
    """The ring's depth maps are coarse (here 24 px): on their own they blur the surface
    the real views resolved. Near the surfels the mesh follows them: F@1 % against the
    object's own observed surfels >= 0.95 where the ring alone reaches far less."""
    from instascene.complete.mesh import MeshParams, extract_mesh, fuse_tsdf
    from instascene.eval.metrics import fscore, sample_surface

    center, r = np.array([0.0, 0.0, 0.3]), 0.2
    cams = ring_cameras(center, 0.9, 16, 30, 24, 24, 50)
    depth = np.stack([sphere_hits(c, center, r)[0] for c in cams])
    means, normals = _ball_surfels(center, r, -0.8)  # 90 % of the ball seen
    tau = 0.01 * np.linalg.norm([2 * r] * 3)

    def f_seen(band):
        p = MeshParams(resolution=72, surfel_band=band)
        grid, tsdf = fuse_tsdf(cams, depth, center - r, center + r, None, p,
                               surfels=(means, normals, np.ones(len(means))))
        verts, faces = extract_mesh(grid, tsdf)
        pts = sample_surface((verts, faces), 50_000)
        on_seen = (pts - center)[:, 2] / np.linalg.norm(pts - center, axis=1) > -0.8
        return fscore(pts[on_seen], means, tau).f

    assert f_seen(1.0) >= 0.95
    assert f_seen(0.0) < 0.8  # the ring alone


def test_table_surfels_an_instance_carries_lay_no_slab_in_its_mesh():
    """A ball on the table whose instance also holds a few table surfels around its foot:
    the mesh follows the surfels on the closed shape only, not a sheet along the table."""
    from instascene.complete.evidence import Grid
    from instascene.complete.mesh import MeshParams, extract_mesh, fuse_tsdf

    center, r = np.array([0.0, 0.0, 0.2]), 0.2
    plane = (np.array([0.0, 0.0, 1.0]), 0.0)
    cams = ring_cameras(center, 0.9, 16, 30, 48, 48, 50)
    depth = np.stack([sphere_hits(c, center, r)[0] for c in cams])
    ball, ball_n = _ball_surfels(center, r, -0.5)
    rng = np.random.default_rng(1)
    t = rng.uniform(-0.3, 0.3, (400, 2))
    t = t[np.linalg.norm(t, axis=1) > 0.12][:300]
    means = np.r_[ball, np.c_[t, np.full(len(t), 0.002)]]
    normals = np.r_[ball_n, np.tile([0.0, 0.0, 1.0], (len(t), 1))]
    lo, hi = means.min(0), means.max(0)
    shape_grid = Grid.around(lo, hi, 60)
    closed = (np.linalg.norm(shape_grid.centers() - center, axis=1) < r).reshape(shape_grid.shape)
    grid, tsdf = fuse_tsdf(cams, depth, lo, hi, plane, MeshParams(resolution=72), prior=(shape_grid, closed),
                           surfels=(means, normals, np.ones(len(means))))
    verts, faces = extract_mesh(grid, tsdf)
    import trimesh

    assert trimesh.Trimesh(verts, faces, process=False).is_watertight
    assert np.linalg.norm(verts[:, :2] - center[:2], axis=1).max() < 1.05 * r


def test_a_ball_resting_on_another_object_is_mirrored_about_its_own_middle():
    """A ball lying on a box, not on the table, is as symmetric as one on the table: its
    mirror plane is searched over its own extent (not down to the table, which would
    leave its middle out of reach)."""
    from instascene.complete.evidence import Grid
    from instascene.complete.shape import mirror_plane

    plane = (np.array([0.0, 0.0, 1.0]), 0.0)
    centre, r = np.array([0.0, 0.0, 0.15]), 0.04
    grid = Grid.around(np.array([-0.06, -0.06, 0.09]), np.array([0.06, 0.06, 0.21]), 64)
    x = grid.centers()
    occ = ((np.linalg.norm(x - centre, axis=1) <= r) | (x[:, 2] < centre[2] - r)).reshape(grid.shape)  # + the box
    u = np.random.default_rng(0).normal(size=(20000, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    seen = centre + r * u[u[:, 2] > -0.3]  # the bottom cap rests on the box, unseen
    q, offset, conflict = mirror_plane(occ, grid, seen, plane, 0.2, grounded=False)
    assert abs(centre @ q - offset) < 1.5 * grid.size and conflict < 0.05  # through the centre (any tilt will do)
    down_to_table = mirror_plane(occ, grid, seen, plane, 0.2, grounded=True)
    assert down_to_table is None or abs(centre @ down_to_table[0] - down_to_table[1]) > 2 * grid.size


def _surfels_facing(points: np.ndarray, normals: np.ndarray, spacing: float):
    from surfel_splats import facing_surfels

    return facing_surfels(points, normals, 0.8 * spacing)


def _ring_mesh_precision(half: np.ndarray, rot: np.ndarray, spacing: float, sigma: float):
    """A rotated box of discs (`spacing` apart on its faces, scale `sigma`) rendered from the
    ring as the pipeline does; returns precision(params, alpha=True): the share of the
    mesh `fuse_tsdf` builds (the box as its closed shape, the views' coverage used or not)
    within τ (1 % of the box's diagonal) of the box."""
    import torch

    from instascene.complete.evidence import Grid
    from instascene.complete.mesh import extract_mesh, fuse_tsdf
    from instascene.complete.ring import render_cached, view_caches
    from instascene.eval.metrics import sample_surface

    center = np.array([0.0, 0.0, 0.3])
    pts, nrm = [], []
    for ax in range(3):
        o1, o2 = (ax + 1) % 3, (ax + 2) % 3
        a, b = (x.ravel() for x in np.meshgrid(np.arange(-half[o1] + spacing / 2, half[o1], spacing),
                                               np.arange(-half[o2] + spacing / 2, half[o2], spacing)))
        for sign in (-1.0, 1.0):
            p = np.zeros((len(a), 3))
            p[:, ax], p[:, o1], p[:, o2] = sign * half[ax], a, b
            pts.append(p)
            nrm.append(np.tile(np.eye(3)[ax] * sign, (len(a), 1)))
    pts, nrm = center + np.concatenate(pts) @ rot.T, np.concatenate(nrm) @ rot.T
    box = _surfels_facing(pts, nrm, sigma)
    cams = ring_cameras(center, 0.9, 16, 30, 192, 192, 50)
    g, cache, depth = view_caches(box, cams, gap=0.01)
    R = render_cached(g, cache, cams, depth, torch.zeros(len(box), 3), torch.ones(len(box)))

    def off_box(x):
        q = np.abs((x - center) @ rot) - half
        return np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(1), 0)

    shape_grid = Grid.around(pts.min(0) - 0.02, pts.max(0) + 0.02, 60)
    closed = (off_box(shape_grid.centers()) < shape_grid.size).reshape(shape_grid.shape)
    surfels = (box.means.astype(np.float64), box.normals(), box.opacities().astype(np.float64))
    tau = 0.01 * np.linalg.norm(2 * half)

    def precision(params, alpha: bool = True) -> float:
        grid, tsdf = fuse_tsdf(cams, R.depth, pts.min(0), pts.max(0), None, params, prior=(shape_grid, closed),
                               surfels=surfels, alpha=R.alpha if alpha else None)
        return np.mean(np.abs(off_box(sample_surface(extract_mesh(grid, tsdf), 20_000))) < tau)

    return precision


def test_the_soft_rims_of_a_boxs_discs_grow_no_wings_on_its_mesh():
    """A tilted box of large soft discs (σ ≈ 2.4 × their spacing), rendered from the ring
    as the pipeline does: past every edge the discs' rims still cover a pixel more than
    half, with the depth of the face they continue. Taken as surface they grow wings
    along the edges (the mesh reaches 25-55 % beyond the box); as no evidence, the mesh
    is the box. (This rule alone: past the surfels' band their edge decides too, which
    also trims these wings — `beyond_voxels`, off here.)"""
    from scipy.spatial.transform import Rotation

    from instascene.complete.mesh import MeshParams

    rot = Rotation.from_euler("zx", [30, 20], degrees=True).as_matrix()
    s = 0.006
    precision = _ring_mesh_precision(np.array([0.1, 0.06, 0.04]), rot, s, 3 * s)
    params = MeshParams(resolution=56, beyond_voxels=0)
    assert precision(params) > 0.97
    assert precision(params, alpha=False) < 0.8  # every covered pixel taken as surface


def test_a_plate_three_voxels_thick_grows_no_second_sheet():
    """A thin plate (an ear, a fin: 4 mm, about three mesh voxels) rendered from the ring:
    a view from one side sees its near face, one from the other side puts the space
    just off that face behind its own near face (inside), and those layers lie past the
    surfels' band where the surfels no longer decide. The mesh took them for a second
    sheet around the plate (13 % of it more than τ off the plate, the worst 4 voxels
    out); now no inside begins past the band where its edge is outside."""
    from scipy.spatial.transform import Rotation

    from instascene.complete.mesh import MeshParams

    rot = Rotation.from_euler("zx", [30, 50], degrees=True).as_matrix()
    s = 0.0015
    precision = _ring_mesh_precision(np.array([0.05, 0.03, 0.002]), rot, s, 1.5 * s)
    assert precision(MeshParams()) > 0.95
    assert precision(MeshParams(beyond_voxels=0.0)) < 0.9  # without the rule


def test_a_ball_sunk_into_a_hole_is_closed_by_its_mirror_image_not_cut_flat():
    """A ball resting in the hole of a plate (a ball between its neighbours): no camera
    sees its lower 35 %. The convex hull of what was seen ends flat at the plate; the
    symmetry prior is judged against what the cameras saw empty, not against that
    guess, and closes the ball below the plate (judged against the convex hull, the
    mirrored top lay outside it and the ball stayed cut flat)."""
    from instascene.complete.evidence import scene_evidence
    from instascene.complete.shape import ShapeParams, close_shape, concat_splats

    c, r, s = np.array([0.0, 0.0, 0.15]), 0.05, 0.003
    rng = np.random.default_rng(0)
    u = rng.normal(size=(8000, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    u = u[u[:, 2] > -0.3]  # above the plate
    zp = c[2] - 0.3 * r
    g = np.arange(-0.15, 0.15, s) + s / 2
    x, y = [a.ravel() for a in np.meshgrid(g, g)]
    hole = np.hypot(x, y) < r * np.sqrt(1 - 0.3 ** 2)
    plate = np.c_[x, y, np.full_like(x, zp)][~hole]
    below = np.c_[x, y, np.full_like(x, c[2] - r)]  # what the ball rests on, under the plate
    up = np.tile([0.0, 0.0, 1.0], (len(plate), 1))
    splats = concat_splats(_surfels_facing(c + r * u, u, s),
                           concat_splats(_surfels_facing(plate, up, s), _surfels_facing(below, up[:1].repeat(len(below), 0), s)))
    labels = np.r_[np.zeros(len(u), int), np.ones(len(plate) + len(below), int)]
    cams = ring_cameras(c, 0.6, 12, 40, 64, 64, 40)
    ev = scene_evidence(splats, labels, cams)
    others = np.r_[plate, below]
    shape = close_shape(ev, 0, c + r * u, others, (np.array([0.0, 0.0, 1.0]), 0.0), ShapeParams(resolution=48))
    assert shape.mirror is not None and abs(shape.mirror[1] - c @ shape.mirror[0]) < 0.1 * r
    assert shape.vertices[:, 2].min() < c[2] - 0.8 * r  # below the plate (at c - 0.3 r), near the true bottom


def test_the_inside_of_a_mug_its_rim_hides_is_carved_by_the_mirror_image_of_the_inside_seen():
    """A mug against a wall, seen only from the front: the cameras see its far inner
    wall over the rim and the space in front of it empty, never the near half of its
    inside. The hull keeps that half solid; the mirror image of the space seen empty,
    about the mug's upright plane through its handle, empties it. Its walls and handle
    stay."""
    from instascene.complete.evidence import scene_evidence
    from instascene.complete.shape import ShapeParams, close_shape

    R, r_in, H = 0.04, 0.033, 0.08
    rng = np.random.default_rng(0)

    def wall(radius, z0, n, facing):
        t, z = rng.uniform(0, 2 * np.pi, n), rng.uniform(z0, H, n)
        u = np.c_[np.cos(t), np.sin(t), np.zeros(n)]
        return np.c_[radius * u[:, :2], z], facing * u

    (outer, n_out), (inner, n_in) = wall(R, 0.0, 9000, 1.0), wall(r_in, 0.008, 7000, -1.0)
    t, rr = rng.uniform(0, 2 * np.pi, 1500), np.sqrt(rng.uniform(r_in**2, R**2, 1500))
    rim = np.c_[rr * np.cos(t), rr * np.sin(t), np.full(1500, H)]
    lo, hi = np.array([R, -0.006, 0.02]), np.array([R + 0.025, 0.006, 0.06])  # the handle, in the plane y = 0
    handle = rng.uniform(lo, hi, (4000, 3))
    axis, top = rng.integers(0, 3, len(handle)), rng.integers(0, 2, len(handle)).astype(bool)
    handle[np.arange(len(handle)), axis] = np.where(top, hi[axis], lo[axis])
    n_handle = np.eye(3)[axis] * np.where(top, 1.0, -1.0)[:, None]
    keep = ~((axis == 0) & ~top) & (handle[:, 1] < 0)  # not against the mug; its front half
    front, back = outer[:, 1] < 0.005, inner[:, 1] > -0.005  # what the front cameras see
    pts = np.r_[outer[front], inner[back], rim, handle[keep]]
    normals = np.r_[n_out[front], n_in[back], np.tile([0.0, 0.0, 1.0], (len(rim), 1)), n_handle[keep]]
    cams = [c for c in ring_cameras(np.array([0.0, 0.0, H / 2]), 0.4, 16, 40, 64, 64, 40) if c.center[1] < -0.05]
    ev = scene_evidence(_surfels_facing(pts, normals, 0.003), np.zeros(len(pts), int), cams)
    probes = np.array([[0.0, 0.022, 0.05],  # the inside, far half (seen)
                       [0.0, -0.0365, 0.04], [0.0525, 0.0, 0.04]])  # the near wall, the handle

    def occupied(upright):
        shape = close_shape(ev, 0, pts, np.zeros((0, 3)), (np.array([0.0, 0.0, 1.0]), 0.0),
                            ShapeParams(resolution=48, upright_symmetry=upright))
        idx, _ = shape.grid.index(probes)
        x = shape.grid.centers()
        near_half = (np.hypot(x[:, 0], x[:, 1]) < 0.8 * r_in) & (x[:, 1] < -0.005) & (x[:, 2] > 0.02) & (x[:, 2] < 0.075)
        occ = shape.occupancy.reshape(-1)
        return shape, occ[idx].tolist(), occ[near_half].mean()  # share of the near half's inside kept solid

    shape, occ, near = occupied(True)
    assert abs(shape.upright_mirror[0][1]) > 0.99 and abs(shape.upright_mirror[1]) < 0.004
    assert occ == [False, True, True]
    _, occ, near_hull = occupied(False)
    assert occ == [False, True, True] and near_hull > 0.75  # the hull alone fills the near half
    assert near < near_hull - 0.15


def test_the_seen_shell_keeps_what_it_wraps_and_drops_what_it_only_faces():
    """The winding number of the seen surface: a ball whose lowest 30 % no camera saw
    stays whole down to its hole (spanned by a film that sags little), and the cavity of
    a cup, whose inner wall faces into it, is not inside although a convex bound fills it."""
    from instascene.complete.evidence import Grid
    from instascene.complete.shape import outside_shell, winding_field

    rng = np.random.default_rng(0)
    u = rng.normal(size=(6000, 3))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    grid = Grid.around(np.full(3, -1.5), np.full(3, 1.5), 40)
    x = grid.centers()
    r = np.linalg.norm(x, axis=1)
    w = winding_field(grid, np.ones(grid.shape, bool), u, u * 4 * np.pi / len(u)).reshape(-1)
    assert abs(np.median(w[r < 0.7]) - 1) < 0.02 and np.abs(w[r > 1.3]).max() < 0.05
    ball = (r < 1).reshape(grid.shape)
    top = u[:, 2] > -0.4  # a ball resting in a hole: its bottom unseen
    kept = ~outside_shell(ball, grid, u[top], u[top], None, 0.3).reshape(-1)
    assert kept[(r < 0.95) & (x[:, 2] > -0.6)].mean() > 0.99

    # a cup: outer wall r = 1, inner wall r = 0.8 facing the axis, base and floor, open top
    n = 12000
    t, z = rng.uniform(0, 2 * np.pi, n), rng.uniform(-1, 1, n)
    radial = np.c_[np.cos(t), np.sin(t), np.zeros(n)]
    floor = z > -0.8  # the inner wall ends on the cup's floor
    outer, inner = np.c_[radial[:, :2], z], np.c_[0.8 * radial[floor, :2], z[floor]]
    disc = rng.uniform(-1, 1, (n, 2))
    disc = disc[np.hypot(disc[:, 0], disc[:, 1]) < 1]
    inside_floor = disc[np.hypot(disc[:, 0], disc[:, 1]) < 0.8]
    pts = np.r_[outer, inner, np.c_[disc, np.full(len(disc), -1.0)],
                np.c_[inside_floor, np.full(len(inside_floor), -0.8)]]
    normals = np.r_[radial, -radial[floor], np.tile([0.0, 0.0, -1.0], (len(disc), 1)),
                    np.tile([0.0, 0.0, 1.0], (len(inside_floor), 1))]
    filled = ((np.hypot(x[:, 0], x[:, 1]) < 1) & (np.abs(x[:, 2]) < 1)).reshape(grid.shape)
    kept = ~outside_shell(filled, grid, pts, normals, None, 0.3).reshape(-1)
    rr = np.hypot(x[:, 0], x[:, 1])
    assert kept[(rr < 0.6) & (x[:, 2] > -0.5) & (x[:, 2] < 0.8)].mean() < 0.05  # the cavity
    assert kept[(rr > 0.84) & (rr < 0.96) & (np.abs(x[:, 2]) < 0.9)].mean() > 0.9  # the wall


def test_a_thin_wall_seen_from_both_sides_faces_both_ways():
    """Normals turned towards the cameras that see each surfel: the two faces of a thin
    plate, seen from above and from below, point apart whatever sign they came with."""
    from instascene.complete.evidence import facing_sign, scene_evidence

    g = np.arange(-0.05, 0.05, 0.002) + 0.001
    x, y = [a.ravel() for a in np.meshgrid(g, g)]
    top, bottom = np.c_[x, y, np.full_like(x, 0.002)], np.c_[x, y, np.full_like(x, -0.002)]
    pts = np.r_[top, bottom]
    up = np.tile([0.0, 0.0, 1.0], (len(pts), 1))
    normals = np.r_[up[: len(top)], -up[len(top):]]
    cams = (ring_cameras(np.zeros(3), 0.3, 6, 50, 64, 64, 40)
            + ring_cameras(np.zeros(3), 0.3, 6, -50, 64, 64, 40))
    ev = scene_evidence(_surfels_facing(pts, normals, 0.002), np.zeros(len(pts), int), cams)
    sign = facing_sign(ev, 0, pts, up, 0.003)  # the faces lie 0.004 apart
    assert np.mean(sign[: len(top)] == 1) > 0.9 and np.mean(sign[len(top):] == -1) > 0.9


def test_the_space_under_an_overhang_is_not_filled_down_to_the_table():
    """A box standing on one edge, tilted 45°: the convex prior reaches down to the table
    only under its lowest part, not under the whole overhanging box."""
    from instascene.complete.shape import convex_extrusion_distance

    rng = np.random.default_rng(1)
    u = rng.uniform(-0.05, 0.05, (5000, 3))
    c, s_ = np.cos(np.pi / 4), np.sin(np.pi / 4)
    box = u @ np.array([[c, 0, s_], [0, 1, 0], [-s_, 0, c]]).T + [0, 0, 0.05 * np.sqrt(2)]
    plane = (np.array([0.0, 0.0, 1.0]), 0.0)
    under_overhang = np.array([[0.06, 0.0, 0.01]])  # beside the contact edge, under the box
    inside = np.array([[0.0, 0.0, 0.07]])
    assert convex_extrusion_distance(under_overhang, box, plane, band=1.0)[0] < 0  # the old shadow
    assert convex_extrusion_distance(under_overhang, box, plane, band=0.05)[0] > 0.01
    assert convex_extrusion_distance(inside, box, plane, band=0.05)[0] < 0


def test_an_object_on_another_stands_on_it_not_on_the_table():
    """A box on a box is not extruded down to the table; a ball touching the table at
    its unseen bottom still stands on it."""
    from instascene.complete.shape import resting_on

    rng = np.random.default_rng(0)
    plane = (np.array([0.0, 0.0, 1.0]), 0.0)
    lower = rng.uniform([-0.1, -0.1, 0.0], [0.1, 0.1, 0.1], (4000, 3))
    upper = rng.uniform([-0.05, -0.05, 0.1], [0.05, 0.05, 0.2], (2000, 3))
    assert not resting_on(upper, lower, plane, 0.005)
    assert resting_on(lower, upper, plane, 0.005)
    ball = rng.normal(size=(3000, 3))
    ball = 0.05 * ball / np.linalg.norm(ball, axis=1, keepdims=True) + [0.3, 0, 0.05]
    seen = ball[ball[:, 2] > 0.03]  # the bottom cap is hidden
    assert resting_on(seen, np.concatenate([lower, upper]), plane, 0.005)


def test_a_box_stands_on_a_face_a_ball_does_not():
    """The seen sides of a box come down to the table all around; a ball's lowest seen
    ring is well above it (its contact point is hidden)."""
    from instascene.complete.shape import flat_bottomed

    rng = np.random.default_rng(2)
    plane = (np.array([0.0, 0.0, 1.0]), 0.0)
    n = 6000  # points on the four sides (the bottom is unseen) and the top
    side, t, z = rng.integers(0, 4, n), rng.uniform(-0.05, 0.05, n), rng.uniform(0.0, 0.08, n)
    x = np.select([side == 0, side == 1], [-0.05, 0.05], t)
    y = np.select([side == 2, side == 3], [-0.05, 0.05], t)
    box = np.stack([x, y, z], axis=1)
    top = rng.uniform([-0.05, -0.05, 0.08], [0.05, 0.05, 0.08], (1500, 3))
    assert flat_bottomed(np.concatenate([box, top]), plane, 0.002, 2.5)
    ball = rng.normal(size=(6000, 3))
    ball = 0.05 * ball / np.linalg.norm(ball, axis=1, keepdims=True) + [0, 0, 0.05]
    assert not flat_bottomed(ball[ball[:, 2] > 0.015], plane, 0.002, 2.5)


def _seen_from_above(inside, grid):
    """The visual hull of cameras looking down: every voxel under the object's top
    surface is kept (its bottom and what lies under it were never seen)."""
    occ = inside.reshape(grid.shape)
    return np.flip(np.logical_or.accumulate(np.flip(occ, axis=2), axis=2), axis=2)


def _tilted_ellipsoid(degrees: float):
    """An ellipsoid lying on the table (z = 0) tilted about y, seen from above: the
    visual hull, its seen Gaussians (all but the bottom), its centre and short axis."""
    from instascene.complete.evidence import Grid

    t = np.radians(degrees)
    R = np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]])
    axes = np.array([0.06, 0.04, 0.025])
    lift = np.sqrt(((R * axes) ** 2).sum(1))[2]  # the lowest point touches the table
    centre = np.array([0.0, 0.0, lift])
    grid = Grid.around(np.array([-0.09, -0.06, -0.01]), np.array([0.09, 0.06, 0.09]), 64)
    local = (grid.centers() - centre) @ R  # coordinates in the ellipsoid's frame
    occ = _seen_from_above((local / axes) ** 2 @ np.ones(3) <= 1.0, grid)
    rng = np.random.default_rng(0)
    u = rng.normal(size=(20000, 3))
    surface = (u / np.linalg.norm(u, axis=1, keepdims=True) * axes) @ R.T + centre
    normal = R[:, 2]  # the ellipsoid's short axis: its mirror plane x·normal = centre·normal
    seen = surface[(surface - centre) @ normal > -0.3 * axes[2]]
    return occ, grid, seen, centre, normal


def test_a_tilted_mirror_plane_is_found_and_an_asymmetric_object_has_none():
    """An ellipsoid lying on the table tilted 12° is symmetric about its tilted middle
    plane: found from its seen top half alone. A cone on its base has no such plane."""
    from instascene.complete.shape import mirror_plane

    plane = (np.array([0.0, 0.0, 1.0]), 0.0)
    occ, grid, seen, centre, normal = _tilted_ellipsoid(12.0)
    q, offset, conflict = mirror_plane(occ, grid, seen, plane, 0.2)
    assert np.degrees(np.arccos(min(1.0, abs(q @ normal)))) < 2.5
    assert abs(offset - centre @ q) < 1.5 * grid.size
    assert conflict < 0.05

    rng = np.random.default_rng(0)
    h = rng.uniform(0, 1, 20000) ** 0.5  # a cone on its base, 6 cm high: its seen side
    phi = rng.uniform(0, 2 * np.pi, 20000)
    cone = np.stack([0.04 * h * np.cos(phi), 0.04 * h * np.sin(phi), 0.06 * (1 - h)], axis=1)
    local = grid.centers()
    inside = (np.hypot(local[:, 0], local[:, 1]) <= 0.04 * (1 - local[:, 2] / 0.06)) & (local[:, 2] >= 0)
    assert mirror_plane(_seen_from_above(inside, grid), grid, cone, plane, 0.2) is None


def test_a_hull_cut_where_gaussians_were_lost_does_not_tilt_the_mirror_plane():
    """A flat ellipsoid on the table (a torus-like disc) whose lower half on one side went
    to a neighbour: the convex bound of what is left is cut there. Judged against that
    bound alone, the least-conflict plane tilts over the cut (its image of the top
    avoids it); the plane the evidence gives is level through the middle, and the bound
    objects to it hardly more: that one is kept."""
    from instascene.complete.evidence import Grid
    from instascene.complete.shape import mirror_plane

    plane = (np.array([0.0, 0.0, 1.0]), 0.0)
    centre, axes = np.array([0.0, 0.0, 0.025]), np.array([0.06, 0.06, 0.025])
    grid = Grid.around(np.array([-0.08, -0.08, -0.01]), np.array([0.08, 0.08, 0.06]), 64)
    x = grid.centers()
    evidence = (((x - centre) / axes) ** 2).sum(1) <= 1.0
    cut = evidence & ~((x[:, 0] > 0.02) & (x[:, 2] < centre[2]))
    u = np.random.default_rng(0).normal(size=(20000, 3))
    surface = centre + u / np.linalg.norm(u, axis=1, keepdims=True) * axes
    seen = surface[~((surface[:, 0] > 0.02) & (surface[:, 2] < centre[2]))]

    def tilt(q):
        return np.degrees(np.arccos(min(1.0, q @ plane[0])))

    q, _, least = mirror_plane(cut.reshape(grid.shape), grid, seen, plane, 0.2)
    assert tilt(q) > 1.0
    q, offset, conflict = mirror_plane(cut.reshape(grid.shape), grid, seen, plane, 0.2,
                                       evidence=evidence.reshape(grid.shape))
    assert tilt(q) < 0.5 and abs(offset - centre @ q) < 0.25 * grid.size and least < conflict < 0.2
    # a plane the bound objects to more than `within` above its own least is not taken
    q, _, _ = mirror_plane(cut.reshape(grid.shape), grid, seen, plane, 0.2, evidence=evidence.reshape(grid.shape),
                           within=0.5 * (conflict - least))
    assert tilt(q) > 1.0


def test_a_plane_at_the_tilt_limit_needs_half_the_conflict():
    """Tilted 22°, the nearest allowed plane (20°) still mirrors the ellipsoid almost
    exactly; tilted 28°, its image leaves the hull for 16 % of the seen Gaussians — under
    the 0.2 limit, but a plane stopped at the limit is likely the wrong one (a sitting
    teddy's conflicts 0.20 there, a torus's 0.08): refused."""
    from instascene.complete.shape import mirror_plane

    plane = (np.array([0.0, 0.0, 1.0]), 0.0)
    near = mirror_plane(*_tilted_ellipsoid(22.0)[:3], plane, 0.2)
    assert near is not None and np.degrees(np.arccos(near[0] @ plane[0])) > 19.5 and near[2] < 0.1
    occ, grid, seen, _, _ = _tilted_ellipsoid(28.0)
    assert 0.1 < mirror_plane(occ, grid, seen, plane, 1.0)[2] < 0.2  # conflict at the limit
    assert mirror_plane(occ, grid, seen, plane, 0.2) is None


def test_disc_alpha_is_the_opacity_the_discs_give_a_point():
    """2DGS opacity at a point: o exp(-r²/2) per disc at the point's foot on its plane,
    composited over the discs; nothing from a disc whose plane lies too far away."""
    from instascene.complete.shape import disc_alpha
    from instascene.io.splats import Splats

    def discs(means, sigma, opacity):
        n = len(means)
        return Splats(np.asarray(means, np.float32), np.tile(np.float32([1, 0, 0, 0]), (n, 1)),
                      np.log(np.tile(np.float32(sigma), (n, 1))), np.full(n, np.log(opacity / (1 - opacity)), np.float32),
                      np.zeros((n, 3), np.float32), np.zeros((n, 0, 3), np.float32))

    one = discs([[0, 0, 0]], [0.01, 0.02], 0.5)
    pts = np.array([[0.01, 0, 0], [0, 0.02, 0.004], [0, 0, 0.02], [0.03, 0, 0]])
    a = disc_alpha(one, pts, depth=0.01)
    assert a == pytest.approx([0.5 * np.exp(-0.5), 0.5 * np.exp(-0.5), 0.0, 0.5 * np.exp(-4.5)], abs=1e-6)
    two = discs([[0, 0, 0], [0, 0, 0.001]], [0.01, 0.01], 0.5)
    assert disc_alpha(two, np.zeros((1, 3)), depth=0.01)[0] == pytest.approx(0.75, abs=1e-6)


def _grid_discs(z: float, half: float, spacing: float, opacity: float):
    """A square of discs facing +z (a regular grid `spacing` apart) at height z."""
    from instascene.io.splats import Splats

    g = np.arange(-half, half + 1e-9, spacing)
    xy = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    n = len(xy)
    return Splats(np.c_[xy, np.full(n, z)].astype(np.float32), np.tile(np.float32([1, 0, 0, 0]), (n, 1)),
                  np.full((n, 2), np.log(0.6 * spacing), np.float32), np.full(n, np.log(opacity / (1 - opacity)), np.float32),
                  np.zeros((n, 3), np.float32), np.zeros((n, 0, 3), np.float32))


def test_the_surface_depth_is_the_first_surface_not_what_shows_through_it():
    """A faint front layer (the gaps of sparse splats) over an opaque back one: T crosses
    0.5 on the back layer, but inside the silhouette the surface is the front one (the
    mesh of a ball must not take its inside for its surface); at the rim, the back."""
    from instascene.complete.ring import view_caches
    from instascene.complete.shape import concat_splats
    from instascene.io.cameras import Camera, intrinsics, look_at

    front, back = _grid_discs(0.0, 0.02, 0.005, 0.15), _grid_discs(-0.05, 0.08, 0.005, 0.99)
    cam = Camera("top", 64, 64, intrinsics(400.0, 400.0, 32.0, 32.0), look_at(np.array([0, 0, 0.5]), np.zeros(3), (0, 1, 0)))
    _, _, depth = view_caches(concat_splats(front, back), [cam], gap=0.01)
    row = depth[0, 32]
    assert row[32] == pytest.approx(0.5, abs=0.002)  # the front layer, 0.5 from the camera
    assert ((row > 0.499) & (row < 0.501)).sum() >= 30  # ... across its silhouette
    assert row[[0, 2, 62]] == pytest.approx([0.55] * 3, abs=0.002)  # beside it: the back layer


def test_a_ray_through_the_gaps_of_an_objects_front_does_not_hollow_it():
    """Carving: inside the object's silhouette, free space ends at the first surface the
    ray meets, even where T crosses 0.5 on the object's back or on the table behind it
    (the splats' gaps). A solid ball stays solid; beside it space is still carved."""
    from instascene.complete.evidence import Grid, SceneEvidence, carve

    center, r = np.array([0.0, 0.0, 0.3]), 0.2
    cams = ring_cameras(center, 0.9, 16, 30, 96, 96, 50) + ring_cameras(center, 0.9, 6, -20, 96, 96, 50)
    rng = np.random.default_rng(0)
    depth, label, first, first_label = [], [], [], []
    for c in cams:
        near, far, cover = sphere_hits(c, center, r)
        hit = cover > 0
        gap = hit & (rng.random(near.shape) < 0.3)  # through the front: the back side or the wall behind
        behind = np.where(rng.random(near.shape) < 0.5, far, 5.0)
        depth.append(np.where(gap, behind, np.where(hit, near, 5.0)).astype(np.float32))
        label.append(np.where(hit & ~(gap & (behind == 5.0)), 1, -1).astype(np.int32))
        first.append(np.where(hit, near, 5.0).astype(np.float32))
        first_label.append(np.where(hit, 1, -1).astype(np.int32))
    ev = SceneEvidence(cams, depth, label, first, first_label)
    grid = Grid.around(center - 1.3 * r, center + 1.3 * r, 40)
    free = carve(ev, 1, grid, grid.size).free.reshape(-1)
    dist = np.linalg.norm(grid.centers() - center, axis=1)
    assert (free[dist < 0.8 * r] == 0).all()
    assert (free[dist > 1.15 * r] > 0).mean() > 0.95


def test_the_mesh_is_closed_where_truncated_distances_tie():
    """Truncated distances of +1 and -1 average to exactly the level, and checkerboards of
    ±1 are ties for marching cubes: without care, edges of four faces (not watertight)."""
    from instascene.complete.evidence import Grid
    from instascene.complete.mesh import Mesh, extract_mesh

    rng = np.random.default_rng(2)
    for _ in range(10):
        vol = rng.choice([-1.0, 0.0, 1.0], size=(12, 12, 12), p=[0.4, 0.2, 0.4])
        verts, faces = extract_mesh(Grid(np.zeros(3), 1.0, vol.shape), vol)
        assert len(faces) and Mesh(verts, faces, None).is_watertight


@pytest.fixture(scope="module")
def scene_and_run(tmp_path_factory):
    """A small built-in scene and a run folder from its ground-truth labels (as segmentation writes it)."""
    from instascene.synth.generate import SynthOptions, generate_scene

    root = tmp_path_factory.mktemp("complete")
    scene = root / "scene"
    generate_scene(scene, SynthOptions(seed=5, objects=3, views=16, width=160, height=120, mask_noise=0.0))
    return scene, make_run(scene, root / "run")


def make_run(scene, run):
    splats = read_ply(scene / "point_cloud.ply")
    labels = np.load(scene / "gt/gaussian_instances.npy").astype(np.int32)
    run.mkdir(parents=True, exist_ok=True)
    np.save(run / "labels.npy", labels)
    records = []
    for k in np.unique(labels[labels >= 0]):
        idx = np.flatnonzero(labels == k)
        write_ply(run / f"instances/{k}/observed.ply", splats.subset(idx).to_2dgs())
        pts = splats.means[idx]
        records.append({"id": int(k), "gaussians": int(len(idx)), "bbox_min": pts.min(0).tolist(),
                        "bbox_max": pts.max(0).tolist(), "centroid": pts.mean(0).tolist(),
                        "files": {"observed": f"instances/{k}/observed.ply"}, "status": "observed"})
    (run / "instances.json").write_text(json.dumps({"scene": str(scene.resolve()), "instances": records}))
    return run


def small_params():
    from instascene.complete.pipeline import CompleteParams

    p = CompleteParams()
    p.ring.size, p.ring.focal = 96, 105.0  # the paper's 49.1° FoV at 96 px
    p.shape.resolution, p.mesh.resolution = 48, 48
    p.finetune.iterations = 30
    p.diffusion_steps = 3
    return p


@pytest.fixture(scope="module")
def completed(scene_and_run):
    from instascene.complete.pipeline import complete_run

    scene, run = scene_and_run
    summary = complete_run(run, generator="geometric", params=small_params(), quiet=True)
    return scene, run, summary


def test_completion_writes_the_contract(completed):
    scene, run, summary = completed
    doc = json.loads((run / "instances.json").read_text())
    assert summary["completed"] == [r["id"] for r in doc["instances"]] and summary["generator"] == "geometric"
    for rec in doc["instances"]:
        assert rec["status"] == "completed" and rec["completion"]["generator"] == "geometric"
        observed = read_ply(run / rec["files"]["observed"])
        full = read_ply(run / rec["files"]["completed"])
        n = len(observed)
        assert len(full) == n + rec["completion"]["new_gaussians"] > n
        assert np.array_equal(full.means[:n], observed.means) and np.array_equal(full.sh_dc[:n], observed.sh_dc)
        import trimesh

        mesh = trimesh.load(run / rec["files"]["mesh"], process=False)
        assert len(mesh.faces) > 100 and mesh.visual.vertex_colors.shape[0] == len(mesh.vertices)
        assert mesh.is_watertight == rec["completion"]["watertight"] is True
        assert len(rec["completion"]["conditions"]) == 2 and rec["completion"]["best_cameras"]
    assert doc["completion"]["generator"] == "geometric"
    # the background: observed Gaussians first, unchanged, then the surfels that close the table
    labels = np.load(run / "labels.npy")
    observed_bg = read_ply(scene / "point_cloud.ply").subset(labels < 0).to_2dgs()
    full_bg = read_ply(run / doc["background"]["completed"])
    info = doc["background"]["completion"]
    assert len(full_bg) == len(observed_bg) + info["new_gaussians"] and info["new_gaussians"] > 0
    assert np.array_equal(full_bg.means[: len(observed_bg)], observed_bg.means)
    assert info["coverage_observed"] < info["coverage_completed"] and info["coverage_completed"] >= 0.99


def test_completed_beats_observed(completed):
    from instascene.eval.completion import evaluate_completion

    scene, run, _ = completed
    res = evaluate_completion(run, scene / "gt", samples=20000, render=True, splat_points="discs")
    rows = [r for r in res["objects"] if r["completed"]]
    assert len(rows) == 3
    for r in rows:  # the observed object is an open shell; the completed mesh encloses the object
        assert r["mesh"]["watertight"] and r["mesh"]["volume_iou"] > r["observed"]["volume_iou"] + 0.2, r
        # the seen surface stays covered (the observed discs' samples are drawn anew within
        # the completed set: a few in 10,000 GT points may fall either way)
        assert r["completed"]["source"] == "completed.ply"
        assert r["completed"]["recall"] >= r["observed"]["recall"] - 0.002, r["name"]
        # the known region stays as it was (issue 5: within 1 dB); a new surfel under an
        # observed disc, drawn over it, cost the mug here 4 dB
        assert r["completed"]["psnr_known"] > r["observed"]["psnr_known"] - 1.0, r["name"]
    assert np.mean([r["mesh"]["volume_iou"] for r in rows]) > 0.5


def test_diffusion_generator_runs_through_the_pipeline(scene_and_run, tmp_path):
    from instascene.complete.diffusion import build_tiny_weights
    from instascene.complete.pipeline import complete_run

    scene, _ = scene_and_run
    run = make_run(scene, tmp_path / "run")
    weights = build_tiny_weights(tmp_path / "tiny")
    first = json.loads((run / "instances.json").read_text())["instances"][0]["id"]
    out = complete_run(run, instances=[first], generator="auto", weights=str(weights), params=small_params(), quiet=True)
    assert out["generator"] == "diffusion" and out["completed"] == [first]
    rec = json.loads((run / "instances.json").read_text())["instances"][0]
    assert rec["completion"]["generator"] == "diffusion" and (run / rec["files"]["mesh"]).is_file()


def cli(*args):
    return subprocess.run([sys.executable, "-m", "instascene", *map(str, args)], capture_output=True, text=True)


def test_complete_cli_errors_are_one_line(scene_and_run, tmp_path):
    _, run = scene_and_run
    r = cli("complete", tmp_path)
    assert r.returncode == 2 and "not a run folder" in r.stderr and "Traceback" not in r.stderr
    r = cli("complete", run, "--instances", "99")
    assert r.returncode == 2 and "no instance 99" in r.stderr
    env = {k: v for k, v in os.environ.items() if k != "INSTASCENE_WEIGHTS"}
    r = subprocess.run([sys.executable, "-m", "instascene", "complete", str(run), "--generator", "diffusion"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "--weights DIR" in r.stderr and "Traceback" not in r.stderr
    r = cli("complete", run, "--generator", "diffusion", "--weights", tmp_path / "missing")
    assert r.returncode == 2 and str(tmp_path / "missing") in r.stderr and "Traceback" not in r.stderr


def test_a_damaged_run_folder_is_a_clear_error(scene_and_run, tmp_path):
    """A truncated labels.npy, an "instances" that is no list, a NaN centroid: one line each,
    before any work, and nothing written (issue 20, item 6)."""
    import shutil

    _, run = scene_and_run
    cases = {
        "labels": lambda r: (r / "labels.npy").write_bytes((r / "labels.npy").read_bytes()[:100]),
        "oops": lambda r: (r / "instances.json").write_text(json.dumps({"instances": "oops"})),
        "nan": lambda r: (r / "instances.json").write_text(json.dumps(nan_centroid(r / "instances.json"))),
    }

    def nan_centroid(path):
        doc = json.loads(path.read_text())
        doc["instances"][0]["centroid"] = [float("nan"), 0.0, 0.0]  # json writes NaN, which is no JSON
        return doc

    for name, damage in cases.items():
        bad = tmp_path / name
        shutil.copytree(run, bad, ignore=shutil.ignore_patterns("*.ply", "background_completed.ply"))
        damage(bad)
        before = sorted(p.name for p in bad.rglob("*"))
        r = cli("complete", bad)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (name, r.stderr)
        assert {"labels": "labels.npy", "oops": '"instances" list', "nan": "finite"}[name] in r.stderr, r.stderr
        assert sorted(p.name for p in bad.rglob("*")) == before
