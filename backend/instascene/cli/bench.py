"""`instascene bench raster`: speed of the rasterizer, printed as a table.

Benchmarks, not tests: figures go to docs/benchmarks.md with the machine they ran on.
"""

from __future__ import annotations

import json
import platform
import time


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks (raster, segment, ablation, complete)")
    p.add_argument("what", choices=["raster", "segment", "ablation", "complete"], help="which benchmark")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="ablation/complete: built-in scene seeds")
    p.add_argument("--cache", default=None,
                   help="ablation/complete: folder to keep generated scenes (and segmentations) in")
    p.add_argument("--generator", default="geometric", help="complete: generator (geometric, diffusion, auto)")
    p.add_argument("--weights", default=None, help="complete: diffusion weights folder")
    p.add_argument("--no-render", action="store_true", help="complete: skip the PSNR renders")
    p.add_argument("--scene", nargs="+", metavar="DIR",
                   help="segment: scene folders (default: the built-in scenes of --seeds)")
    p.add_argument("--synth-size", default="256x192", metavar="WxH",
                   help="segment: image size of the generated built-in scenes (default 256x192)")
    p.add_argument("--synth-views", type=int, default=48, help="segment: views of the generated scenes (default 48)")
    p.add_argument("--synth-detail", type=float, default=1.0,
                   help="segment: surfel density of the generated scenes (synth --detail; default 1)")
    p.add_argument("--scale", action="store_true",
                   help="segment: one real-size scene, the first of --seeds with 200 views at 1000x750 and "
                        "detail 2.2 (~300k Gaussians): time per stage and peak memory")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per row (median reported)")
    p.add_argument("--gaussians", type=int, default=10_000, help="Gaussians for the CPU rows")
    p.add_argument("--size", default="256x256", help="image size WxH for the CPU rows")
    p.set_defaults(func=run)


def synthetic_scene(n: int, width: int, height: int, device="cpu", seed: int = 0):
    """Surfels filling a view with heavy overdraw: ≈ 40 composited pairs per pixel (2.8M at
    256², 10k Gaussians — the load of the reference measurement in gsplat.md §5).

    Splat sizes scale with 1/√n so that total coverage stays similar whatever n is.
    """
    import torch

    from ..render import Gaussians, View
    gen = torch.Generator().manual_seed(seed)
    depth = 4.0
    f = 0.6 * width
    half_w, half_h = 0.5 * width / f * depth, 0.5 * height / f * depth
    means = (torch.rand(n, 3, generator=gen) * 2 - 1) * torch.tensor([half_w, half_h, 1.0])
    means[:, 2] += depth
    size = 3.7 * half_w / n**0.5
    scales = size * (0.4 + torch.rand(n, 2, generator=gen))
    g = Gaussians(
        means=means,
        quats=torch.randn(n, 4, generator=gen),
        scales=scales,
        opacities=0.2 + 0.75 * torch.rand(n, generator=gen),
        sh=0.3 * torch.randn(n, 16, 3, generator=gen),
    )
    g = Gaussians(*(t.to(device) for t in (g.means, g.quats, g.scales, g.opacities, g.sh)))
    K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]], device=device)
    return g, View(torch.eye(4, device=device), K, width, height)


