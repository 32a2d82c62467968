"""Job records on disk: one JSON per job, rewritten atomically on every change.

Why on disk: a client that started a long job must still find its result after the
server restarted, and must learn clearly that a job it was waiting for died with the
server rather than wait forever. At start-up every record is loaded; jobs that were
queued or running are marked failed with an "interrupted" message.

Each job also has a plain-text log (<id>.log, appended line by line) for the log tail.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import threading
from datetime import datetime, timezone
from pathlib import Path

from ..io.atomic import atomic_write

log = logging.getLogger(__name__)

STATES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = frozenset({"done", "failed", "cancelled"})
INTERRUPTED_RUNNING = "interrupted: the server stopped while this job was running"
INTERRUPTED_QUEUED = "interrupted: the server stopped while this job was queued"
MAX_LOG_LINE = 2000


def default_state_dir() -> Path:
    """$XDG_STATE_HOME/instascene, else ~/.local/state/instascene (per user)."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "instascene"


def now() -> str:
    """UTC time as ISO 8601 with milliseconds: readable, and sorts as text."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JobStore:
    """Thread-safe job records. `lock` is public so the worker can make a read-check-write
    (e.g. queued -> running vs. queued -> cancelled) one step."""

    def __init__(self, state_dir: str | os.PathLike):
        self.dir = Path(state_dir) / "jobs"
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.lock = threading.RLock()
        self._jobs: dict[str, dict] = {}
        self.interrupted = self._load()

    # ------------------------------------------------------------------ start-up
    def _load(self) -> list[str]:
        """Read every record; mark the ones a previous server left unfinished. Returns their ids."""
        for tmp in self.dir.glob(".*.tmp"):  # a write cut short by a crash
            with contextlib.suppress(OSError):
                tmp.unlink()
        interrupted = []
        for path in sorted(self.dir.glob("*.json")):
            try:
                job = json.loads(path.read_text())
                if not isinstance(job, dict) or job.get("id") != path.stem or job.get("state") not in STATES:
                    raise ValueError("not a job record")
                json.dumps(job, ensure_ascii=False).encode("utf-8")  # a lone surrogate could not be answered
            except (OSError, ValueError) as e:
                log.warning("ignoring unreadable job record %s: %s", path, e)
                continue
            self._jobs[job["id"]] = job
            if job["state"] in ("queued", "running"):
                msg = INTERRUPTED_RUNNING if job["state"] == "running" else INTERRUPTED_QUEUED
                self.update(job["id"], state="failed", message=msg, error=msg, finished=now())
                self.append_log(job["id"], msg)
                interrupted.append(job["id"])
        return interrupted

    # ------------------------------------------------------------------ records
    def create(self, kind: str, scene: str | None, run: str, options: dict) -> dict:
        with self.lock:
            job_id = secrets.token_hex(6)
            while job_id in self._jobs:
                job_id = secrets.token_hex(6)
            job = {
                "id": job_id,
                "kind": kind,
                "state": "queued",
                "progress": 0.0,
                "stage": "queued",
                "message": "waiting for the worker",
                "seconds_left": None,
                "scene": scene,
                "run": run,
                "options": options,
                "created": now(),
                "started": None,
                "finished": None,
                "error": None,
                "result": None,
                "cancel_requested": False,
            }
            self._jobs[job_id] = job
            self._persist(job)
            return dict(job)

    def get(self, job_id: str) -> dict | None:
        with self.lock:
            job = self._jobs.get(job_id)
            return dict(job) if job is not None else None

    def list(self) -> list[dict]:
        with self.lock:
            return sorted((dict(j) for j in self._jobs.values()), key=lambda j: (j["created"], j["id"]))

    def update(self, job_id: str, **fields) -> dict:
        with self.lock:
            job = self._jobs[job_id]
            job.update(fields)
            self._persist(job)
            return dict(job)

    def _persist(self, job: dict) -> None:
        with atomic_write(self.dir / f"{job['id']}.json", "w") as f:
            json.dump(job, f, indent=1)

    # ------------------------------------------------------------------ logs
    def append_log(self, job_id: str, line: str) -> None:
        stamp = now()[11:23]  # HH:MM:SS.mmm
        text = "".join(f"{stamp} {part[:MAX_LOG_LINE]}\n" for part in (str(line).splitlines() or [""]))
        with self.lock, open(self.dir / f"{job_id}.log", "a", encoding="utf-8", errors="backslashreplace") as f:
            f.write(text)

    def log_tail(self, job_id: str, lines: int) -> list[str]:
        try:
            with open(self.dir / f"{job_id}.log", encoding="utf-8", errors="replace") as f:
                return f.read().splitlines()[-lines:] if lines > 0 else []
        except FileNotFoundError:
            return []
