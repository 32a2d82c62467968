"""`instascene segment SCENE --out RUN`: the whole segmentation, stage by stage.

  1. rasterize every view once: all composited pairs (tracked sets and feature cache)
  2. tracker: each mask's Gaussians               (tracker.py)
  3. view consensus, clustering, post-processing,  (consensus.py, postprocess.py,
     parts of one object merged                    merge.py)
  4. contrastive feature field                    (features.py)
  5. instances: evidence spread over the Gaussians (instances.py, propagate.py),
     parts that meet on continuous, convex surface (seams.py), parts
     the masks join now and then that are made of the same material (merge.py)
  6. the run folder (contracts.md), every file whole or not at all
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InstaSceneError
from ..io.atomic import atomic_write, check_output_folder, replace_folder
from ..io.ply import write_ply
from ..io.scene import load_scene
from .consensus import ConsensusParams, cluster_masks, view_consensus
from .features import FeatureParams, train_features
from .instances import InstanceParams, assign_instances, background_instances, dominant_plane, on_support_plane
from .merge import MergeParams, join_alike, merge_labels, merge_parts
from .postprocess import PostParams, coarse_instances, consistent_label_maps, vote_labels
from .propagate import label_evidence, neighbour_graph, smooth_weight
from .seams import ImageSeams, SeamParams, join_continuous
from .tracker import MaskTracker


@dataclass
class SegmentParams:
    criterion: str = "crossing"  # association: which pairs make a mask's Gaussian set
    min_gaussians: int = 50
    boundary_px: int = 1  # mask pixels this close to a mask boundary do not count for association
    surfel_px: float | None = 1.25  # segment at the image size where a surfel's σ spans this many pixels (None: as captured)
    consensus: ConsensusParams = field(default_factory=ConsensusParams)
    post: PostParams = field(default_factory=PostParams)
    merge: MergeParams = field(default_factory=MergeParams)
    seams: SeamParams | None = field(default_factory=SeamParams)  # None: no instances joined by how they meet in the views
    features: FeatureParams = field(default_factory=FeatureParams)
    instances: InstanceParams = field(default_factory=InstanceParams)


class Stages:
    """Progress per stage: a bar on a terminal, timed lines in a log (progress.bar), and an optional callback
    `report(fraction, stage, message)` (the service's, which may raise to cancel)."""

    WEIGHTS = {"rasterize": 0.35, "track": 0.05, "associate": 0.05, "features": 0.45, "instances": 0.05, "write": 0.05}

    def __init__(self, report=None, quiet: bool = False):
        self.report, self.quiet = report, quiet
        self.done = 0.0
        self.times: dict[str, float] = {}
        self._bar = None

    def start(self, stage: str, total: int | None = None):
        from ..progress import bar

        self.stage, self._t0 = stage, time.perf_counter()
        self._bar = bar(total, f"segment: {stage}", quiet=self.quiet)
        self.update(0, total or 1)

    def update(self, i: int, n: int, message: str = ""):
        if self._bar is not None and i:
            self._bar.n = i
            self._bar.refresh()
        if self.report:
            self.report(self.done + self.WEIGHTS[self.stage] * i / max(n, 1), self.stage, message)

    def end(self):
        if self._bar is not None:
            self._bar.close()
        self.times[self.stage] = round(time.perf_counter() - self._t0, 2)
        self.done += self.WEIGHTS[self.stage]


def segment_scene(scene_path, run_dir, params: SegmentParams | None = None, device: str = "auto",
                  report=None, quiet: bool = False, sam: str | None = None) -> dict:
    import torch

    params = params or SegmentParams()
    from ..render import Gaussians, View
    from ..render.pairs import PairStore

    run = check_output_folder(run_dir, "run folder")
    scene = load_scene(scene_path)
    splats = scene.require_splats()
    cams = scene.require_cameras()
    dev = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    if dev == "cuda" and not torch.cuda.is_available():
        raise InstaSceneError("--device cuda requested but CUDA is not available")
    st = Stages(report, quiet)
    g = Gaussians.from_splats(splats, device=dev)
    views = [View.from_camera(c, device=dev) for c in cams]
    work = working_cameras(splats, cams, params.surfel_px) if params.surfel_px else cams

    def fit(i: int, m):  # each map to its view's working size as it comes: never all of them at full size
        return None if m is None else resize_labels(m, work[i].height, work[i].width)

    mask_source, mask_why, label_maps = _label_maps(scene, cams, g, views, sam, quiet, fit)
    if params.surfel_px:
        cams = work
        views = [View.from_camera(c, device=dev) for c in cams]

    with PairStore.temporary(run, len(g)) as pairs:
        summary = _segment(scene, splats, cams, views, g, label_maps, pairs, run, params, st)
    summary["mask_source"] = mask_source
    summary["mask_source_detail"] = mask_why
    summary["timing_s"] = st.times
    _write_json(run / "segment.json", summary)
    return summary


def _segment(scene, splats, cams, views, g, label_maps, pairs, run, params, st) -> dict:
    """The stages after the masks are known. Every view's pairs go to `pairs` (on disk) and
    are tracked as they come; what stays in memory is each mask's Gaussian set and the
    image seams (an [N, N] sparse count, whatever the number of views)."""
    from ..render import contributions

    means = splats.means.astype(np.float64)
    normals = splats.to_2dgs().normals()
    seams = ImageSeams(means, normals, params.seams) if params.seams is not None else None
    st.start("rasterize", len(views))
    tracker = MaskTracker(len(g), None, params.min_gaussians, params.boundary_px)
    for i, v in enumerate(views):
        c = contributions(g, v, None)
        chosen = c.select(params.criterion)
        tracker.add_view(chosen, label_maps[i])
        if seams is not None:
            seams.add_view(chosen.pixel.cpu().numpy(), chosen.gaussian.cpu().numpy(), chosen.width, chosen.height,
                           cams[i].world_to_camera)
        pairs.append(c)
        del c, chosen
        st.update(i + 1, len(views), cams[i].name)
    st.end()

    st.start("track")
    tracks = tracker.tracks([c.name for c in cams])
    del tracker
    st.end()

    st.start("associate")
    cons = view_consensus(tracks, params.consensus)
    nodes = cluster_masks(tracks, cons, params.consensus)
    eps = params.post.scale(means)
    coarse = coarse_instances(nodes, tracks, cons, means, params.post, eps)
    plane = dominant_plane(means, eps / 2)
    flat = on_support_plane(means, normals, eps / 5, plane)
    is_bg = background_instances(coarse, means, flat, params.instances)
    coarse, is_bg = merge_parts(coarse, tracks, means, is_bg, eps, params.merge)
    consistent = consistent_label_maps(coarse, tracks, label_maps)
    filtered = _filter_undersegmented(label_maps, tracks, cons.undersegmented)
    evidence = label_evidence(pairs, consistent, len(coarse))
    coarse_labels = vote_labels(evidence)
    st.end()

    st.start("features", params.features.iterations)
    visible = [np.asarray(tracks.W[f].indices) for f in range(len(views))]
    feats = train_features(pairs, filtered, consistent, coarse_labels, visible, params.features,
                           progress=lambda i, n, loss: st.update(i, n, f"loss {loss:.3f}"))
    st.end()

    st.start("instances")
    labels = assign_instances(evidence, is_bg, flat, normals, means, eps, params.min_gaussians,
                              params.instances, features=feats.cpu().numpy(),
                              masks=np.array([len(inst.masks) for inst in coarse]))
    surface = neighbour_graph(means, normals, eps, params.instances.propagate)
    labels = merge_labels(labels, tracks, means, eps, params.merge,
                          surface=(surface, smooth_weight(params.instances.propagate)))
    if seams is not None:
        labels = join_continuous(labels, seams)
    del seams
    labels = join_alike(labels, tracks, means, eps, splats.base_colors(), params.merge)
    st.end()

    st.start("write")
    summary = write_run(run, scene, splats, labels, feats.cpu().numpy(), params, tracks, coarse, is_bg)
    st.end()
    return summary


def working_cameras(splats, cams, surfel_px: float):
    """The cameras resized so that the median surfel's σ spans `surfel_px` pixels.

    Which Gaussians a mask holds depends on how pixels compare with splats: with pixels
    much larger than the surfels, one Gaussian per pixel is a sparse sample that other
    views sample differently (masks stop overlapping across views); with pixels much
    smaller, every count and border in pixels means less and the rasterization costs
    more for the same Gaussians. Segmenting at a size tied to the splats makes the
    method independent of the capture's image size (masks are resampled to it)."""
    scales = splats.to_2dgs().scales().max(axis=1)
    sigma_px = []
    for c in cams:
        cam = c.world_to_camera[:3, :3] @ splats.means.T.astype(np.float64) + c.world_to_camera[:3, 3:4]
        z = cam[2]
        front = z > 1e-6
        u = c.fx * cam[0, front] / z[front] + c.cx
        v = c.fy * cam[1, front] / z[front] + c.cy
        inside = (u >= 0) & (u < c.width) & (v >= 0) & (v < c.height)
        if inside.any():
            sigma_px.append(np.median(c.fx * scales[front][inside] / z[front][inside]))
    if not sigma_px:
        return cams
    factor = surfel_px / float(np.median(sigma_px))
    return [c.resized(max(8, round(c.width * factor)), max(8, round(c.height * factor))) for c in cams]


def resize_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resampling of a label map (pixel centres to pixel centres)."""
    H, W = labels.shape
    rows = np.minimum(((np.arange(height) + 0.5) * H / height).astype(int), H - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * W / width).astype(int), W - 1)
    return labels[rows[:, None], cols[None, :]]


def _label_maps(scene, cams, g, views, sam_dir, quiet, fit):
    """The 2D masks to segment with, each passed through `fit(view index, map)` as it is
    made: the scene's sam/mask, else SAM (the folder given, else the installed default)
    on a spread subset of the views, else the weight-free fallback (colour graph
    segmentation cut at rendered depth edges). The user is told which."""
    from .mask_sources import describe_source, fallback_label_maps, sam_folder
    from .sam_onnx import sam_label_maps
    from .scene_masks import MAX_VIEWS, spread_views, view_pixels

    source, why = describe_source(scene, sam_dir)
    if not quiet:
        print(why)
    if source == "scene":
        return source, why, [fit(i, scene.mask(c.name)) for i, c in enumerate(cams)]
    if source == "sam":
        pick = spread_views(cams, MAX_VIEWS)
        images, depths = view_pixels(scene, [cams[i] for i in pick], g, [views[i] for i in pick])
        from ..progress import bar

        with bar(len(pick), "segment: SAM masks", "view", quiet) as views_done:
            maps = sam_label_maps(images, sam_folder(sam_dir), depths, progress=lambda i, n: views_done.update(1))
        out = [None] * len(cams)
        for i, m in zip(pick, maps):
            out[i] = fit(i, m)
        return source, why, out
    images, depths = view_pixels(scene, cams, g, views)
    return source, why, [fit(i, m) for i, m in enumerate(fallback_label_maps(images, depths))]


def _filter_undersegmented(label_maps, tracks, under):
    """The raw masks with under-segmented ones set to 0 (the official `mask_filtered`)."""
    out = []
    for f, labels in enumerate(label_maps):
        if labels is None:
            out.append(None)
            continue
        bad = tracks.label_of[(tracks.frame_of == f) & under]
        out.append(np.where(np.isin(labels, bad), 0, labels))
    return out


def _write_json(path: Path, data) -> None:
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=2)


def write_run(target: Path, scene, splats, labels: np.ndarray, features: np.ndarray, params, tracks, coarse,
              is_bg) -> dict:
    """labels.npy, features.npy, instances.json, instances/<id>/observed.ply, background.ply;
    built beside `target` and swapped in whole (an earlier run there is replaced, not mixed)."""
    source = {"masks": {"total": int(tracks.n_masks), "coarse_instances": len(coarse),
                        "background_instances": int(np.sum(is_bg))}, "params": asdict(params)}
    with replace_folder(target) as run:
        out = _write_run(run, scene, splats, labels, features, source)
    return {**out, "masks": int(tracks.n_masks), "coarse_instances": len(coarse)}


def oracle_run(scene_path, run_dir, gt_dir) -> dict:
    """A run folder whose labels are the scene's ground truth (`segment --labels-from
    SCENE/gt`): completion and layouts measured apart from segmentation. Features are
    zero (there is no feature field to query)."""
    from ..eval.segmentation import load_gt

    run = check_output_folder(run_dir, "run folder")
    scene = load_scene(scene_path)
    splats = scene.require_splats()
    gt = load_gt(gt_dir)
    if len(gt.gaussian_instances) != len(splats):
        raise InstaSceneError(f"the ground truth labels {len(gt.gaussian_instances)} Gaussians, the scene has "
                              f"{len(splats)}", Path(gt_dir) / gt.labels_file)
    labels = gt.gaussian_instances.astype(np.int64)
    with replace_folder(run) as tmp:
        out = _write_run(tmp, scene, splats, labels, np.zeros((len(labels), 16), np.float32),
                         {"labels_from": str(Path(gt_dir).resolve())})
    return {**out, "labels_from": str(gt_dir)}


def _write_run(run: Path, scene, splats, labels, features, source: dict) -> dict:
    with atomic_write(run / "labels.npy") as f:
        np.save(f, labels.astype(np.int32))
    with atomic_write(run / "features.npy") as f:
        np.save(f, features.astype(np.float32))
    records = []
    for k in range(int(labels.max()) + 1 if len(labels) else 0):
        idx = np.flatnonzero(labels == k)
        if len(idx) == 0:
            continue
        pts = splats.means[idx].astype(np.float64)
        write_ply(run / "instances" / str(k) / "observed.ply", splats.subset(idx).to_2dgs())
        records.append({
            "id": k,
            "gaussians": int(len(idx)),
            "bbox_min": pts.min(0).round(6).tolist(),
            "bbox_max": pts.max(0).round(6).tolist(),
            "centroid": pts.mean(0).round(6).tolist(),
            "files": {"observed": f"instances/{k}/observed.ply"},
            "status": "observed",
        })
    bg = np.flatnonzero(labels < 0)
    write_ply(run / "background.ply", splats.subset(bg).to_2dgs())
    doc = {
        "scene": str(Path(scene.root).resolve()),
        "gaussians": int(len(labels)),
        "background": {"gaussians": int(len(bg)), "file": "background.ply"},
        "instances": records,
        **source,
    }
    _write_json(run / "instances.json", doc)
    return {"instances": len(records), "background_gaussians": int(len(bg))}
