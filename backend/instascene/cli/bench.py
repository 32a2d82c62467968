"""`instascene bench raster`: speed of the rasterizer, printed as a table.

Benchmarks, not tests: figures go to docs/benchmarks.md with the machine they ran on.
"""

from __future__ import annotations

import platform
import time


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="speed benchmarks (raster, segment)")
    p.add_argument("what", choices=["raster", "segment", "ablation"], help="which benchmark")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="ablation: built-in scene seeds")
    p.add_argument("--cache", default=None, help="ablation: folder to keep generated scenes in")
    p.add_argument("--scene", help="segment: scene folder (default: generate the built-in scene)")
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


def segment_bench(scene: str | None) -> int:
    """Time every stage of `instascene segment` on a scene (the built-in one by default)."""
    import json
    import tempfile
    from pathlib import Path

    from ..segment.pipeline import segment_scene
    from ..synth.generate import SynthOptions, generate_scene

    with tempfile.TemporaryDirectory() as tmp:
        if scene is None:
            scene = str(Path(tmp) / "scene")
            t = time.perf_counter()
            generate_scene(scene, SynthOptions(seed=0))
            print(f"built-in scene generated in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        summary = segment_scene(scene, Path(tmp) / "run", quiet=True)
        total = time.perf_counter() - t
    print(json.dumps({"total_s": round(total, 1), **summary}, indent=2))
    return 0


def ablation_bench(seeds, cache: str | None) -> int:
    """mIoU of each segmentation variant on built-in scenes, as a markdown table."""
    import tempfile
    from pathlib import Path

    import numpy as np

    from ..io.scene import load_scene
    from ..render import Gaussians, View, contributions
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
            g = Gaussians.from_splats(scene.splats)
            contribs = [contributions(g, View.from_camera(c), None) for c in scene.cameras]
            scores = ablate(scene, contribs, np.load(folder / "gt" / "gaussian_instances.npy"), feature_iterations=500)
            rows.append((seed, scores))
            print(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()), flush=True)
    print("| variant | " + " | ".join(f"seed {s}" for s, _ in rows) + " | mean |")
    print("|---|" + "---|" * (len(rows) + 1))
    for v in VARIANTS + FEATURE_VARIANTS:
        vals = [r[v] for _, r in rows]
        print(f"| {v} | " + " | ".join(f"{x:.3f}" for x in vals) + f" | {np.mean(vals):.3f} |")
    return 0


def run(args) -> int:
    import torch

    from ..render import gsplat_backend

    if args.what == "segment":
        return segment_bench(args.scene)
    if args.what == "ablation":
        return ablation_bench(args.seeds, args.cache)
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
