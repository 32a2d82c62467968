"""`instascene complete RUN`: every (or the chosen) instance of a run folder completed.

Per instance (method.md §5, the stages of InstaScene's in-situ generation):
  1. close the shape: occlusion-aware visual hull from the real cameras (shape.py),
     new surfels where it was unseen
  2. score the real cameras by how much of the object they see unoccluded; the best
     one fixes the ring's azimuth 0, the best ten join the fine-tune
  3. the 16-view ring (ring.py): known / unknown pixels; the ring views that see the
     most of the object unoccluded become the conditions, the others the targets
  4. the generator fills the targets (geometric.py, or diffusion.py with weights)
  5. fine-tune the new Gaussians on the real and generated views (finetune.py)
  6. TSDF mesh, at the surfels their own distance, with vertex colours (mesh.py)
  7. RUN/instances/<id>/completed.ply, mesh.ply; instances.json records what was done
Before the objects, the support surface they hid is closed (background.py):
RUN/background_completed.ply.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InstaSceneError
from ..io.atomic import atomic_write
from ..io.ply import write_ply
from ..io.splats import SH_C0
from ..segment.scene_masks import spread_views
from .background import BackgroundParams, complete_background, fit_background
from .evidence import NOTHING, SceneEvidence, camera_scores, in_frame, project, scene_evidence
from .finetune import FinetuneParams, FitView, fit_colors
from .generator import GenerationTask
from .guard import GuardParams, guard_labels
from .mesh import Mesh, MeshParams, extract_mesh, fuse_tsdf, vertex_colors
from .ring import RingParams, render_cached, ring_cameras, view_caches
from .shape import ShapeParams, close_shape, concat_splats, support_plane, surfel_spacing, unseen_surfels

GENERATORS = ("auto", "geometric", "diffusion")


@dataclass
class CompleteParams:
    shape: ShapeParams = field(default_factory=ShapeParams)
    ring: RingParams = field(default_factory=RingParams)
    finetune: FinetuneParams = field(default_factory=FinetuneParams)
    mesh: MeshParams = field(default_factory=MeshParams)
    background: BackgroundParams = field(default_factory=BackgroundParams)
    guard: GuardParams = field(default_factory=GuardParams)
    conditions: int = 2  # ring views the generator conditions on
    real_views: int = 10  # best real cameras in the fine-tune (the official filter_occ_cam keeps 10)
    min_gaussians: int = 100  # smaller instances are left as observed
    diffusion_steps: int = 50
    guidance: float = 3.0  # Zero123's classifier-free guidance (MVDFusion uses 2.5)
    seed: int = 0


def resolve_generator(name: str, weights: str | None, p: "CompleteParams | None" = None):
    """The generator object: 'auto' is diffusion when weights are configured (the
    argument, else INSTASCENE_WEIGHTS), geometric otherwise."""
    if name not in GENERATORS:
        raise InstaSceneError(f"unknown generator {name!r}; choose one of {', '.join(GENERATORS)}")
    weights = weights or os.environ.get("INSTASCENE_WEIGHTS") or None
    if name == "geometric" or (name == "auto" and not weights):
        from .geometric import GeometricGenerator

        return GeometricGenerator()
    if not weights:
        raise InstaSceneError("the diffusion generator needs a local weights folder: pass --weights DIR or set "
                              "INSTASCENE_WEIGHTS (nothing is downloaded); or use --generator geometric")
    from .diffusion import DiffusionGenerator

    p = p or CompleteParams()
    return DiffusionGenerator(weights, steps=p.diffusion_steps, guidance=p.guidance, seed=p.seed)


class Progress:
    """A tqdm bar per instance and stage, and the service's `report(fraction, stage, msg)`."""

    def __init__(self, report=None, quiet: bool = False, total: int = 1):
        self.report, self.quiet, self.total = report, quiet, max(total, 1)
        self.index = 0

    def __call__(self, stage: str, fraction: float = 0.0, message: str = ""):
        if self.report:
            self.report(min(1.0, (self.index + fraction) / self.total), stage, message)
        if not self.quiet and fraction == 0.0 and stage != "evidence":
            print(f"  {stage} {message}".rstrip(), flush=True)


