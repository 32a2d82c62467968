"""Segmentation: the paper's definitions on hand-built cases, and the whole run on a small built-in scene."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from instascene.eval.metrics import hungarian_miou
from instascene.io.ply import read_ply
from instascene.segment.consensus import cluster_masks, observer_schedule, view_consensus
from instascene.segment.features import proto_nce
from instascene.segment.postprocess import dbscan
from instascene.segment.tracker import MaskTracks


def tracks_from_sets(mask_sets, frame_of, n_gaussians, visible=None):
    """MaskTracks from explicit Gaussian sets (one per mask) and frames."""
    M, F = len(mask_sets), max(frame_of) + 1
    rows = np.concatenate([[m] * len(s) for m, s in enumerate(mask_sets)])
    cols = np.concatenate([list(s) for s in mask_sets])
    A = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(M, n_gaussians))
    U = (sp.csr_matrix((np.ones(M, np.float32), (frame_of, np.arange(M))), shape=(F, M)) @ A).tocsr()
    U.data[:] = 1
    W = U if visible is None else visible
    return MaskTracks(n_gaussians, [f"f{i}" for i in range(F)], np.array(frame_of), np.arange(M) + 1, A, U, W,
                      np.array([len(s) for s in mask_sets]))


def test_consensus_merges_consistent_masks_and_flags_undersegmented_ones():
    a, b = set(range(0, 100)), set(range(100, 200))  # two objects
    # frames 0-3 see both objects as separate masks; frame 4 merges them into one mask
    sets, frames = [], []
    for f in range(4):
        sets += [a, b]
        frames += [f, f]
    sets.append(a | b)
    frames.append(4)
    t = tracks_from_sets(sets, frames, 200)
    cons = view_consensus(t)
    assert cons.undersegmented.tolist() == [False] * 8 + [True]  # the merged mask splits everywhere
    nodes = cluster_masks(t, cons)
    groups = sorted(sorted(n.masks.tolist()) for n in nodes)
    assert groups == [[0, 2, 4, 6], [1, 3, 5, 7]]


def test_contained_needs_80_percent_and_visibility_30_percent():
    obj = set(range(100))
    sets = [obj, set(range(79)) | set(range(200, 221)), set(range(75)), set(range(25))]
    frames = [0, 1, 2, 3]
    t = tracks_from_sets(sets, frames, 300)
    cons = view_consensus(t)
    V = cons.visible.toarray().astype(bool)
    # frame 1's mask holds 79 of mask 0's 79 covered Gaussians -> contained; frame 3 covers only 25 % -> invisible
    assert V[0].tolist() == [True, True, True, False]
    assert cons.container[0, 1] == 1 and cons.container[0, 3] == 0


def test_observer_schedule_is_strictest_first():
    V = sp.csr_matrix(np.array([[1, 1, 1, 0], [1, 1, 0, 0], [0, 1, 1, 1]], np.float32))
    ks = observer_schedule(V)
    assert ks == sorted(ks, reverse=True) and ks[-1] >= 1


def test_dbscan_matches_brute_force():
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.normal(0, 0.05, (60, 3)), rng.normal(2, 0.05, (60, 3)), [[10.0, 10, 10]]])
    labels = dbscan(pts, eps=0.3, min_points=4)
    assert labels[-1] == -1  # the lone point is noise
    assert len(set(labels[:60])) == 1 and len(set(labels[60:120])) == 1 and labels[0] != labels[60]


def test_proto_nce_prefers_separated_classes():
    y = torch.tensor([0] * 50 + [1] * 50)
    good = torch.nn.functional.normalize(torch.cat([torch.ones(50, 2) * torch.tensor([1.0, 0.1]),
                                                    torch.ones(50, 2) * torch.tensor([0.1, 1.0])]), dim=1)
    bad = torch.nn.functional.normalize(torch.randn(100, 2, generator=torch.Generator().manual_seed(0)), dim=1)
    assert proto_nce(good, y) < proto_nce(bad, y)
    assert proto_nce(good, torch.zeros(100, dtype=torch.long)) == 0  # one class: nothing to contrast


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    from instascene.segment.pipeline import SegmentParams, segment_scene
    from instascene.synth.generate import SynthOptions, generate_scene

    root = tmp_path_factory.mktemp("seg")
    scene = root / "scene"
    generate_scene(scene, SynthOptions(seed=11, objects=3, views=16, width=160, height=120, mask_noise=0.3))
    params = SegmentParams()
    params.features.iterations = 150
    summary = segment_scene(scene, root / "run", params, quiet=True)
    return scene, root / "run", summary


def test_run_folder_follows_the_contract(segmented):
    scene, run, summary = segmented
    n = len(read_ply(scene / "point_cloud.ply"))
    labels = np.load(run / "labels.npy")
    assert labels.dtype == np.int32 and labels.shape == (n,) and labels.min() >= -1
    assert np.load(run / "features.npy").shape == (n, 16)
    doc = json.loads((run / "instances.json").read_text())
    assert len(doc["instances"]) == summary["instances"] >= 1
    for inst in doc["instances"]:
        assert {"id", "gaussians", "bbox_min", "bbox_max", "centroid"} <= set(inst)
        observed = read_ply(run / inst["files"]["observed"])
        assert len(observed) == inst["gaussians"] == int((labels == inst["id"]).sum())
        assert np.allclose(observed.means.mean(0), inst["centroid"], atol=1e-4)
    assert len(read_ply(run / "background.ply")) == int((labels < 0).sum())
    assert set(summary["timing_s"]) >= {"rasterize", "track", "associate", "features", "write"}


def test_instances_match_the_objects(segmented):
    scene, run, _ = segmented
    result = hungarian_miou(np.load(run / "labels.npy"), np.load(scene / "gt/gaussian_instances.npy"))
    assert result.miou >= 0.5, result.iou


def test_scene_without_masks_uses_the_fallback_and_says_so(tmp_path, segmented):
    import shutil

    scene, _, _ = segmented
    bare = tmp_path / "bare"
    shutil.copytree(scene, bare, ignore=shutil.ignore_patterns("sam", "gt"))
    r = subprocess.run([sys.executable, "-m", "instascene", "segment", str(bare), "--out", str(tmp_path / "r"),
                        "--iterations", "50"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "masks:" in r.stdout and json.loads(r.stdout[r.stdout.index("{"):])["mask_source"] == "fallback"
    assert np.load(tmp_path / "r" / "labels.npy").shape == (len(read_ply(bare / "point_cloud.ply")),)


def test_segment_cli_errors_are_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "instascene", "segment", str(tmp_path / "nope"), "--out",
                        str(tmp_path / "r"), "--weights", str(tmp_path / "w")], capture_output=True, text=True)
    assert r.returncode == 2 and "error" in r.stderr and "Traceback" not in r.stderr


def test_an_instance_left_with_a_few_gaussians_is_no_object():
    """Objects are numbered 0..K-1; a coarse instance holding fewer Gaussians than a
    tracked mask needs (here 3) becomes background, not a one-speck object in Blender."""
    from instascene.segment.instances import InstanceParams, assign_instances

    e = torch.eye(3)
    coarse = np.r_[np.zeros(200, int), np.ones(3, int), np.full(100, 2)]
    features = e[torch.from_numpy(coarse)]
    means = np.random.default_rng(0).normal(size=(len(coarse), 3))
    labels = assign_instances(features, coarse, np.zeros(3, bool), means, InstanceParams(), 50)
    assert np.array_equal(labels, np.r_[np.zeros(200, int), np.full(3, -1), np.ones(100, int)])
    kept = assign_instances(features, coarse, np.zeros(3, bool), means, InstanceParams(), 3)
    assert np.array_equal(kept, coarse)


def test_click_queries_find_the_instance(segmented):
    from instascene.io.scene import load_scene
    from instascene.render import Gaussians, View
    from instascene.segment.instances import gaussian_at_pixel, gaussian_near_point, query_instance

    scene, run, _ = segmented
    s = load_scene(scene)
    labels = np.load(run / "labels.npy")
    feats = torch.from_numpy(np.load(run / "features.npy"))
    k = int(np.bincount(labels[labels >= 0]).argmax())  # the largest instance
    centre = s.splats.means[labels == k].mean(0)
    g = gaussian_near_point(s.splats.means, centre)
    q = query_instance(labels, feats, g)
    assert q["instance"] == labels[g] and len(q["instance_gaussians"]) == int((labels == labels[g]).sum())
    assert g in q["similar_gaussians"]
    assert gaussian_near_point(s.splats.means, centre + 100.0, max_distance=1.0) is None
    # a click on a pixel where instance k is drawn selects a Gaussian of instance k
    from instascene.render import contributions

    gs, view = Gaussians.from_splats(s.splats), View.from_camera(s.cameras[0])
    front = contributions(gs, view, "crossing")
    drawn = front.pixel[torch.from_numpy(labels)[front.gaussian] == k]
    if len(drawn):
        pix = int(drawn[len(drawn) // 2])
        hit = gaussian_at_pixel(gs, view, pix % view.width, pix // view.width)
        assert hit is not None and labels[hit] == k


def test_query_cli_answers_a_3d_click(segmented):
    scene, run, _ = segmented
    labels = np.load(run / "labels.npy")
    k = int(np.bincount(labels[labels >= 0]).argmax())
    centre = read_ply(scene / "point_cloud.ply").means[labels == k].mean(0)
    r = subprocess.run([sys.executable, "-m", "instascene", "query", str(run), "--point", *map(str, centre)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["instance"] == labels[out["gaussian"]] and out["instance_gaussians"] == int((labels == out["instance"]).sum())
    r = subprocess.run([sys.executable, "-m", "instascene", "query", str(run), "--pixel", "1", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--view" in r.stderr and "Traceback" not in r.stderr
