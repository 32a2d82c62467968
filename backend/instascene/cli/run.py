"""`instascene run SCENE --out RUN`: segmentation and completion in one go."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    from .complete import add_options

    p = sub.add_parser("run", help="segment a scene and complete every instance")
    p.add_argument("scene", help="scene folder (point_cloud.ply, images/, sparse/0/, sam/mask/)")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--iterations", type=int, default=None, help="feature-field steps (default 1000)")
    p.add_argument("--sam", default=None, metavar="DIR",
                   help="SAM ONNX model folder, used when the scene has no sam/mask (default: the installed model)")
    p.add_argument("--sam-weights", dest="sam", default=None, help=argparse.SUPPRESS)  # the former name of --sam
    add_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from ..complete.pipeline import complete_run
    from ..segment.pipeline import segment_scene
    from ..options import complete_params, segment_params

    seg = segment_scene(args.scene, args.out, segment_params({"iterations": args.iterations}), device=args.device,
                        sam=args.sam)
    comp = complete_run(args.out, args.instances, args.generator, args.weights,
                        complete_params({"finetune_iterations": args.finetune_iterations}), device=args.device)
    print(json.dumps({"segment": seg, "complete": comp}, indent=2))
    return 0