def load_run(run_dir) -> tuple[Path, dict, np.ndarray]:
    run = Path(run_dir)
    meta = run / "instances.json"
    if not meta.is_file():
        raise InstaSceneError("not a run folder (no instances.json); run `instascene segment SCENE --out RUN` first", run)
    try:
        doc = json.loads(meta.read_text())
    except json.JSONDecodeError as e:
        raise InstaSceneError(f"instances.json is not valid JSON: {e}", meta) from None
    _check_records(doc, meta)
    labels_path = run / "labels.npy"
    if not labels_path.is_file():
        raise InstaSceneError("labels.npy missing from the run folder", run)
    labels = load_array(labels_path, "labels")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise InstaSceneError(f"labels.npy must hold one integer per Gaussian, not {labels.dtype} {labels.shape}",
                              labels_path)
    return run, doc, labels


def _check_records(doc, meta: Path) -> None:
    """instances.json as segmentation writes it: an object whose "instances" is a list of
    records with an integer id and, where present, finite centroid and box."""
    if not isinstance(doc, dict) or not isinstance(doc.get("instances", []), list):
        raise InstaSceneError('instances.json must be an object with an "instances" list', meta)
    for r in doc.get("instances", []):
        if not isinstance(r, dict) or isinstance(r.get("id"), bool) or not isinstance(r.get("id"), int):
            raise InstaSceneError(f"instances.json: every instance needs an integer \"id\", got {r!r:.60}", meta)
        for key in ("centroid", "bbox_min", "bbox_max"):
            v = r.get(key)
            if v is not None and not (isinstance(v, list) and len(v) == 3 and all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x) for x in v)):
                raise InstaSceneError(f"instances.json: instance {r['id']} has a {key} that is not three "
                                      f"finite numbers: {v!r:.60}", meta)
        if not isinstance(r.get("gaussians", 0), int):
            raise InstaSceneError(f"instances.json: instance {r['id']} has a non-integer \"gaussians\"", meta)