def _timed(fn, repeats: int) -> float:
    import torch

    fn()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def raster_rows(n: int, width: int, height: int, repeats: int):
    import torch

    from ..render import ContributionCache, contributions, gsplat_backend, rasterize, resolve_backend

    rows = []
    g, view = synthetic_scene(n, width, height)
    with torch.no_grad():
        t = _timed(lambda: rasterize(g, view, backend="torch"), repeats)
    rows.append((f"torch forward RGB+depth+normals, {width}x{height}, {n} Gaussians", "cpu", t, 1.0))

    params = [t.requires_grad_() for t in (g.means, g.quats, g.scales, g.opacities, g.sh)]

    def full_fwd_bwd():
        out = rasterize(g, view, backend="torch")
        (out.rgb.sum() + out.depth.sum()).backward()

    rows.append(("torch forward+backward, all splat parameters", "cpu", _timed(full_fwd_bwd, repeats), None))
    for p in params:
        p.requires_grad_(False)
    rows.append(("tracked rasterization (T > 0.5 pairs)", "cpu",
                 _timed(lambda: contributions(g, view, "transmittance", backend="torch"), repeats), None))

    cache = ContributionCache.build(g, [view], backend="torch")
    F = torch.nn.functional.normalize(torch.randn(n, 16), dim=1).requires_grad_()
    target = torch.randn(height, width, 16)

    def fwd_bwd():
        loss = (cache.render(0, F) * target).sum()
        loss.backward()

    t = _timed(fwd_bwd, max(repeats, 5))
    rows.append((f"cached 16-D features fwd+bwd, {width}x{height} ({cache.nnz(0) / 1e6:.1f}M pairs)", "cpu", t, 0.05))

    if resolve_backend("auto", "cuda" if torch.cuda.is_available() else "cpu") == "gsplat":
        W, H, N = 1920, 1080, 1_000_000
        g, view = synthetic_scene(N, W, H, device="cuda")
        with torch.no_grad():
            rows.append((f"gsplat fused RGB, {W}x{H}, {N} Gaussians", "cuda",
                         _timed(lambda: gsplat_backend.rasterize_fused(g, view), repeats), None))
            rows.append((f"gsplat search + shared compositing, {W}x{H}, {N}", "cuda",
                         _timed(lambda: rasterize(g, view, backend="gsplat"), repeats), None))
            rows.append((f"torch search + compositing, {W}x{H}, {N}", "cuda",
                         _timed(lambda: rasterize(g, view, backend="torch"), repeats), None))
    return rows


STAGES = ("rasterize", "track", "associate", "features", "instances")  # segment.json's timing_s


def _segment_child(folder: str, run: str) -> tuple[dict, float, float, float | None]:
    """In a fresh process: segment, and report the summary, the seconds, this process's
    peak resident memory and (on CUDA) the peak allocated GPU memory, in GB."""
    import resource
    import sys

    from ..segment.pipeline import segment_scene

    t = time.perf_counter()
    summary = segment_scene(folder, run, quiet=True)
    seconds = time.perf_counter() - t
    try:  # this process's own high-water mark (ru_maxrss also counts the parent's RSS at the fork)
        with open("/proc/self/status") as f:
            peak_gb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 2**20
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        peak_gb = peak / 2**30 if sys.platform == "darwin" else peak / 2**20
    torch = sys.modules.get("torch")
    cuda = torch.cuda.max_memory_allocated() / 2**30 if torch is not None and torch.cuda.is_initialized() else None
    return summary, seconds, peak_gb, cuda


