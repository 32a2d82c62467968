"""`instascene demo`: what the pipeline can do so far, on real data.

Today: load the real trained splat file (shared/data/donut_3dgs.ply, or --ply),
summarise it, render a ring of views with the 2DGS rasterizer, write a contact sheet.
Segmentation and completion join as they land.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InstaSceneError
from ..io.atomic import atomic_write
from ..io.cameras import ring_cameras
from ..io.ply import read_ply

DEFAULT_PLY = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "donut_3dgs.ply"


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run the demo (renders the built-in example)")
    p.add_argument("--out", default="demo_out", help="output folder")
    p.add_argument("--ply", default=str(DEFAULT_PLY), help="splat file to show")
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--size", type=int, default=256)
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..render import Gaussians, View, rasterize

    ply = Path(args.ply)
    if not ply.exists():
        raise InstaSceneError("demo splat file not found (pass --ply FILE)", ply)
    out = Path(args.out)
    t0 = time.perf_counter()
    splats = read_ply(ply)
    lo, hi = splats.bounds()
    print(f"loaded {ply.name}: {len(splats)} Gaussians ({splats.kind}, SH degree {splats.sh_degree}) "
          f"in {time.perf_counter() - t0:.2f} s")
    g = Gaussians.from_splats(splats)
    center = (lo + hi) / 2
    radius = 1.1 * float(np.linalg.norm(hi - lo))
    cams = ring_cameras(center, radius, args.views, 35.0, args.size, args.size, fov_deg=40.0)
    tiles = []
    bg = torch.ones(3)
    for cam in cams:
        t = time.perf_counter()
        with torch.no_grad():
            r = rasterize(g, View.from_camera(cam), background=bg)
        tiles.append((r.rgb.clamp(0, 1).numpy() * 255).astype(np.uint8))
        print(f"  view {cam.name}: {time.perf_counter() - t:.2f} s, coverage {float((r.alpha > 0.5).float().mean()):.1%}")
    cols = 4
    rows = -(-len(tiles) // cols)
    sheet = np.full((rows * args.size, cols * args.size, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[r * args.size : (r + 1) * args.size, c * args.size : (c + 1) * args.size] = tile
    path = out / "views.png"
    with atomic_write(path) as f:
        Image.fromarray(sheet).save(f, format="PNG")
    print(f"wrote {path} ({time.perf_counter() - t0:.1f} s in all)")
    return 0
