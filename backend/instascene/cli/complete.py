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


def run(args) -> int:
    import json

    from ..complete.pipeline import complete_run
    from ..options import complete_params

    params = complete_params({"finetune_iterations": args.finetune_iterations})
    summary = complete_run(args.run, args.instances, args.generator, args.weights, params, device=args.device)
    print(json.dumps(summary, indent=2))
    return 0
