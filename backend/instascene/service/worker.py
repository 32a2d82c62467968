"""The worker: one thread that runs one job at a time, in submission order.

One at a time because jobs share one GPU (and its memory); the queue holds the rest.
A thread rather than a process keeps a job's progress and cancel flag in plain memory;
runners release the GIL in torch, so the HTTP side stays responsive.

Cancel is cooperative: a queued job is cancelled at once; a running job's `progress`
raises `Cancelled` at its next call. Stopping the server cancels the running job the
same way and records it (and every queued job) as interrupted.
"""

from __future__ import annotations

import contextlib

import logging
import queue
import sys
import threading
import time
import traceback
from pathlib import Path

from ..errors import InstaSceneError
from ..progress import time_left
from . import jobs
from .store import FINISHED, INTERRUPTED_QUEUED, INTERRUPTED_RUNNING, JobStore, now

log = logging.getLogger(__name__)


class JobFinished(Exception):
    """Cancel asked for a job that has already finished."""


class _JobLogHandler(logging.Handler):
    """Sends log records emitted on the worker thread to the running job's log."""

    def __init__(self, worker: "Worker"):
        super().__init__(logging.INFO)
        self.worker = worker
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        job_id = self.worker.current
        if job_id is not None and threading.current_thread() is self.worker.thread:
            try:
                self.worker.store.append_log(job_id, self.format(record))
            except Exception:  # a log line must never break a job
                self.handleError(record)


class Worker:
    def __init__(self, store: JobStore, defaults: dict | None = None):
        """`defaults`: options every runner receives unless the job sets them (e.g. weights)."""
        self.store = store
        self.defaults = dict(defaults or {})
        self.current: str | None = None
        self.thread = threading.Thread(target=self._loop, name="instascene-worker", daemon=True)
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._cancel: dict[str, threading.Event] = {}
        self._stopping = False
        self._log_handler = _JobLogHandler(self)

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        logger = logging.getLogger("instascene")
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        logger.addHandler(self._log_handler)
        self.thread.start()

    def submit(self, job_id: str) -> None:
        self._cancel[job_id] = threading.Event()
        self._queue.put(job_id)

    def cancel(self, job_id: str) -> dict:
        """Cancel a queued job now, or ask a running one to stop; raises JobFinished."""
        with self.store.lock:
            job = self.store.get(job_id)
            if job is None:
                raise KeyError(job_id)
            if job["state"] in FINISHED:
                raise JobFinished(f"job {job_id} has already finished ({job['state']})")
            self._cancel.setdefault(job_id, threading.Event()).set()
            if job["state"] == "queued":
                self.store.append_log(job_id, "cancelled before it started")
                return self.store.update(
                    job_id, state="cancelled", cancel_requested=True, message="cancelled before it started", finished=now()
                )
            self.store.append_log(job_id, "cancel requested")
            return self.store.update(job_id, cancel_requested=True, message="cancelling")

    def stop(self, timeout: float = 10.0) -> None:
        """Interrupt the running job, record queued ones as interrupted, end the thread."""
        self._stopping = True
        running = self.current
        if running is not None:
            self._cancel.setdefault(running, threading.Event()).set()
        self._queue.put(None)
        if self.thread.is_alive():
            self.thread.join(timeout)
        with self.store.lock:
            for job in self.store.list():
                if job["state"] == "queued":
                    self.store.append_log(job["id"], INTERRUPTED_QUEUED)
                    self.store.update(job["id"], state="failed", message=INTERRUPTED_QUEUED,
                                      error=INTERRUPTED_QUEUED, finished=now())
        logging.getLogger("instascene").removeHandler(self._log_handler)

    # ------------------------------------------------------------------ the thread
    def _loop(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None or self._stopping:
                return
            with self.store.lock:
                job = self.store.get(job_id)
                if job is None or job["state"] != "queued":
                    continue  # cancelled while queued
                self.current = job_id
                job = self.store.update(job_id, state="running", started=now(), stage="starting",
                                        message="starting")
            try:
                self._run(job)
            except Exception as e:  # the worker outlives any one job, whatever failed
                print(f"instascene serve: job {job_id} could not be recorded:\n{traceback.format_exc()}",
                      file=sys.stderr, flush=True)
                with contextlib.suppress(Exception):
                    msg = f"internal error ({type(e).__name__}); see the server's log"
                    self.store.update(job_id, state="failed", message=msg, error=msg, finished=now())
            finally:
                self.current = None
                self._cancel.pop(job_id, None)
                _release_gpu_memory()

    def _run(self, job: dict) -> None:
        job_id = job["id"]
        cancel = self._cancel.setdefault(job_id, threading.Event())
        store = self.store
        last = {"stage": None, "message": None}
        t0 = time.perf_counter()

        def progress(fraction: float, stage: str, message: str = "") -> None:
            if cancel.is_set():
                raise jobs.Cancelled()
            fraction = min(1.0, max(0.0, float(fraction)))
            left = time_left(time.perf_counter() - t0, fraction)
            store.update(job_id, progress=fraction, stage=str(stage), message=str(message),
                         seconds_left=None if left is None else round(left, 1))
            if (stage, message) != (last["stage"], last["message"]):
                store.append_log(job_id, f"[{stage}] {message}" if message else f"[{stage}]")
                last.update(stage=stage, message=message)

        try:
            store.append_log(job_id, f"{job['kind']} started: scene={job['scene']} run={job['run']}")
            runner = jobs.get_runner(job["kind"])
            options = {**self.defaults, **job["options"]} if job["kind"] in ("complete", "run") else job["options"]
            scene = Path(job["scene"]) if job["scene"] else None
            result = runner(scene, Path(job["run"]), dict(options), progress)
        except jobs.Cancelled:
            if self._stopping:
                store.append_log(job_id, INTERRUPTED_RUNNING)
                store.update(job_id, state="failed", message=INTERRUPTED_RUNNING, error=INTERRUPTED_RUNNING,
                             finished=now())
            else:
                store.append_log(job_id, "cancelled")
                store.update(job_id, state="cancelled", message="cancelled", finished=now())
        except InstaSceneError as e:  # the user's input: one clear line
            store.append_log(job_id, f"failed: {e}")
            store.update(job_id, state="failed", message=str(e), error=str(e), finished=now())
        except Exception as e:  # a bug: the traceback goes to the job log and stderr, not the answer
            tb = traceback.format_exc()
            print(f"instascene serve: job {job_id} ({job['kind']}) crashed:\n{tb}", file=sys.stderr, flush=True)
            store.append_log(job_id, tb)
            msg = f"internal error ({type(e).__name__}: {e}); the job log has the details"
            store.update(job_id, state="failed", message=msg, error=msg, finished=now())
        else:
            secs = time.perf_counter() - t0
            store.append_log(job_id, f"done in {secs:.2f} s")
            store.update(job_id, state="done", progress=1.0, stage="done", message=f"done in {secs:.2f} s", seconds_left=0.0,
                         result=result if isinstance(result, dict) else None, finished=now())


def _release_gpu_memory() -> None:
    """Hand cached CUDA memory back between jobs, without importing torch ourselves."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
