"""The `instascene` command. Each sub-command lives in its own module with
`add_parser(subparsers)` and `run(args) -> int`; user mistakes (InstaSceneError)
end as one clear line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import sys

from ..errors import InstaSceneError
from . import bench, complete, demo, eval, info, masks, models, query, run, segment, serve, synth

COMMANDS = (info, synth, masks, segment, complete, run, query, eval, serve, bench, demo, models)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instascene", description="InstaScene backend: 2DGS scenes in, complete object instances out.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InstaSceneError as e:
        print(f"instascene {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system refused a path the user gave: name too long, no access, disk full
        if e.errno is None:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"instascene {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
