"""What keeps the service safe to leave running: the token, the data roots, size limits.

- The token: random, created at first start in a file only the user can read, sent as
  `Authorization: Bearer <token>` on every request but /health; any local user or web
  page could otherwise drive the backend (and read files) through the loopback port.
- Data roots: every path a request names is resolved (symlinks followed) and must lie
  inside one of them, so neither '..' nor a symlink can reach other files.
- Size limits: JSON bodies are small by design (large data travels as files), uploads
  have their own configurable cap; both answered 413 before the body is read when the
  client declares its length.
Framework-free (plain ASGI) so it can be tested and reasoned about on its own.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
from pathlib import Path

from ..errors import InstaSceneError
from ..io.atomic import NAME_MAX, overlong_name

JSON_BODY_LIMIT = 64 * 1024
OPEN_PATHS = frozenset({"/health"})


# ---------------------------------------------------------------------- token


def default_token_file() -> Path:
    """$XDG_CONFIG_HOME/instascene/token, else ~/.config/instascene/token (per user)."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "instascene" / "token"


def load_or_create_token(path: str | os.PathLike) -> str:
    """The token kept in `path`; a new random one, written with mode 0600, when missing.

    Created under a temporary name and hard-linked into place, so two servers starting
    at once agree on one token and nobody reads a half-written file. An existing file
    that others can read is refused, as ssh refuses a readable private key.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)
    if not path.is_file():
        raise InstaSceneError("the token file is not a regular file", path)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InstaSceneError(
            f"the token file is accessible to other users (mode {stat.filemode(mode)}); "
            f"make it private with: chmod 600 {path}",
            path,
        )
    token = path.read_text().strip()
    if len(token) < 16:
        raise InstaSceneError("the token file is empty or too short; delete it and a new one is created", path)
    return token


# ---------------------------------------------------------------------- data roots


class PathRejected(Exception):
    """A request path that may not be used: `status` is the HTTP answer (400, 403)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class DataRoots:
    """The folders the service may read and write. A request path is absolute, or
    relative to the first root; either way it must resolve to a place inside a root."""

    def __init__(self, roots: list[str | os.PathLike]):
        resolved: list[Path] = []
        for r in roots:
            p = Path(r).expanduser()
            if not p.is_dir():
                raise InstaSceneError("data root is not an existing folder", p)
            p = p.resolve()
            if p not in resolved:
                resolved.append(p)
        if not resolved:
            raise InstaSceneError("at least one data root is needed (--data-root DIR)")
        self.roots = resolved

    def __iter__(self):
        return iter(self.roots)

    def resolve(self, raw: str, what: str = "path") -> Path:
        """The real location of `raw`, or PathRejected when it is malformed or escapes."""
        if not isinstance(raw, str) or not raw.strip():
            raise PathRejected(400, f"{what} is empty")
        if "\x00" in raw:
            raise PathRejected(400, f"{what} contains a NUL character")
        p = Path(raw)
        if ".." in p.parts:
            raise PathRejected(403, f"{what} {raw!r} contains '..'; name paths inside the data roots directly")
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:
            raise PathRejected(400, f"{what} is not valid Unicode text") from None
        long = overlong_name(p)
        if long:
            raise PathRejected(400, f"{what}: the name {long[:40]!r}… is longer than {NAME_MAX} bytes")
        if not p.is_absolute():
            p = self.roots[0] / p
        try:
            real = p.resolve()
            real.exists()  # what every caller asks next: fails here on a loop or an overlong path
        except (OSError, RuntimeError) as e:
            why = "a symbolic link loop" if isinstance(e, RuntimeError) or getattr(e, "errno", None) == errno.ELOOP \
                else (e.strerror or str(e))
            raise PathRejected(400, f"{what} {raw!r} cannot be used: {why}") from None
        if self.contains(real):
            return real
        via = f" (it resolves to {real} through a symbolic link)" if real != Path(os.path.abspath(p)) else ""
        roots = ", ".join(str(r) for r in self.roots)
        raise PathRejected(403, f"{what} {raw!r} is outside the data roots ({roots}){via}")

    def contains(self, real: Path) -> bool:
        return any(real == root or root in real.parents for root in self.roots)