def segment_bench(scenes: list[str] | None, seeds, cache: str | None, synth_size: str, synth_views: int = 48,
                  synth_detail: float = 1.0) -> int:
    """Segment each scene (the built-in scenes of `seeds` at `synth_size`, `synth_views`
    and `synth_detail` by default): time per stage, peak memory, and where the scene
    has ground truth the quality a user sees — one-to-one mIoU on Gaussians, objects'
    Gaussians left in the background, other objects' or background Gaussians inside
    instances, instances against objects.
    Each scene runs in a fresh process, so its peak memory (RSS) is its own."""
    import multiprocessing
    import tempfile
    from concurrent.futures import ProcessPoolExecutor
    from pathlib import Path

    from ..eval.segmentation import evaluate_segmentation
    from ..io.scene import load_scene
    from ..synth.generate import SynthOptions, generate_scene

    width, height = (int(v) for v in synth_size.lower().split("x"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(cache or tmp)
        folders = [Path(s) for s in scenes] if scenes else []
        for seed in ([] if scenes else seeds):
            default = (synth_views, synth_detail) == (SynthOptions.views, SynthOptions.detail)
            variant = "" if default else f"_{synth_views}v_d{synth_detail:g}"  # earlier caches keep their names
            folder = root / f"scene_{seed}_{width}x{height}{variant}"
            if not (folder / "synth.json").exists():
                t = time.perf_counter()
                generate_scene(folder, SynthOptions(seed=seed, width=width, height=height, views=synth_views,
                                                    detail=synth_detail), force=True)
                print(f"built-in scene seed {seed} at {width}x{height}, {synth_views} views, detail {synth_detail:g} "
                      f"generated in {time.perf_counter() - t:.1f} s", flush=True)
            folders.append(folder)
        for i, folder in enumerate(folders):
            run = Path(tmp) / f"run_{i}"
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                summary, total, peak_gb, cuda_gb = pool.submit(_segment_child, str(folder), str(run)).result()
            print(json.dumps({"scene": str(folder), "total_s": round(total, 1), "peak_rss_gb": round(peak_gb, 2),
                              "cuda_peak_gb": None if cuda_gb is None else round(cuda_gb, 2), **summary}), flush=True)
            scene = load_scene(folder, load_splats=False)
            cam = scene.cameras[0]
            row = evaluate_segmentation(run, folder / "gt", views=False) if (folder / "gt").is_dir() else {}
            row.update(scene=folder.name, views=len(scene.cameras), size=f"{cam.width}x{cam.height}", seconds=total,
                       memory=f"{peak_gb:.2f} GB" + ("" if cuda_gb is None else f" (CUDA {cuda_gb:.2f} GB)"),
                       stages=" / ".join(f"{summary['timing_s'].get(k, 0):.0f}" for k in STAGES))
            rows.append(row)
    print("| scene | views | size | Gaussians | objects | instances | mIoU | left in background | strays | seconds "
          f"| {' / '.join(STAGES)} s | peak memory |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "miou_3d" in r:
            q = (f"{r['gaussians']} | {r['objects']} | {r['predicted_instances']} | {r['miou_3d']:.3f} | "
                 f"{100 * r['left_in_background']:.1f} % | {100 * r['strays']:.1f} %")
        else:
            q = "– | – | – | – | – | –"
        print(f"| {r['scene']} | {r['views']} | {r['size']} | {q} | {r['seconds']:.0f} | {r['stages']} "
              f"| {r['memory']} |")
    return 0


def ablation_bench(seeds, cache: str | None) -> int:
    """mIoU of each segmentation variant on built-in scenes, as a markdown table."""
    import tempfile
    from pathlib import Path

    import numpy as np

    from ..eval.segmentation import load_gt
    from ..io.scene import load_scene
    from ..segment.ablation import FEATURE_VARIANTS, VARIANTS, ablate
    from ..synth.generate import SynthOptions, generate_scene

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(cache or tmp)
        rows = []
        for seed in seeds:
            folder = root / f"scene_{seed}"
            if not (folder / "synth.json").exists():
                generate_scene(folder, SynthOptions(seed=seed), force=True)
            scene = load_scene(folder)
            scores = ablate(scene, load_gt(folder / "gt").gaussian_instances, feature_iterations=500)
            rows.append((seed, scores))
            print(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()), flush=True)
    print("| variant | " + " | ".join(f"seed {s}" for s, _ in rows) + " | mean |")
    print("|---|" + "---|" * (len(rows) + 1))
    for v in VARIANTS + FEATURE_VARIANTS:
        vals = [r[v] for _, r in rows]
        print(f"| {v} | " + " | ".join(f"{x:.3f}" for x in vals) + f" | {np.mean(vals):.3f} |")
    return 0


def complete_bench(seeds, cache: str | None, generator: str, weights: str | None, render: bool) -> int:
    """Completion time per object and quality against the complete ground truth, on
    built-in scenes segmented by the full pipeline: a markdown table per object and the
    means (all objects; those with a fifth or more of their surface unseen)."""
    import shutil
    import tempfile
    from pathlib import Path

    import numpy as np

    from ..complete.pipeline import complete_run
    from ..eval.completion import evaluate_completion
    from ..segment.pipeline import segment_scene
    from ..synth.generate import SynthOptions, generate_scene

    f = lambda x: "–" if x is None else f"{x:.3f}"  # noqa: E731
    rows, per_object_s = [], []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(cache or tmp)
        for seed in seeds:
            scene, segmented = root / f"scene_{seed}", root / f"segmented_{seed}"
            if not (scene / "synth.json").exists():
                generate_scene(scene, SynthOptions(seed=seed), force=True)
            if not (segmented / "instances.json").exists():
                segment_scene(scene, segmented, quiet=True)
            run = Path(tmp) / f"run_{seed}"
            shutil.copytree(segmented, run)
            out = complete_run(run, generator=generator, weights=weights, quiet=True)
            doc = json.loads((run / "instances.json").read_text())
            secs = {r["id"]: r["completion"]["seconds"] for r in doc["instances"] if "completion" in r}
            per_object_s += list(secs.values())
            res = evaluate_completion(run, scene / "gt", render=render, splat_points="discs")
            for r in res["objects"]:
                if r["completed"] is None:
                    continue
                rows.append((seed, r, secs.get(r["pred_id"])))
            print(f"seed {seed}: {len(out['completed'])} instances completed in {out['seconds']} s "
                  f"(shared evidence {doc['completion']['evidence_seconds']} s)", flush=True)
    print(f"\ngenerator {generator}; per object {np.median(per_object_s):.1f} s median, {max(per_object_s):.1f} s max\n")
    print("| seed | object | unseen | F@1% obs | F@1% completed | F@1% mesh | CD obs | CD completed | vIoU obs "
          "| vIoU mesh | PSNR known obs | PSNR known completed | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for seed, r, sec in rows:
        o, c, m = r["observed"], r["completed"], r.get("mesh") or {}
        print(f"| {seed} | {r['name']} | {r['unseen_fraction']:.2f} | {f(o['fscore'])} | {f(c['fscore'])} | "
              f"{f(m.get('fscore'))} | {f(o['chamfer'])} | {f(c['chamfer'])} | {f(o['volume_iou'])} | "
              f"{f(m.get('volume_iou'))} | {f(o.get('psnr_known'))} | {f(c.get('psnr_known'))} | "
              f"{'–' if sec is None else f'{sec:.1f}'} |")
    for title, sel in (("all objects", rows), ("a fifth or more unseen", [x for x in rows if x[1]["needs_completion"]])):
        if not sel:
            continue
        mean = lambda w, k: _mean_of([(x[1][w] or {}).get(k) for x in sel])  # noqa: E731
        beats_f = sum(x[1]["completed"]["fscore"] > x[1]["observed"]["fscore"] for x in sel)
        beats_c = sum(x[1]["completed"]["chamfer"] < x[1]["observed"]["chamfer"] for x in sel)
        print(f"\n{title} ({len(sel)}): F@1% obs {f(mean('observed', 'fscore'))} / completed "
              f"{f(mean('completed', 'fscore'))} / mesh {f(mean('mesh', 'fscore'))}; Chamfer obs "
              f"{f(mean('observed', 'chamfer'))} / completed {f(mean('completed', 'chamfer'))}; volume IoU mesh "
              f"{f(mean('mesh', 'volume_iou'))}; PSNR known obs {f(mean('observed', 'psnr_known'))} / completed "
              f"{f(mean('completed', 'psnr_known'))}; completed beats observed: F {beats_f}/{len(sel)}, "
              f"Chamfer {beats_c}/{len(sel)}")
    return 0


def _mean_of(values):
    import numpy as np

    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def run(args) -> int:
    import torch

    from ..render import gsplat_backend

    if args.what == "segment":
        if args.scale:  # issue 19's real-size scene
            from ..errors import InstaSceneError

            if args.scene:
                raise InstaSceneError("--scale generates its own scene; leave out --scene")
            return segment_bench(None, args.seeds[:1], args.cache, "1000x750", 200, 2.2)
        return segment_bench(args.scene, args.seeds, args.cache, args.synth_size, args.synth_views, args.synth_detail)
    if args.what == "ablation":
        return ablation_bench(args.seeds, args.cache)
    if args.what == "complete":
        return complete_bench(args.seeds, args.cache, args.generator, args.weights, not args.no_render)
    width, height = (int(v) for v in args.size.lower().split("x"))
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, CUDA: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}"
          f" (gsplat: {gsplat_backend.why_unavailable()})")
    rows = raster_rows(args.gaussians, width, height, args.repeats)
    print(f"| {'benchmark':<62} | device | median s | target s |")
    print(f"|{'-' * 64}|--------|----------|----------|")
    for name, dev, t, target in rows:
        tgt = f"{target:.3f}" if target else "-"
        flag = "" if target is None or t <= target else "  (over target)"
        print(f"| {name:<62} | {dev:<6} | {t:8.3f} | {tgt:>8} |{flag}")
    return 0
