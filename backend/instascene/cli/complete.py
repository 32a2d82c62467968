"""`instascene complete RUN`: complete each instance of a run folder, and mesh it."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("complete", help="complete the instances of a run folder (completed.ply, mesh.ply)")
    p.add_argument("run", help="run folder written by `instascene segment`")
    add_options(p)
    p.set_defaults(func=run)


def add_options(p) -> None:
    p.add_argument("--instances", nargs="+", type=int, default=None, metavar="ID",
                   help="only these instance ids (default: every instance)")
    p.add_argument("--generator", choices=["auto", "geometric", "diffusion"], default="auto",
                   help="auto (default): diffusion when weights are configured, else geometric")
    p.add_argument("--weights", default=None,
                   help="local Zero123-family diffusers folder (or INSTASCENE_WEIGHTS); nothing is downloaded")
    p.add_argument("--finetune-iterations", type=int, default=None, help="colour fine-tune steps (default 150)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")


def params_from(options: dict):
    """CompleteParams from CLI / service options (unknown keys are an error)."""
    from ..complete.pipeline import CompleteParams
    from ..errors import InstaSceneError

    p = CompleteParams()
    for key, value in options.items():
        if value is None:
            continue
        if key == "finetune_iterations":
            p.finetune.iterations = int(value)
        elif key == "resolution":
            p.shape.resolution = int(value)
        elif key == "diffusion_steps":
            p.diffusion_steps = int(value)
        elif key == "mesh_resolution":
            p.mesh.resolution = int(value)
        else:
            raise InstaSceneError(f"unknown completion option {key!r}")
    return p


def run(args) -> int:
    import json

    from ..complete.pipeline import complete_run

    params = params_from({"finetune_iterations": args.finetune_iterations})
    summary = complete_run(args.run, args.instances, args.generator, args.weights, params, device=args.device)
    print(json.dumps(summary, indent=2))
    return 0
