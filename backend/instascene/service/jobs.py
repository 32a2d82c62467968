"""Job kinds and their runners: the one place a new kind of work plugs into the service.

A runner is `runner(scene, run, options, progress) -> dict | None`:
  scene     the resolved scene folder or PLY (None for kinds that take none, e.g. complete)
  run       the resolved run folder (it may not exist yet; the runner creates what it writes)
  options   the job's JSON `options` object; the runner checks it and raises
            InstaSceneError with a clear message for a bad value
  progress  `progress(fraction, stage, message="")` records how far the job is; it raises
            `Cancelled` when the job was cancelled, so runners cancel cooperatively
            simply by calling it between steps and writing every file atomically
The returned dict (small, JSON-ready) becomes the job's `result`. Runners may log with
`logging.getLogger("instascene...")`; those lines go to the job's log.

Runners are named as "module:function" strings and imported only when a job runs, so
registering one costs nothing at start-up. The segmentation issue adds one line to
RUNNERS:   "segment": "instascene.segment.job:run",
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, Protocol


class Cancelled(Exception):
    """Raised by `progress` inside a runner once its job has been cancelled."""


class Progress(Protocol):
    def __call__(self, fraction: float, stage: str, message: str = "") -> None: ...


Runner = Callable[[Path | None, Path, dict, Progress], "dict[str, Any] | None"]

# Every kind the service contract names. The request schema accepts exactly these.
KINDS = ("validate", "render", "segment", "complete", "run")

# Kinds whose work exists in this version.
RUNNERS: dict[str, Runner | str] = {
    "validate": "instascene.service.runners:validate",
    "render": "instascene.service.runners:render",
    "segment": "instascene.segment.job:run",
    "complete": "instascene.complete.job:run",
    "run": "instascene.complete.job:segment_and_complete",
}

# What a client is told (501) for a contract kind that has no runner yet.
NOT_AVAILABLE: dict[str, str] = {}

# Kinds that work on an existing run folder alone; every other kind needs a scene.
SCENE_OPTIONAL = frozenset({"complete"})


def register(kind: str, runner: Runner | str) -> None:
    """Register (or replace) the runner of `kind`, e.g. from a plug-in or a test."""
    if kind not in KINDS:
        raise ValueError(f"unknown job kind {kind!r}; the contract's kinds are {', '.join(KINDS)}")
    RUNNERS[kind] = runner


def available() -> list[str]:
    """The kinds a client can submit now, in contract order."""
    return [k for k in KINDS if k in RUNNERS]


def unavailable_message(kind: str) -> str | None:
    """Why `kind` cannot run here, or None when it can."""
    if kind in RUNNERS:
        return None
    return NOT_AVAILABLE.get(kind, f"job kind {kind!r} is not available in this version")


def get_runner(kind: str) -> Runner:
    """The callable for `kind`, importing it on first use."""
    runner = RUNNERS[kind]
    if isinstance(runner, str):
        module, _, name = runner.partition(":")
        runner = getattr(importlib.import_module(module), name)
        RUNNERS[kind] = runner
    return runner


def check_options(kind: str, options: dict) -> None:
    """Raise InstaSceneError (options.OptionError naming the option) when a job of `kind`
    could not run with `options`: checked before the job is queued, so a mistake is an
    answer, not a failed job."""
    from ..options import split
    from .runners import check_render_options, check_validate_options

    if kind in ("segment", "complete", "run"):
        split(kind, options)
    elif kind == "render":
        check_render_options(options)
    elif kind == "validate":
        check_validate_options(options)
