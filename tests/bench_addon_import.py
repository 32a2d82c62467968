"""Import speed of the add-on vs Blender's own PLY importer (issue 7: a 1M-splat PLY in
<= 2 s and no slower than 2x `bpy.ops.wm.ply_import` on the same file).

Not collected by pytest (bench_*.py). Run from the repository root:

    .venv/bin/python tests/bench_addon_import.py [--splats 1000000] [--kind 2dgs|3dgs] [--repeat 3]

It writes the file with the backend's writer (`instascene.io.ply.write_ply`, SH degree 3,
the reference layout), then times, each on a fresh empty scene, the add-on's
`bpy.ops.instascene.import_scene` (read + mesh + every attribute + node modifier) and
`bpy.ops.wm.ply_import` (read + mesh + every property as an attribute), and reports the
best of `--repeat` interleaved runs. Neither time includes drawing (the depsgraph is not evaluated).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_file(path: Path, n: int, kind: str) -> None:
    from instascene.io.ply import write_ply
    from instascene.io.splats import Splats

    rng = np.random.default_rng(0)
    f = lambda *shape: rng.standard_normal(size=shape, dtype=np.float32)  # noqa: E731
    write_ply(path, Splats(means=f(n, 3), quats=f(n, 4), log_scales=f(n, 2 if kind == "2dgs" else 3) - 4,
                           opacity_logits=f(n), sh_dc=f(n, 3), sh_rest=f(n, 15, 3) * 0.1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splats", type=int, default=1_000_000)
    ap.add_argument("--kind", choices=("2dgs", "3dgs"), default="2dgs")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()

    import bpy

    import instascene_blender

    instascene_blender.register()
    with tempfile.TemporaryDirectory() as tmp:
        ply = Path(tmp) / "bench.ply"
        t = time.perf_counter()
        make_file(ply, args.splats, args.kind)
        print(f"wrote {args.splats:,} {args.kind} splats ({ply.stat().st_size / 2**20:.0f} MiB) "
              f"in {time.perf_counter() - t:.1f} s")

        def once(op, **kw) -> float:
            bpy.ops.wm.read_factory_settings(use_empty=True)
            t0 = time.perf_counter()
            op(**kw)
            dt = time.perf_counter() - t0
            assert len(bpy.data.meshes[0].vertices) == args.splats
            return dt

        ours_runs, blender_runs = [], []
        for _ in range(args.repeat):  # interleaved, so a busy machine slows both alike
            ours_runs.append(once(bpy.ops.instascene.import_scene, filepath=str(ply), import_cameras=False))
            blender_runs.append(once(bpy.ops.wm.ply_import, filepath=str(ply)))
        ours, blender = min(ours_runs), min(blender_runs)
        print("runs (s): instascene", " ".join(f"{t:.3f}" for t in ours_runs),
              "| ply_import", " ".join(f"{t:.3f}" for t in blender_runs))
    ratio = ours / blender
    ok = ours <= 2.0 and ratio <= 2.0
    print(f"instascene.import_scene: {ours:.3f} s")
    print(f"wm.ply_import:           {blender:.3f} s")
    print(f"ratio: {ratio:.2f}x  -> {'PASS' if ok else 'FAIL'} (target <= 2 s and <= 2x)")
    if args.json:
        Path(args.json).write_text(json.dumps({"splats": args.splats, "kind": args.kind, "addon_s": ours,
                                               "blender_ply_import_s": blender, "ratio": ratio, "pass": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
