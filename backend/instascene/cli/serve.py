"""`instascene serve`: the local backend service (HTTP) for the Blender add-on and scripts."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from pathlib import Path

from ..errors import InstaSceneError


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "serve",
        help="run the local backend service (HTTP API for the Blender add-on and scripts)",
        description="Run the backend service: jobs (validate, render; segment and complete as they land), "
        "file upload/download inside the data roots. Every request but /health needs the token from "
        "the token file, sent as 'Authorization: Bearer <token>'.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--data-root", dest="data_roots", action="extend", nargs="+", metavar="DIR", default=[],
                   help="folder the service may read and write (repeatable; default: the current folder); "
                   "relative request paths are taken relative to the first")
    p.add_argument("--token-file", metavar="PATH",
                   help="where the token is kept, created (mode 0600) when missing "
                   "(default: $XDG_CONFIG_HOME/instascene/token or ~/.config/instascene/token)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="where job records and logs live (default: $XDG_STATE_HOME/instascene "
                   "or ~/.local/state/instascene)")
    p.add_argument("--weights", metavar="DIR",
                   help="generator weights folder for completion (default: $INSTASCENE_WEIGHTS)")
    p.add_argument("--max-upload", default="16G", metavar="SIZE",
                   help="largest file PUT /files accepts, e.g. 500M, 16G (default 16G)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="server log verbosity (default info)")
    p.set_defaults(func=run)
    return p


def _listen(host: str, port: int) -> socket.socket:
    """Bind here, so a busy port is one clear line and --port 0 can report the real port."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise InstaSceneError(f"cannot resolve --host {host!r}: {e.strerror}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise InstaSceneError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args) -> int:
    import uvicorn  # here, not at the top: `instascene info` must not pay for the web stack

    from ..service.app import ServiceConfig, create_app
    from ..service.security import default_token_file, load_or_create_token, parse_size
    from ..service.store import default_state_dir

    token_file = Path(args.token_file).expanduser() if args.token_file else default_token_file()
    state_dir = Path(args.state_dir).expanduser() if args.state_dir else default_state_dir()
    weights, source = (args.weights, "--weights") if args.weights else (os.environ.get("INSTASCENE_WEIGHTS"), "INSTASCENE_WEIGHTS")
    config = ServiceConfig(
        data_roots=[Path(d) for d in (args.data_roots or [os.getcwd()])],
        token=load_or_create_token(token_file),
        state_dir=state_dir,
        max_upload=parse_size(args.max_upload),
        weights=Path(weights).expanduser() if weights else None,
        weights_source=source if weights else None,
        hosts=("127.0.0.1", "localhost", "::1", args.host),
    )
    app = create_app(config)
    sock = _listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    roots = ", ".join(str(r) for r in app.state.roots)
    shown = f"[{host}]" if ":" in host else host
    print(f"instascene serve: http://{shown}:{port}  data roots: {roots}", flush=True)
    print(f"instascene serve: token in {token_file}; job records in {state_dir}", flush=True)
    if app.state.store.interrupted:
        print(f"instascene serve: {len(app.state.store.interrupted)} job(s) were interrupted by the last stop "
              "and are marked failed", flush=True)
    if not _is_loopback(args.host):
        print(f"instascene serve: warning: listening on {args.host}, reachable from other machines; "
              "the token is the only protection and travels in clear text (put TLS in front)",
              file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=5))
    server.run(sockets=[sock])
    return 0
