"""`instascene masks SCENE [--sam DIR] [--views N] [--force]`: SAM label maps into SCENE/sam/mask/."""

from __future__ import annotations


def add_parser(sub) -> None:
    from ..segment.scene_masks import MAX_VIEWS

    p = sub.add_parser("masks", help="generate the scene's sam/mask/ label maps with SAM (ONNX)")
    p.add_argument("scene", help="scene folder (point_cloud.ply, images/, sparse/0/ or cameras.json)")
    p.add_argument("--sam", default=None, metavar="DIR",
                   help="SAM ONNX model folder (encoder.onnx + decoder.onnx or sam.onnx; default: the model "
                   "set-up installed, see `instascene models`)")
    p.add_argument("--views", type=int, default=MAX_VIEWS,
                   help=f"mask at most this many views, spread over the cameras (default {MAX_VIEWS})")
    p.add_argument("--force", action="store_true", help="replace existing masks")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..segment.scene_masks import write_scene_masks

    s = write_scene_masks(args.scene, args.sam, args.views, args.force)
    stale = f"; removed {s['removed_stale']} old masks of other views" if s["removed_stale"] else ""
    print(f"wrote {s['views']} of {s['of']} views' masks to {args.scene}/sam/mask/ ({s['masks_per_view']} masks "
          f"per view, {s['seconds_per_view']} s per view) with {s['model']}{stale}")
    return 0
