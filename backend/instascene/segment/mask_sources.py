"""Where the per-view 2D label maps come from (issue 4, "Mask sources").

Segmentation needs, for every view, an int32 [H, W] label map: 0 = no mask, 1..K = masks,
flat (each pixel carries one label). Three sources, best first:

- "scene":    the scene's own `sam/mask/<stem>.png` files (`Scene.mask`);
- "sam":      Segment Anything through Hugging Face `transformers`, loaded only from a local
              folder (`sam_label_maps`; nothing is ever downloaded);
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

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


# ---------------------------------------------------------------------- choosing


def describe_source(scene, weights_dir: str | os.PathLike | None = None) -> tuple[str, str]:
    """(source, one-line explanation for the user); source is 'scene', 'sam' or 'fallback'."""
    names = [c.name for c in scene.cameras]
    have = sum(1 for n in names if n in scene.mask_paths)
    if names and have:
        extra = "" if have == len(names) else f" (views without a mask are skipped: {len(names) - have})"
        return "scene", f"masks: using the scene's sam/mask/ label maps for {have} of {len(names)} views{extra}"
    if weights_dir is not None:
        return "sam", f"masks: the scene has no sam/mask/; generating them with SAM from {os.fspath(weights_dir)}"
    return "fallback", (
        "masks: the scene has no sam/mask/ and no SAM weights were given; using the weight-free "
        "graph segmentation (coarser; pass SAM weights for better masks)"
    )


def choose_source(scene, weights_dir: str | os.PathLike | None = None) -> str:
    """'scene' when the scene has masks for its cameras, else 'sam' with weights, else 'fallback'."""
    return describe_source(scene, weights_dir)[0]


# ---------------------------------------------------------------------- helpers


def relabel(labels: np.ndarray) -> np.ndarray:
    """int32 copy with 0 kept and the other labels renumbered 1..K in increasing order."""
    values, inv = np.unique(labels, return_inverse=True)
    new = np.arange(len(values), dtype=np.int32) + (0 if values[0] == 0 else 1)
    return new[inv.reshape(labels.shape)]


def _check_images(images) -> list[np.ndarray]:
    out = []
    for i, im in enumerate(images):
        im = np.asarray(im)
        if im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8:
            raise InstaSceneError(f"image {i} must be uint8 [H, W, 3], got {im.dtype} {list(im.shape)}")
        out.append(im)
    return out


def _check_weights_dir(weights_dir) -> Path:
    folder = Path(weights_dir)
    if not folder.exists():
        raise InstaSceneError("SAM weights folder does not exist", folder)
    if not folder.is_dir():
        raise InstaSceneError("SAM weights must be a folder (config.json + model weights), not a file", folder)
    missing = []
    if not (folder / "config.json").is_file():
        missing.append("no config.json")
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        missing.append("no weights file (" + ", ".join(WEIGHT_FILES) + ")")
    if not any((folder / f).is_file() for f in PROCESSOR_FILES):
        missing.append("no " + " or ".join(PROCESSOR_FILES))
    if missing:
        raise InstaSceneError(
            "incomplete SAM weights folder: " + "; ".join(missing)
            + " (save a transformers SamModel and SamProcessor there with save_pretrained)",
            folder,
        )
    return folder


def _load_sam(folder: Path, device: str):
    try:
        import torch  # noqa: F401
        from transformers import SamModel, SamProcessor
    except ImportError as e:
        raise InstaSceneError(f"SAM masks need the `transformers` package ({e}); pip install 'transformers>=4.40'") from None
    try:
        processor = SamProcessor.from_pretrained(folder, local_files_only=True)
        model = SamModel.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # any loader failure (bad json, corrupt safetensors, wrong shapes) is the folder's fault
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InstaSceneError(f"cannot load SAM from this folder: {first}", folder) from None
    return processor, model.to(device).eval()


def _stability(logits, offset: float):
    """IoU of the mask at logit > +offset against the mask at logit > -offset (SAM's stability score)."""
    inter = (logits > offset).flatten(-2).sum(-1).float()
    union = (logits > -offset).flatten(-2).sum(-1).float()
    return inter / union.clamp(min=1)


# ---------------------------------------------------------------------- SAM


def sam_label_maps(
    images,
    weights_dir: str | os.PathLike,
    points_per_side: int = 16,
    points_per_batch: int = 64,
    pred_iou_thresh: float = 0.7,
    stability_thresh: float = 0.9,
    stability_offset: float = 1.0,
    min_area_frac: float = 1e-3,
    dedup_iou: float = 0.7,
    device: str | None = None,
) -> list[np.ndarray]:
    """Automatic SAM label maps, one int32 [H, W] per uint8 [H, W, 3] image.

    A regular points_per_side x points_per_side grid of single-point prompts (batched,
    3 candidate masks each) is run against each image's embedding. Candidates are kept when
    the predicted IoU >= pred_iou_thresh and the stability score >= stability_thresh, and
    when they cover at least min_area_frac of the image; near duplicates (mask IoU >
    dedup_iou) keep only the highest-scoring one. Scoring, area and duplicates are judged on
    SAM's low-resolution masks; the kept masks are upscaled to the image and flattened as the
    module docstring says (largest first, small parts on top), then relabelled 1..K.
    Weights are loaded only from `weights_dir` (`from_pretrained(..., local_files_only=True)`).
    """
    images = _check_images(images)
    folder = _check_weights_dir(weights_dir)
    import torch

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    processor, model = _load_sam(folder, dev)
    ip = processor.image_processor
    pad_h, pad_w = int(ip.pad_size["height"]), int(ip.pad_size["width"])
    n = int(points_per_side)
    if n < 1:
        raise InstaSceneError(f"points_per_side must be >= 1, got {points_per_side}")
    grid = (np.stack(np.meshgrid(np.arange(n), np.arange(n)), -1).reshape(-1, 2) + 0.5) / n  # (x, y) in [0, 1]

    out = []
    for img in images:
        h, w = img.shape[:2]
        inputs = processor(images=img, return_tensors="pt")
        rh, rw = (int(v) for v in inputs["reshaped_input_sizes"][0])
        with torch.no_grad():
            emb = model.get_image_embeddings(inputs["pixel_values"].to(dev))
            pts = torch.as_tensor(grid * np.array([rw, rh]), dtype=torch.float32, device=dev)  # model-input pixels
            logits, scores = [], []  # only the candidates that pass the filters (memory)
            for s in range(0, len(pts), points_per_batch):
                p = pts[s : s + points_per_batch]
                r = model(
                    image_embeddings=emb,
                    input_points=p[None, :, None, :],
                    input_labels=torch.ones(1, len(p), 1, dtype=torch.int, device=dev),
                    multimask_output=True,
                )
                lg = r.pred_masks[0].flatten(0, 1).float()  # [P*3, h_lr, w_lr]
                sc = r.iou_scores[0].flatten().float()
                lr_h, lr_w = lg.shape[-2:]
                valid = lg[:, : max(1, round(lr_h * rh / pad_h)), : max(1, round(lr_w * rw / pad_w))]  # no padding
                area = (valid > 0).flatten(1).float().mean(1)
                ok = (sc >= pred_iou_thresh) & (_stability(valid, stability_offset) >= stability_thresh)
                ok &= area >= min_area_frac
                logits.append(lg[ok].cpu())
                scores.append(sc[ok].cpu())
        logits, scores = torch.cat(logits), torch.cat(scores)
        lr_h, lr_w = logits.shape[-2:]
        binary = logits[:, : max(1, round(lr_h * rh / pad_h)), : max(1, round(lr_w * rw / pad_w))] > 0
        idx = torch.argsort(scores, descending=True, stable=True)
        idx = _dedup(binary[idx].flatten(1).float(), dedup_iou, idx)

        label = np.zeros((h, w), np.int32)
        if len(idx):
            full = np.concatenate([  # upscaled to the image in chunks: [M, H, W] bool
                ip.post_process_masks([logits[idx[c : c + 16]][None]], [[h, w]], [[rh, rw]], binarize=True)[0][0].numpy()
                for c in range(0, len(idx), 16)
            ])
            full_area = full.reshape(len(full), -1).sum(1)
            order = np.argsort(-full_area, kind="stable")  # largest first; smaller painted on top
            for k, m in enumerate(order, start=1):
                label[full[m]] = k
            min_px = max(1, int(round(min_area_frac * h * w)))
            counts = np.bincount(label.ravel(), minlength=len(order) + 1)
            label[(counts < min_px)[label] & (label > 0)] = 0
        out.append(relabel(label))
    return out


def _dedup(flat, thresh: float, idx):
    """Greedy mask NMS: walk in score order, drop a mask overlapping a kept one by IoU > thresh."""
    import torch

    if len(idx) == 0:
        return idx
    inter = flat @ flat.T
    area = flat.sum(1)
    iou = (inter / (area[:, None] + area[None, :] - inter).clamp(min=1)).numpy()
    kept: list[int] = []
    for i in range(len(idx)):
        if not kept or (iou[i, kept] <= thresh).all():
            kept.append(i)
    return idx[torch.as_tensor(kept, dtype=torch.long)]


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

    images = _check_images(images)
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