# ---------------------------------------------------------------------- ASGI guard


async def _send_json(send, status: int, detail: str, headers: list | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    *(headers or [])],
    })
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: token check (401), then body size check (413), before any route.

    Uploads (PUT /files/...) may be `upload_limit` bytes; the route itself enforces the
    limit again while streaming, for bodies sent without a length. Other bodies are
    read here up to `json_limit` when their length is not declared.
    """

    def __init__(self, app, token: str, upload_limit: int, json_limit: int = JSON_BODY_LIMIT,
                 hosts: tuple[str, ...] | None = None):
        self.app = app
        self.token = token.encode()
        self.upload_limit = upload_limit
        self.json_limit = json_limit
        self.hosts = None if hosts is None else {h.lower().strip("[]") for h in hosts}

    def host_allowed(self, headers: dict[bytes, bytes]) -> bool:
        """The Host header names this server (loopback or its --host), so that a web page
        whose name was re-pointed at 127.0.0.1 (DNS rebinding) gets no answer at all."""
        if self.hosts is None:
            return True
        raw = headers.get(b"host", b"").decode("latin-1").strip().lower()
        host = raw[1:raw.index("]")] if raw.startswith("[") and "]" in raw else raw.rsplit(":", 1)[0] if raw.count(":") == 1 else raw
        return host in self.hosts

    def authorized(self, headers: dict[bytes, bytes]) -> str | None:
        """None when the request carries the right token, else why not."""
        value = headers.get(b"authorization")
        if value is None:
            return "missing token: send the header 'Authorization: Bearer <token>' (the token is in the server's token file)"
        scheme, _, given = value.strip().partition(b" ")
        if scheme.lower() != b"bearer" or not given.strip():
            return "malformed Authorization header: expected 'Bearer <token>'"
        if not secrets.compare_digest(given.strip(), self.token):
            return "wrong token"
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if not self.host_allowed(headers):
            return await _send_json(send, 421, "this server answers only to its own host names "
                                    "(127.0.0.1, localhost, [::1] or its --host)")
        if scope["path"] not in OPEN_PATHS:
            why = self.authorized(headers)
            if why is not None:
                return await _send_json(send, 401, why, [(b"www-authenticate", b"Bearer")])

        upload = scope["method"] == "PUT" and scope["path"].startswith("/files/")
        limit = self.upload_limit if upload else self.json_limit
        length = headers.get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return await _send_json(send, 400, "malformed Content-Length header")
            if n > limit:
                return await _send_json(send, 413, _too_large(limit, upload))
        elif not upload and b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    return await _send_json(send, 413, _too_large(limit, upload))
                chunks.append(chunk)
                more = message.get("more_body", False)
            body = b"".join(chunks)
            replayed = False

            async def receive_again():
                nonlocal replayed
                if replayed:
                    return await receive()
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

            return await self.app(scope, receive_again, send)
        return await self.app(scope, receive, send)


def _too_large(limit: int, upload: bool) -> str:
    what = "upload" if upload else "request body"
    hint = " (raise it with instascene serve --max-upload)" if upload else "; large data travels as files, not JSON"
    return f"{what} too large: the limit is {format_size(limit)}{hint}"


def format_size(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n} bytes"


def parse_size(text: str) -> int:
    """'64K', '10M', '2G', '1.5G' or plain bytes -> bytes (binary units)."""
    s = str(text).strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(s[-1:], 1)
    num = s[:-1] if mult != 1 else s
    try:
        value = float(num)
    except ValueError:
        raise InstaSceneError(f"not a size: {text!r} (e.g. 500M, 16G or a number of bytes)") from None
    if value <= 0:
        raise InstaSceneError(f"size must be positive, not {text!r}")
    return int(value * mult)
