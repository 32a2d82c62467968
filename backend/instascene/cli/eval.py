"""`instascene eval seg|complete|layout RUN --gt SCENE/gt`: score a run against a generated scene's truth, as JSON.

    instascene eval seg RUN --gt SCENE/gt                    3D mIoU on Gaussians, 2D mIoU on views
    instascene eval complete RUN --gt SCENE/gt [--views N --size S]
                                                             per object Chamfer-L1, F-score, volume IoU,
                                                             PSNR known/unknown; completed vs observed
    instascene eval layout RUN --gt SCENE/gt [--view-stride N]
                                                             the background with every object moved aside:
                                                             coverage of the support surface and PSNR from the
                                                             scene's views; observed vs completed background
Metric definitions: shared/reference/generation.md §6; code: instascene.eval.
"""

from __future__ import annotations

import argparse
import json


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "eval",
        help="evaluate a run against a scene's ground truth (JSON on stdout)",
        description="Evaluate a segmentation/completion run folder against the ground truth of a "
        "generated scene (SCENE/gt); prints JSON.",
    )
    kinds = parser.add_subparsers(dest="eval_kind", required=True, metavar="KIND")

    seg = kinds.add_parser("seg", help="instance segmentation: 3D mIoU on Gaussians, 2D mIoU on views")
    _common(seg)
    seg.add_argument("--no-views", action="store_true", help="skip the 2D (rendered views) part")
    seg.add_argument("--view-stride", type=int, default=1, metavar="N", help="2D part on every N-th camera only")
    seg.set_defaults(func=run_seg)

    comp = kinds.add_parser("complete", help="completion: geometry and PSNR per object, completed vs observed")
    _common(comp)
    comp.add_argument("--views", type=int, default=8, help="ring views per object for PSNR (default 8)")
    comp.add_argument("--size", type=int, default=128, help="ring view size in pixels (default 128)")
    comp.add_argument("--samples", type=int, default=100_000, help="surface samples for Chamfer/F-score")
    comp.add_argument("--resolution", type=int, default=64, help="volume IoU grid resolution (default 64)")
    comp.add_argument("--instances", type=int, nargs="+", metavar="ID", help="only these GT object ids")
    comp.add_argument("--splat-points", choices=("means", "discs"), default="means",
                      help="points of a splat prediction for Chamfer/F-score: Gaussian centres (default) "
                      "or samples on the surfel discs")
    comp.add_argument("--no-render", action="store_true", help="skip the PSNR renders")
    comp.add_argument("--seed", type=int, default=0)
    comp.set_defaults(func=run_complete)

    lay = kinds.add_parser("layout", help="the background with every object moved aside: support-surface "
                           "coverage and PSNR, observed vs completed")
    lay.add_argument("run", metavar="RUN", help="run folder (background.ply, optionally background_completed.ply)")
    lay.add_argument("--gt", required=True, metavar="SCENE/gt", help="the scene's ground-truth folder")
    lay.add_argument("--device", default="auto", help="auto, cpu or cuda (for rendering)")
    lay.add_argument("--view-stride", type=int, default=1, metavar="N", help="PSNR on every N-th camera only")
    lay.add_argument("--spacing", type=float, default=None, metavar="M",
                     help="coverage grid spacing in metres (default: 2 mm or the support's extent / 400, "
                     "whichever is larger)")
    lay.add_argument("--no-render", action="store_true", help="skip the PSNR renders (coverage only)")
    lay.set_defaults(func=run_layout)
    return parser


def _common(p) -> None:
    p.add_argument("run", metavar="RUN", help="run folder (labels.npy, instances.json, instances/<id>/)")
    p.add_argument("--gt", required=True, metavar="SCENE/gt", help="the scene's ground-truth folder")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (for rendering)")


def _check_positive(name: str, value: int) -> None:
    from ..errors import InstaSceneError

    if value < 1:
        raise InstaSceneError(f"--{name} must be at least 1, got {value}")


def run_seg(args) -> int:
    from ..eval.segmentation import evaluate_segmentation

    _check_positive("view-stride", args.view_stride)
    result = evaluate_segmentation(args.run, args.gt, views=not args.no_views, view_stride=args.view_stride,
                                   device=args.device)
    print(json.dumps(result, indent=2))
    return 0


def run_complete(args) -> int:
    from ..eval.completion import evaluate_completion

    for name in ("views", "size", "samples", "resolution"):
        _check_positive(name, getattr(args, name))
    result = evaluate_completion(
        args.run, args.gt, views=args.views, size=args.size, samples=args.samples, resolution=args.resolution,
        splat_points=args.splat_points, render=not args.no_render, instances=args.instances, seed=args.seed, device=args.device,
    )
    print(json.dumps(result, indent=2))
    return 0


def run_layout(args) -> int:
    from ..errors import InstaSceneError
    from ..eval.layout import evaluate_layout

    _check_positive("view-stride", args.view_stride)
    if args.spacing is not None and not args.spacing > 0:
        raise InstaSceneError(f"--spacing must be a positive number of metres, got {args.spacing}")
    result = evaluate_layout(args.run, args.gt, spacing=args.spacing, render=not args.no_render,
                             view_stride=args.view_stride, device=args.device)
    print(json.dumps(result, indent=2))
    return 0
