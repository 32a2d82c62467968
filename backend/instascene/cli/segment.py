"""`instascene segment SCENE --out RUN`: split a 2DGS scene into object instances."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("segment", help="segment a scene into instances (writes a run folder)")
    p.add_argument("scene", help="scene folder (point_cloud.ply, images/, sparse/0/, sam/mask/)")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--iterations", type=int, default=None, help="feature-field steps (default 1000)")
    p.add_argument("--criterion", choices=["transmittance", "crossing", "weight"], default=None,
                   help="pairs that make a mask's Gaussian set for association (default: crossing)")
    p.add_argument("--sam", default=None, metavar="DIR",
                   help="SAM ONNX model folder (encoder.onnx + decoder.onnx or sam.onnx), used when the scene has no "
                   "sam/mask (default: the model set-up installed, see `instascene models`)")
    p.add_argument("--weights", dest="sam", default=None, help=argparse.SUPPRESS)  # the former name of --sam
    p.add_argument("--labels-from", default=None, metavar="SCENE/gt",
                   help="write the run from the scene's ground-truth labels instead of segmenting (an oracle "
                   "segmentation, to measure completion on its own)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from ..options import segment_params
    from ..segment.pipeline import oracle_run, segment_scene

    if args.labels_from:
        print(json.dumps(oracle_run(args.scene, args.out, args.labels_from), indent=2))
        return 0
    params = segment_params({"iterations": args.iterations, "criterion": args.criterion})
    summary = segment_scene(args.scene, args.out, params, device=args.device, sam=args.sam)
    print(json.dumps(summary, indent=2))
    return 0
