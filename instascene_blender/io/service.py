"""HTTP client for the local InstaScene backend (contracts.md, "Service"); stdlib only.

Endpoints: GET /health (no token), GET /capabilities, POST /jobs
{"kind", "scene", "run", "options"} -> {"id"}, GET /jobs/{id} -> state / progress /
stage / message / run, POST /jobs/{id}/cancel, POST /query {"run", "point" | "view" +
"pixel"} -> the instance a click selects (answered at once, not a job). The token travels as
``Authorization: Bearer <token>``; it is read from a user-only file, by default
``$XDG_CONFIG_HOME/instascene/token`` or ``~/.config/instascene/token``.

Nothing here touches Blender: `run_job` and `start_and_wait` run in worker threads
and only put plain dicts on a `queue.Queue`, which the Blender side drains on the
main thread (blender/jobs.py).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8765"
FINAL_STATES = ("done", "failed", "cancelled")


class ServiceError(RuntimeError):
    """The backend could not be reached or answered with an error; the message says which."""


def default_token_file() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "instascene", "token")


def read_token(path: str | None = None) -> str | None:
    """The token from `path` (or the default file); None when there is no such file."""
    path = os.path.expanduser(path) if path else default_token_file()
    try:
        with open(path, encoding="utf-8") as f:
            if os.name == "posix" and os.fstat(f.fileno()).st_mode & 0o077:
                mode = oct(os.fstat(f.fileno()).st_mode & 0o777)
                raise ServiceError(f"the token file {path} can be read by other users (mode {mode}); "
                                   f"make it yours alone: chmod 600 {path}")
            token = f.read().strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ServiceError(f"cannot read the token file {path}: {e.strerror or e}") from None
    return token or None


def is_loopback(url: str) -> bool:
    """Is the URL's host this machine's loopback: localhost, 127.0.0.0/8 or ::1 (as
    addresses, not as name prefixes: 127.evil.example is somebody else's)."""
    import ipaddress

    host = (urllib.parse.urlsplit(url).hostname or "").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: following one would carry the token to wherever it points."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class Client:
    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 10.0):
        url = (url or DEFAULT_URL).strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ServiceError(f"backend URL must start with http:// or https://, got {url!r}")
        self.url, self.token, self.timeout = url, token, timeout
        # no proxies for a loopback backend (a system proxy would swallow 127.0.0.1)
        handlers = [urllib.request.ProxyHandler({})] if is_loopback(url) else []
        self._opener = urllib.request.build_opener(_NoRedirects(), *handlers)

    def request(self, method: str, path: str, body: dict | None = None, auth: bool = True,
                timeout: float | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if auth and self.token:
            if self.url.startswith("http://") and not is_loopback(self.url):
                raise ServiceError(f"will not send the backend token in clear text to {self.url}: use https:// "
                                   "for a backend on another machine, or 127.0.0.1 for this one")
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with self._opener.open(req, timeout=timeout or self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = ""
            try:
                payload = json.loads(e.read().decode("utf-8"))
                detail = payload.get("detail") or payload.get("message") or ""
                if not isinstance(detail, str):
                    detail = json.dumps(detail)
            except Exception:  # noqa: BLE001 - an error body that is not JSON
                pass
            hint = " (token missing or wrong: check the token file in the add-on preferences)" \
                if e.code == 401 else ""
            raise ServiceError(f"backend answered {e.code} to {method} {path}: {detail or e.reason}{hint}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ServiceError(f"cannot reach the backend at {self.url} ({reason}); "
                               "is it running? (Start backend, or `instascene serve`)") from None
        try:
            return json.loads(raw.decode("utf-8")) if raw else {}
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ServiceError(f"backend sent a non-JSON answer to {method} {path}") from None

    def health(self) -> dict:
        return self.request("GET", "/health", auth=False)

    def capabilities(self) -> dict:
        return self.request("GET", "/capabilities")

    def submit(self, kind: str, scene: str | None, run: str | None, options: dict | None = None) -> str:
        body = {"kind": kind, "scene": scene, "run": run, "options": options or {}}
        answer = self.request("POST", "/jobs", body)
        if "id" not in answer:
            raise ServiceError(f"backend accepted the job but sent no id: {answer!r}")
        return str(answer["id"])

    def job(self, job_id: str) -> dict:
        return self.request("GET", f"/jobs/{urllib.parse.quote(str(job_id), safe='')}")

    def cancel(self, job_id: str) -> dict:
        return self.request("POST", f"/jobs/{urllib.parse.quote(str(job_id), safe='')}/cancel", {})

    def query(self, run: str, point=None, view: str | None = None, pixel=None, threshold: float | None = None,
              max_distance: float | None = None, timeout: float | None = None) -> dict:
        """What a click at a 3D `point` (the scene's world) or a `pixel` of camera `view` selects:
        {"gaussian", "instance" (-1 background, None nothing there), "instance_gaussians",
        "similar_gaussians", "similar_instances"}."""
        body = {"run": run}
        if point is not None:
            body["point"] = [float(v) for v in point]
        if pixel is not None:
            body["view"], body["pixel"] = view, [int(v) for v in pixel]
        if threshold is not None:
            body["threshold"] = float(threshold)
        if max_distance is not None:
            body["max_distance"] = float(max_distance)
        answer = self.request("POST", "/query", body, timeout=timeout)
        if "instance" not in answer:
            raise ServiceError(f"backend sent no instance in its answer to /query: {answer!r}")
        return answer


# ------------------------------------------------------------------ worker-thread bodies
def job_message(status: dict) -> dict:
    """A job status normalised into the message the Blender side applies."""
    try:
        progress = float(status.get("progress") or 0.0)
    except (TypeError, ValueError):
        progress = 0.0
    try:
        left = float(status["seconds_left"])
        left = left if math.isfinite(left) and left >= 0 else -1.0
    except (KeyError, TypeError, ValueError):
        left = -1.0  # an older backend, or not yet estimated
    return {
        "type": "job",
        "id": str(status.get("id", "")),
        "state": str(status.get("state", "")),
        "progress": min(max(progress, 0.0), 1.0),
        "stage": str(status.get("stage") or ""),
        "seconds_left": left,
        "message": str((status.get("state") == "failed" and status.get("error")) or status.get("message") or ""),
        "run": status.get("run") or status.get("run_dir") or "",
    }


def run_job(client: Client, kind: str, scene: str | None, run: str | None, options: dict | None,
            out, stop: threading.Event, interval: float = 0.5) -> None:
    """Submit a job and report its status on `out` until it ends or `stop` is set.

    Messages: {"type": "submitted", "id"}, {"type": "job", ...} per change, and
    {"type": "error", "message"} if the backend fails us. Never raises.
    """
    try:
        job_id = client.submit(kind, scene, run, options)
        out.put({"type": "submitted", "id": job_id, "kind": kind})
        follow_job(client, job_id, out, stop, interval)
    except ServiceError as e:
        out.put({"type": "error", "message": str(e)})
    except Exception as e:  # noqa: BLE001 - a worker must report, not die silently
        out.put({"type": "error", "message": f"{type(e).__name__}: {e}"})


def follow_job(client: Client, job_id: str, out, stop: threading.Event, interval: float = 0.5) -> None:
    last, failures = None, 0
    while not stop.is_set():
        try:
            msg = job_message(client.job(job_id))
            failures = 0
        except ServiceError as e:
            failures += 1
            if failures >= 5:
                out.put({"type": "error", "message": str(e)})
                return
            stop.wait(interval)
            continue
        msg["id"] = msg["id"] or job_id
        if msg != last:
            out.put(msg)
            last = msg
        if msg["state"] in FINAL_STATES:
            return
        stop.wait(interval)


def check_connection(client: Client, out) -> None:
    """Health + capabilities, reported as {"type": "connection", ...}. Never raises."""
    try:
        health = client.health()
        caps = {}
        try:
            caps = client.capabilities()
        except ServiceError as e:
            out.put({"type": "connection", "state": "error", "message": str(e), "health": health})
            return
        out.put({"type": "connection", "state": "connected", "message": _describe(caps), "health": health,
                 "capabilities": caps})
    except ServiceError as e:
        out.put({"type": "connection", "state": "offline", "message": str(e)})


def unavailable_kinds(caps: dict) -> dict:
    """{kind: reason} for job kinds this backend says it cannot run (GET /capabilities)."""
    jobs = caps.get("jobs") if isinstance(caps, dict) else None
    un = jobs.get("unavailable") if isinstance(jobs, dict) else None
    return {str(k): str(v) for k, v in un.items()} if isinstance(un, dict) else {}


def _describe(caps: dict) -> str:
    device = caps.get("device")
    if isinstance(device, dict):
        gpu = device.get("gpu")
        gpu = gpu.get("name") if isinstance(gpu, dict) else gpu
        device = gpu or device.get("name") or device.get("type")
    versions = caps.get("versions")
    version = caps.get("version") or (versions.get("instascene") if isinstance(versions, dict) else None)
    parts = [p for p in (f"device {device}" if device else "", f"version {version}" if version else "") if p]
    return "connected" + (f" ({', '.join(parts)})" if parts else "")


# ------------------------------------------------------------------ local backend process
def backend_command(python: str, url: str, data_root: str | None, token_file: str | None) -> list[str]:
    """`python -m instascene serve --host H --port P [--data-root D] [--token-file T]`."""
    parts = urllib.parse.urlsplit(url or DEFAULT_URL)
    cmd = [python, "-m", "instascene", "serve", "--host", parts.hostname or "127.0.0.1",
           "--port", str(parts.port or 8765)]
    if data_root:
        cmd += ["--data-root", data_root]
    if token_file:
        cmd += ["--token-file", token_file]
    return cmd


def start_backend(python: str, url: str, data_root: str | None, token_file: str | None,
                  log_path: str | None = None) -> subprocess.Popen:
    """Start the backend with the user's interpreter (never Blender's own Python, which has no torch)."""
    if not python:
        raise ServiceError("set the backend Python interpreter in the add-on preferences first")
    python = os.path.expanduser(python)
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        raise ServiceError(f"backend Python {python!r} is not an executable file")
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        raise ServiceError("the backend Python must be the interpreter of the InstaScene environment, "
                           "not Blender's own Python")
    if not is_loopback(url):
        raise ServiceError(f"can only start a local backend; {url} is not a loopback address")
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 - owned by the child
    try:
        return subprocess.Popen(backend_command(python, url, data_root, token_file), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as e:
        raise ServiceError(f"cannot start the backend: {e.strerror or e}") from None
    finally:
        if log is not subprocess.DEVNULL:
            log.close()


def wait_until_up(client: Client, proc: subprocess.Popen | None, out, token_file: str | None,
                  stop: threading.Event, timeout: float = 120.0) -> None:
    """Poll /health until the backend answers, then check the connection (re-reading the token,
    which a first start creates). Reports on `out`; never raises."""
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        if proc is not None and proc.poll() is not None:
            out.put({"type": "connection", "state": "error",
                     "message": f"the backend exited with code {proc.returncode} (see its log)"})
            return
        try:
            client.health()
            break
        except ServiceError:
            if time.monotonic() > deadline:
                out.put({"type": "connection", "state": "error",
                         "message": f"the backend did not answer within {timeout:.0f} s"})
                return
            stop.wait(0.5)
    if stop.is_set():
        return
    try:
        client.token = read_token(token_file) or client.token
    except ServiceError as e:
        out.put({"type": "connection", "state": "error", "message": str(e)})
        return
    check_connection(client, out)