def load_array(path: Path, what: str) -> np.ndarray:
    """A .npy file of the run, or a clear error naming it."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise InstaSceneError(f"cannot read the {what} array ({e}); segment the scene again", path) from None


def complete_run(run_dir, instances=None, generator: str = "auto", weights: str | None = None,
                 params: CompleteParams | None = None, device: str = "auto", report=None,
                 quiet: bool = False) -> dict:
    from ..io.scene import load_scene

    p = params or CompleteParams()
    run, doc, labels = load_run(run_dir)
    gen = resolve_generator(generator, weights, p)
    scene = load_scene(doc.get("scene", ""))
    splats = scene.require_splats().to_2dgs()
    cams = scene.require_cameras()
    if len(labels) != len(splats):
        raise InstaSceneError(f"labels.npy has {len(labels)} labels but the scene has {len(splats)} Gaussians", run)
    dev = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    records = {int(r["id"]): r for r in doc.get("instances", [])}
    chosen = sorted(records) if not instances else [int(i) for i in instances]
    unknown = [i for i in chosen if i not in records]
    if unknown:
        raise InstaSceneError(f"no instance {', '.join(map(str, unknown))} in this run "
                              f"(instances: {', '.join(map(str, sorted(records))) or 'none'})", run / "instances.json")
    chosen = [i for i in chosen if records[i].get("gaussians", 0) >= p.min_gaussians or instances]
    prog = Progress(report, quiet, len(chosen) + 1)
    t0 = time.perf_counter()
    means = splats.means.astype(np.float64)
    labels, shed = guard_labels(labels, means, p.guard)
    if not quiet:
        print(f"complete: {len(chosen)} instance(s) with the {gen.name} generator; reading {len(cams)} views")
    bg = means[labels < 0]
    plane = support_plane(bg, cams, 3 * surfel_spacing(bg)) if len(bg) else None
    ev, record, evidence_s = evidence_and_background(scene, splats, labels, plane, run, p.background, dev, prog)
    doc["background"] = {**(doc.get("background") or {}), **record}
    _write_json(run / "instances.json", doc)
    if not quiet:
        b = doc["background"]["completion"]
        print(f"  background: +{b['new_gaussians']} surfels ({b.get('fitted', 0)} fitted to the views), support "
              f"surface covered {b.get('coverage_observed', 0):.1%} -> {b.get('coverage_completed', 0):.1%}, "
              f"{b['seconds']} s")
    done = []
    for j, k in enumerate(chosen):
        prog.index = j + 1
        t = time.perf_counter()
        info = complete_instance(scene, splats, labels, ev, plane, k, gen, p, dev, run,
                                 lambda stage, f=0.0, m="": prog(stage, f, f"instance {k}: {m}" if m else f"instance {k}"))
        info["seconds"] = round(time.perf_counter() - t, 2)
        rec = records[k]
        rec["files"] = {**rec.get("files", {}), "completed": f"instances/{k}/completed.ply", "mesh": f"instances/{k}/mesh.ply"}
        rec["status"] = "completed"
        rec["completion"] = {**info, "shed": shed.get(k, 0)}
        _write_json(run / "instances.json", doc)  # after each object: progress survives a cancel
        done.append(k)
        if not quiet:
            print(f"  instance {k}: +{info['new_gaussians']} Gaussians, mesh {info['mesh_vertices']} vertices"
                  f"{' (watertight)' if info['watertight'] else ''}, {info['seconds']} s")
    doc["completion"] = {"generator": gen.name, "params": asdict(p), "evidence_seconds": round(evidence_s, 2)}
    _write_json(run / "instances.json", doc)
    return {"completed": done, "generator": gen.name, "seconds": round(time.perf_counter() - t0, 2)}


def evidence_and_background(scene, splats, labels, plane, run: Path, p: BackgroundParams, dev: str, prog
                            ) -> tuple[SceneEvidence, dict, float]:
    """The scene evidence (every real view rasterized once), with the new surfels that
    close the background in place, and RUN/background_completed.ply (the observed
    background, then the new surfels, their colours fitted to the views through the
    evidence's pairs); its record for instances.json; the evidence's seconds."""
    cams = scene.require_cameras()
    t = time.perf_counter()
    observed = splats.subset(labels < 0).to_2dgs()
    prog("background", 0.0, "closing the surfaces the objects hid")
    new, closing, info = complete_background(observed, plane, p)
    closing_s = time.perf_counter() - t
    t = time.perf_counter()
    prog("evidence", 0.0, f"{len(cams)} views")
    with_new = concat_splats(splats, new)
    ev = scene_evidence(with_new, np.r_[labels, np.full(len(new), -1, labels.dtype)], cams, dev,
                        lambda i, n, m: prog("evidence", i / n, m), watch=np.arange(len(with_new)) >= len(splats),
                        watch_share=p.fit_share, watch_views=spread_views(cams, p.fit_views))
    evidence_s = time.perf_counter() - t
    t = time.perf_counter()

    def image(name):
        return scene.image(name).astype(np.float32) / 255.0 if name in scene.image_paths else None

    new, fit = fit_background(new, closing, with_new.base_colors().astype(np.float32), ev, image, p)
    write_ply(run / "background_completed.ply", concat_splats(observed, new))
    info.update(fit, seconds=round(closing_s + time.perf_counter() - t, 2))
    return ev, {"file": "background.ply", "completed": "background_completed.ply", "completion": info}, evidence_s


def _write_json(path: Path, data) -> None:
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=2, allow_nan=False)


def _up_vector(plane, cams) -> np.ndarray:
    if plane is not None:
        return np.asarray(plane[0], dtype=np.float64)
    # no support plane: the cameras' mean image-up direction (−y of OpenCV cameras)
    up = -np.mean([c.world_to_camera[1, :3] for c in cams], axis=0)
    return up / max(np.linalg.norm(up), 1e-12)


def complete_instance(scene, splats, labels, ev: SceneEvidence, plane, k: int, gen, p: CompleteParams, dev: str,
                      run: Path, progress) -> dict:
    from ..render.rasterize import gaussian_colors  # noqa: F401  (torch import kept local)

    progress("shape")
    idx = np.flatnonzero(labels == k)
    observed = splats.subset(idx)
    means = splats.means.astype(np.float64)
    if plane is not None:
        n, d = plane
        others = means[(labels != k) & (np.abs(means @ n + d) > 2 * surfel_spacing(means[idx]))]
    else:
        others = means[labels != k]
    shp = close_shape(ev, k, observed.means.astype(np.float64), others, plane, p.shape,
                      observed.normals())
    new = unseen_surfels(shp, observed, ev, p.shape, p.seed)
    full = concat_splats(observed, new)
    is_new = np.r_[np.zeros(len(observed), bool), np.ones(len(new), bool)]

    progress("views")
    hull = shp.vertices
    lo, hi = hull.min(0), hull.max(0)
    center = (lo + hi) / 2
    radius = float(np.max(np.linalg.norm(hull - center, axis=1)))
    margin = p.shape.margin_voxels * shp.grid.size
    scores = camera_scores(ev, k, hull[:: max(1, len(hull) // 4000)], margin)
    best = np.argsort(-scores)
    up = _up_vector(plane, ev.cameras)
    ring, az = ring_cameras(center, radius, up, ev.cameras[int(best[0])].center, p.ring)
    g, ring_cache, ring_depth = view_caches(full, ring, dev, gap=p.mesh.truncation_voxels * shp.grid.size)
    colors = torch.as_tensor(full.base_colors(), dtype=torch.float32)
    is_obs = torch.as_tensor(~is_new, dtype=torch.float32)
    R = render_cached(g, ring_cache, ring, ring_depth, colors.to(g.means.device), is_obs.to(g.means.device))
    covered = R.alpha > 0.5
    known = covered & (R.observed > 0.5)
    unknown_px = covered & ~known
    occluded = _ring_occlusion(ring, R.depth, covered, means[labels != k], margin)
    ring_scores = (known & ~occluded).sum((1, 2)) / np.maximum(covered.sum((1, 2)), 1)
    order = [int(v) for v in np.argsort(-ring_scores, kind="stable")]
    conditions = order[: p.conditions]
    targets = [v for v in range(len(ring)) if v not in conditions]
    task = GenerationTask(
        images=np.where(known[..., None], R.rgb, 1.0).astype(np.float32),
        alpha=np.where(known, R.alpha, 0.0).astype(np.float32),
        depth=np.where(known, R.depth, 0.0).astype(np.float32),
        normals=R.normals, known=known, unknown=unknown_px, completed_alpha=covered,
        completed_depth=R.depth, K=ring[0].K.copy(),
        world_to_camera=np.stack([c.world_to_camera for c in ring]),
        azimuth_deg=az.astype(np.float64), elevation_deg=np.full(len(ring), p.ring.elevation_deg),
        conditions=conditions, targets=targets, seed=p.seed)

    progress("generate")
    generated = gen.generate(task, lambda i, n, m: progress("generate", i / max(n, 1), m))

    progress("fine-tune")
    real = [int(c) for c in best[: p.real_views] if scores[c] > 0]
    real_cams = [ev.cameras[c] for c in real]
    real_cache = view_caches(full, real_cams, dev)[1] if real_cams else None
    fit_real = []
    for j, c in enumerate(real):
        cam = ev.cameras[c]
        if cam.name not in scene.image_paths:
            continue
        img = scene.image(cam.name).astype(np.float32) / 255.0
        fit_real.append(FitView(j, img, (ev.label[c] == k).astype(np.float32) * p.finetune.real_weight, 1.0))
    fit_gen = [FitView(v, generated.images[i], covered[v].astype(np.float32) * p.finetune.generated_weight, 1.0)
               for i, v in enumerate(generated.views)]
    caches = [ring_cache] + ([real_cache] if real_cache is not None else [])
    fitted = fit_colors(caches, [fit_gen] + ([fit_real] if real_cache is not None else []), colors,
                        torch.as_tensor(is_new), p.finetune, p.seed,
                        lambda i, n, m: progress("fine-tune", i / n, m))
    rgb = fitted.numpy().astype(np.float64)
    full.sh_dc[is_new] = ((rgb[is_new] - 0.5) / SH_C0).astype(np.float32)
    write_ply(run / "instances" / str(k) / "completed.ply", full)

    progress("mesh")
    surfels = (full.means.astype(np.float64), full.normals(), full.opacities().astype(np.float64))
    grid, tsdf = fuse_tsdf(ring, R.depth, lo, hi, plane, p.mesh, prior=(shp.grid, shp.occupancy), surfels=surfels,
                           alpha=R.alpha)
    verts, faces = extract_mesh(grid, tsdf)
    if len(faces) == 0:
        raise InstaSceneError(f"instance {k}: the fused mesh is empty (no depth fell inside the object's grid)")
    mesh = Mesh(verts, faces, vertex_colors(verts, full.means.astype(np.float64), np.clip(rgb, 0, 1)))
    write_mesh_ply(run / "instances" / str(k) / "mesh.ply", mesh)
    unseen_share = float(unknown_px.sum() / max(covered.sum(), 1))
    return {
        "generator": gen.name,
        "observed_gaussians": int(len(observed)),
        "new_gaussians": int(len(new)),
        "mirror_plane": None if shp.mirror is None else {"normal": np.round(shp.mirror[0], 4).tolist(),
                                                          "offset": round(shp.mirror[1], 6)},
        "upright_mirror_plane": None if shp.upright_mirror is None else {
            "normal": np.round(shp.upright_mirror[0], 4).tolist(), "offset": round(shp.upright_mirror[1], 6)},
        "stands_on_table": shp.ground is not None,
        "flat_bottom": shp.flat_bottom,
        "unseen_pixel_share": round(unseen_share, 4),
        "ring": {"views": len(ring), "elevation_deg": p.ring.elevation_deg, "size": p.ring.size,
                 "aligned_to": ev.cameras[int(best[0])].name},
        "conditions": conditions,
        "condition_scores": [round(float(ring_scores[v]), 4) for v in conditions],
        "best_cameras": [{"name": ev.cameras[c].name, "score": round(float(scores[c]), 4)} for c in real],
        "mesh_vertices": int(len(verts)),
        "mesh_faces": int(len(faces)),
        "watertight": mesh.is_watertight,
    }


def _ring_occlusion(ring, depth: np.ndarray, covered: np.ndarray, others: np.ndarray, margin: float,
                    cell: int = 4) -> np.ndarray:
    """Per ring pixel: would the rest of the scene hide the object there? The other
    Gaussians' centres splatted into a z-buffer of `cell`-pixel blocks."""
    out = np.zeros_like(covered)
    for v, cam in enumerate(ring):
        u, w, z = project(cam, others)
        ok = in_frame(cam, u, w, z)
        bw, bh = -(-cam.width // cell), -(-cam.height // cell)
        zbuf = np.full(bw * bh, np.inf)
        np.minimum.at(zbuf, (w[ok] // cell) * bw + u[ok] // cell, z[ok])
        zb = zbuf.reshape(bh, bw).repeat(cell, 0).repeat(cell, 1)[: cam.height, : cam.width]
        out[v] = covered[v] & (zb < depth[v] - margin)
    return out


def write_mesh_ply(path: Path, mesh: Mesh) -> None:
    """Binary PLY: float vertices with uchar red/green/blue, int faces (Blender and
    trimesh read it)."""
    import trimesh

    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, vertex_colors=np.c_[mesh.colors, np.full(len(mesh.colors), 255)],
                         process=False)
    with atomic_write(path) as f:
        f.write(tm.export(file_type="ply"))
