"""What each step of the segmentation buys, on built-in scenes (`instascene bench ablation`).

Every variant reuses one rasterization of the scene and is scored with the one-to-one
mIoU on Gaussians:

  naive      lift each raw mask to its Gaussians, link masks whose Gaussian sets overlap
             (IoU > 0.5) across views, no consensus; each Gaussian takes the majority group
  paper      view consensus on T > 0.5 pairs as the official code (parts of two masks or
             more), then the dense vote
  crossing   consensus on the 0.5-crossing Gaussian, 1-px mask boundary ignored, vote
  + plane    + the support plane as background
  + merged   + coarse instances that the views join merged (merge.py)
  + spread (features)
             + every Gaussian labelled by its evidence spread over the neighbour graph
             weighted by feature similarity (the pipeline of session 8)
  + surface graph
             + the same spread over the surface-continuity graph instead (propagate.py)
  + graph cuts
             + the spread labels refined by graph cuts on that graph (graphcut.py)
  + seams    + instances that meet in the views on continuous, convex surface joined (seams.py)
  full       + touching instances of one material that the masks join now and then joined
             (merge.join_alike; the shipped pipeline)

All at the pipeline's working image size (pipeline.working_cameras).

and, as in the paper's ablation, instances read from the feature field alone (a
Gaussian joins the coarse instance whose mean feature it matches at cosine ≥ 0.9),
with the field trained on: the noisy 2D masks only; the 3D labels only; 3D + the
filtered 2D masks; 3D + filtered 2D + cross-view (all three losses).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from ..eval.metrics import hungarian_miou
from .consensus import cluster_masks, view_consensus
from .features import FeatureParams, train_features
from .instances import assign_instances, background_instances, dominant_plane, on_support_plane
from .merge import join_alike, merge_labels, merge_parts
from .postprocess import coarse_instances, consistent_label_maps, vote_labels
from .propagate import label_evidence, neighbour_graph, smooth_weight
from .seams import ImageSeams, join_continuous
from .tracker import track_masks

VARIANTS = ("naive", "paper", "crossing", "+ plane", "+ merged", "+ spread (features)", "+ surface graph", "+ graph cuts", "+ seams", "full")
FEATURE_VARIANTS = ("features: noisy 2D only", "features: 3D only", "features: 3D + filtered 2D",
                    "features: all three losses")


def _feature_only(feats, coarse, is_bg, threshold=0.9) -> np.ndarray:
    import torch

    n = len(is_bg)
    has = torch.from_numpy(coarse >= 0)
    lab = torch.from_numpy(np.maximum(coarse, 0))
    protos = torch.zeros(n, feats.shape[1]).index_add_(0, lab[has], feats[has])
    protos /= torch.bincount(lab[has], minlength=n).clamp_min(1)[:, None]
    score = feats @ protos.T
    best, best_score = score.argmax(1).numpy(), score.max(1).values.numpy()
    return np.where((best_score >= threshold) & ~is_bg[best], best, -1)


def _naive(tracks, flat) -> np.ndarray:
    A = tracks.A
    inter = (A @ A.T).tocoo()
    size = tracks.sizes()
    iou = inter.data / (size[inter.row] + size[inter.col] - inter.data)
    link = (iou > 0.5) & (inter.row != inter.col)
    g = sp.csr_matrix((np.ones(link.sum()), (inter.row[link], inter.col[link])), shape=(tracks.n_masks,) * 2)
    _, group = connected_components(g, directed=False)
    votes = (A.T @ sp.csr_matrix((np.ones(tracks.n_masks), (np.arange(tracks.n_masks), group)))).tocsr()
    labels = np.asarray(votes.argmax(axis=1)).ravel()
    labels[np.asarray(votes.sum(axis=1)).ravel() == 0] = -1
    # groups that are mostly flat support-plane Gaussians are background
    for k in np.unique(labels[labels >= 0]):
        if flat[labels == k].mean() > 0.5:
            labels[labels == k] = -1
    labels[flat] = -1
    return labels


def ablate(scene, gt: np.ndarray, feature_iterations: int = 1000, losses: bool = True) -> dict[str, float]:
    """mIoU of every variant for one scene."""
    from ..render import ContributionCache, Gaussians, View, contributions
    from .pipeline import SegmentParams, _filter_undersegmented, resize_labels, working_cameras

    params = SegmentParams()
    cams = working_cameras(scene.splats, scene.cameras, params.surfel_px)
    g = Gaussians.from_splats(scene.splats)
    views = [View.from_camera(c) for c in cams]
    contribs = [contributions(g, v, None) for v in views]
    means = scene.splats.means.astype(np.float64)
    normals = scene.splats.to_2dgs().normals()
    seams = ImageSeams(means, normals, params.seams)
    for c, cam in zip(contribs, cams):
        chosen = c.select(params.criterion)
        seams.add_view(chosen.pixel.numpy(), chosen.gaussian.numpy(), c.width, c.height, cam.world_to_camera)
    names = [c.name for c in cams]
    maps = [resize_labels(scene.mask(c.name), c.height, c.width) for c in cams]
    eps = params.post.scale(means)
    plane = dominant_plane(means, eps / 2)
    flat = on_support_plane(means, normals, eps / 5, plane)
    ip = params.instances
    min_gaussians = params.min_gaussians
    out = {"naive": hungarian_miou(_naive(track_masks(contribs, names, maps, "transmittance", min_gaussians), flat),
                                   gt).miou}

    def associate(criterion, boundary, merge=False, post=params.post):
        tracks = track_masks(contribs, names, maps, criterion, min_gaussians, boundary)
        cons = view_consensus(tracks)
        inst = coarse_instances(cluster_masks(tracks, cons), tracks, cons, means, post, eps)
        is_bg = background_instances(inst, means, flat, ip)
        if merge:
            inst, is_bg = merge_parts(inst, tracks, means, is_bg, eps, params.merge)
        consistent = consistent_label_maps(inst, tracks, maps)
        evidence = label_evidence(contribs, consistent, len(inst))
        masks = np.array([len(i.masks) for i in inst])
        return tracks, cons, is_bg, consistent, evidence, vote_labels(evidence), masks

    def objects_only(coarse, is_bg):
        return np.where((coarse >= 0) & ~is_bg[np.maximum(coarse, 0)], coarse, -1)

    _, _, is_bg, _, _, coarse, _ = associate("transmittance", 0, post=replace(params.post, min_masks=2))
    out["paper"] = hungarian_miou(objects_only(coarse, is_bg), gt).miou
    _, _, is_bg, _, _, coarse, _ = associate("crossing", 1)
    labels = objects_only(coarse, is_bg)
    out["crossing"] = hungarian_miou(labels, gt).miou
    labels[flat] = -1
    out["+ plane"] = hungarian_miou(labels, gt).miou
    tracks, cons, is_bg, consistent, evidence, coarse, masks = associate(params.criterion, params.boundary_px,
                                                                         merge=True)
    labels = objects_only(coarse, is_bg)
    labels[flat] = -1
    out["+ merged"] = hungarian_miou(labels, gt).miou
    cache = ContributionCache.from_contributions(views, contribs)
    filtered = _filter_undersegmented(maps, tracks, cons.undersegmented)
    visible = [np.asarray(tracks.W[f].indices) for f in range(len(views))]
    feats = train_features(cache, filtered, consistent, coarse, visible, FeatureParams(iterations=feature_iterations))
    no_cut = replace(ip, propagate=replace(ip.propagate, cut_smoothness=None))
    feature_graph = replace(no_cut, propagate=replace(no_cut.propagate, feature_temperature=0.1, across_surfaces=1.0))
    surface = (neighbour_graph(means, normals, eps, ip.propagate), smooth_weight(ip.propagate))
    for name, graph in (("+ spread (features)", feature_graph), ("+ surface graph", no_cut), ("+ graph cuts", ip)):
        labels = assign_instances(evidence, is_bg, flat, normals, means, eps, min_gaussians, graph,
                                  features=feats.numpy(), masks=masks)
        labels = merge_labels(labels, tracks, means, eps, params.merge, surface=surface)
        out[name] = hungarian_miou(labels, gt).miou
    labels = join_continuous(labels, seams)
    out["+ seams"] = hungarian_miou(labels, gt).miou
    out["full"] = hungarian_miou(join_alike(labels, tracks, means, eps, scene.splats.base_colors(), params.merge),
                                 gt).miou
    if not losses:
        return out
    settings = {  # name: (2D labels, 2D weight, cross-view weight, 3D weight)
        FEATURE_VARIANTS[0]: (maps, 0.5, 0.0, 0.0),
        FEATURE_VARIANTS[1]: (filtered, 0.0, 0.0, 2.5),
        FEATURE_VARIANTS[2]: (filtered, 0.5, 0.0, 2.5),
        FEATURE_VARIANTS[3]: (filtered, 0.5, 1.0, 2.5),
    }
    for name, (labels_2d, w2, wc, w3) in settings.items():
        fp = FeatureParams(iterations=feature_iterations, weight_2d=w2, weight_cross=wc, weight_3d=w3)
        f = train_features(cache, labels_2d, consistent, coarse, visible, fp)
        labels = _feature_only(f, coarse, is_bg)
        labels[flat] = -1
        out[name] = hungarian_miou(labels, gt).miou
    return out
