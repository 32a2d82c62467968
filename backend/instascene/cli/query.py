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
    p.add_argument("--max-distance", type=float, default=float("inf"),
                   help="for --point: select nothing farther than this from every Gaussian "
                        "(default: the nearest Gaussian, however far)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from ..errors import InstaSceneError
    from ..segment.query import query_run

    if args.pixel is not None and not args.view:
        raise InstaSceneError("--pixel needs --view NAME (a camera of the scene)")
    print(json.dumps(query_run(args.run, point=args.point, view=args.view, pixel=args.pixel,
                               threshold=args.threshold, max_distance=args.max_distance), indent=2))
    return 0
