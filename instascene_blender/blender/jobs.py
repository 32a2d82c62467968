"""Backend work off the main thread: worker threads + a queue drained on the main thread.

Workers (io/service.py) only put plain dicts on `MANAGER.queue`. `drain()` applies
them to the window-manager state (`wm.instascene`) on the main thread; a
`bpy.app.timers` callback calls it while work is under way. Timers never fire in
background mode, so tests join the workers and call `drain()` themselves.
"""

from __future__ import annotations

import json
import os
import queue
import threading

import bpy

from ..io.service import FINAL_STATES, unavailable_kinds

POLL_INTERVAL = 0.25


class Manager:
    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self.threads: list[threading.Thread] = []
        self.stop = threading.Event()
        self.process = None  # the backend we started, if any

    def start(self, target, *args) -> threading.Thread:
        self.threads = [t for t in self.threads if t.is_alive()]
        t = threading.Thread(target=target, args=args, daemon=True, name="instascene-worker")
        self.threads.append(t)
        t.start()
        ensure_timer()
        return t

    def busy(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def join(self, timeout: float = 10.0) -> None:
        for t in list(self.threads):
            t.join(timeout)

    def shutdown(self) -> None:
        """Stop the workers (they poll `stop`); leave a started backend to `stop_backend`."""
        self.stop.set()
        self.join(2.0)
        self.threads.clear()
        self.stop = threading.Event()


MANAGER = Manager()


def state(context=None):
    wm = (context or bpy.context).window_manager
    return getattr(wm, "instascene", None) if wm is not None else None


def _status_bar(text: str | None) -> None:
    if bpy.app.background:
        return
    try:
        for window in bpy.context.window_manager.windows:
            window.workspace.status_text_set(text)
    except Exception:  # noqa: BLE001 - the status bar is a nicety
        pass


def _redraw() -> None:
    wm = bpy.context.window_manager
    for window in getattr(wm, "windows", []):
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()


def progress_text(st) -> str:
    """'segment features 45%, about 1 min 20 s left': the stage, how far, and the backend's
    estimate of the time left once it has one."""
    text = f"{st.stage} {100 * st.progress:.0f}%".strip()
    if st.seconds_left >= 0 and st.job_state == "running":
        s = int(round(st.seconds_left))
        left = f"{s} s" if s < 60 else f"{s // 60} min {s % 60:02d} s" if s < 3600 else f"{s // 3600} h {s % 3600 // 60:02d} min"
        text += f", about {left} left"
    return text


def apply_message(msg: dict, context=None) -> None:
    """Apply one worker message to the UI state (main thread only)."""
    st = state(context)
    if st is None:
        return
    kind = msg.get("type")
    if kind == "connection":
        st.connection = {"connected": "CONNECTED", "offline": "OFFLINE"}.get(msg.get("state"), "ERROR")
        st.connection_message = str(msg.get("message", ""))[:1000]
        if "capabilities" in msg:
            st.unavailable = json.dumps(unavailable_kinds(msg["capabilities"]))
        if st.connection != "CONNECTED":
            st.last_error = st.connection_message
    elif kind == "submitted":
        st.job_id, st.job_kind = str(msg["id"]), str(msg.get("kind", ""))
        st.job_state, st.progress, st.stage, st.message = "queued", 0.0, "", ""
        st.seconds_left, st.last_error = -1.0, ""
        _status_bar(f"InstaScene: {st.job_kind} queued")
    elif kind == "job":
        if msg.get("id") and st.job_id and msg["id"] != st.job_id:
            return  # a late message from an earlier job
        st.job_state = msg.get("state", "")
        st.progress = float(msg.get("progress", 0.0))
        st.stage, st.message = str(msg.get("stage", ""))[:200], str(msg.get("message", ""))[:1000]
        st.seconds_left = float(msg.get("seconds_left", -1.0))
        if msg.get("run"):
            st.last_run = str(msg["run"])
        if st.job_state in FINAL_STATES:
            _status_bar(None)
            if st.job_state == "failed":
                st.last_error = st.message or "the job failed"
            elif st.job_state == "done":
                _after_done(st, context)
        else:
            _status_bar(f"InstaScene: {st.job_kind} {progress_text(st)}")
    elif kind == "cancel":
        st.message = str(msg.get("message", ""))
        if msg.get("failed"):
            st.last_error = st.message
    elif kind == "error":
        st.last_error = str(msg.get("message", ""))[:1000]
        if st.job_state in ("submitting", "queued", "running"):
            st.job_state = "failed"
        _status_bar(None)
        print(f"InstaScene: {st.last_error}")
    _redraw()


def unavailable(context=None) -> dict:
    """{kind: reason} the connected backend cannot run (empty until connected)."""
    st = state(context)
    try:
        return json.loads(st.unavailable) if st is not None else {}
    except (TypeError, ValueError):
        return {}


def _after_done(st, context) -> None:
    from ..preferences import get_prefs

    prefs = get_prefs(context)
    run = st.last_run
    if not getattr(prefs, "auto_materialize", True) or st.job_kind not in ("segment", "complete", "run"):
        return
    if not run or not os.path.isfile(os.path.join(run, "instances.json")):
        return
    from .materialize import materialize

    ctx = context or bpy.context
    try:
        materialize(run, ctx.scene, point_threshold=getattr(prefs, "point_threshold", 200_000))
        st.message = f"materialized {os.path.basename(run)}"
    except Exception as e:  # noqa: BLE001 - report in the panel, never kill the timer
        st.last_error = f"materialize failed: {e}"


def drain(context=None, limit: int = 1000) -> int:
    """Apply every queued message (at most `limit`); returns how many were applied."""
    n = 0
    while n < limit:
        try:
            msg = MANAGER.queue.get_nowait()
        except queue.Empty:
            break
        apply_message(msg, context)
        n += 1
    return n


def _timer():
    drain()
    if MANAGER.busy() or not MANAGER.queue.empty():
        return POLL_INTERVAL
    return None  # unregister itself; `ensure_timer` brings it back


def ensure_timer() -> None:
    if not bpy.app.timers.is_registered(_timer):
        bpy.app.timers.register(_timer, first_interval=POLL_INTERVAL, persistent=True)


def unregister_timer() -> None:
    if bpy.app.timers.is_registered(_timer):
        bpy.app.timers.unregister(_timer)
