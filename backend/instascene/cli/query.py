"""`instascene query RUN (--view NAME --pixel X Y | --point X Y Z)`: what a click selects."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("query", help="the instance (and similar Gaussians) at a pixel or 3D point of a segmented scene")
    p.add_argument("run", help="run folder written by `instascene segment`")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--pixel", nargs=2, type=int, metavar=("X", "Y"), help="pixel in --view")
    where.add_argument("--point", nargs=3, type=float, metavar=("X", "Y", "Z"), help="3D point (world)")
    p.add_argument("--view", help="camera name for --pixel")
    p.add_argument("--threshold", type=float, default=0.8, help="feature cosine for the similar set")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    from pathlib import Path

    import numpy as np
    import torch

    from ..errors import InstaSceneError
    from ..io.scene import load_scene
    from ..render import Gaussians, View
    from ..segment.instances import gaussian_at_pixel, gaussian_near_point, query_instance

    run_dir = Path(args.run)
    for name in ("labels.npy", "features.npy", "instances.json"):
        if not (run_dir / name).exists():
            raise InstaSceneError("not a segmentation run folder (missing " + name + ")", run_dir)
    scene = load_scene(json.loads((run_dir / "instances.json").read_text())["scene"])
    labels = np.load(run_dir / "labels.npy")
    feats = torch.from_numpy(np.load(run_dir / "features.npy"))
    if args.pixel is not None:
        if not args.view:
            raise InstaSceneError("--pixel needs --view NAME (a camera of the scene)")
        cam = scene.camera(args.view)
        x, y = args.pixel
        if not (0 <= x < cam.width and 0 <= y < cam.height):
            raise InstaSceneError(f"pixel ({x}, {y}) is outside {args.view} ({cam.width}x{cam.height})")
        g = gaussian_at_pixel(Gaussians.from_splats(scene.splats), View.from_camera(cam), x, y)
    else:
        g = gaussian_near_point(scene.splats.means, args.point)
    q = query_instance(labels, feats, g, args.threshold)
    print(json.dumps({"gaussian": q["gaussian"], "instance": q["instance"],
                      "instance_gaussians": int(len(q["instance_gaussians"])),
                      "similar_gaussians": int(len(q["similar_gaussians"]))}, indent=2))
    return 0
