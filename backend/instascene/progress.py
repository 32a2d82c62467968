"""Progress a person can read: a bar on a terminal, timed lines in a log.

tqdm draws nothing when its stream is not a terminal (a log file, `nohup`, the
service's worker), so a stage of several minutes was silent there. `bar()` gives a tqdm
bar on a terminal and, elsewhere, an object with the same `update`/`n`/`refresh`/
`close` that writes a line at most every `every` seconds:

    segment: features 500/1000 (50 %), 31 s so far, about 31 s left

Time left is the elapsed time scaled by the work still to do — the figure a user
weighs "wait or come back later" on; it is not shown before 2 % of the work is done.
"""

from __future__ import annotations

import sys
import time


def time_left(elapsed: float, fraction: float) -> float | None:
    """Seconds still to go at `fraction` done after `elapsed` seconds; None before 2 %."""
    if not 0.02 <= fraction <= 1.0:
        return None
    return elapsed * (1.0 - fraction) / fraction


def format_duration(seconds: float) -> str:
    """'45 s', '3 min 20 s', '1 h 05 min'."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


class LogBar:
    """A tqdm stand-in for streams that are not terminals: one line every `every` seconds
    and one at the end."""

    def __init__(self, total: int | None, desc: str, unit: str = "it", every: float = 10.0, stream=None):
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.stream = stream if stream is not None else sys.stderr
        self.n = 0
        self._t0 = self._last = time.monotonic()

    def update(self, k: int = 1) -> None:
        self.n += k
        self.refresh()

    def refresh(self) -> None:
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self._write(self.line(now - self._t0))

    def line(self, elapsed: float) -> str:
        if not self.total:
            return f"{self.desc}: {self.n} {self.unit}, {format_duration(elapsed)} so far"
        frac = min(self.n / self.total, 1.0)
        left = time_left(elapsed, frac)
        tail = f", about {format_duration(left)} left" if left is not None and frac < 1.0 else ""
        return (f"{self.desc}: {self.n}/{self.total} ({100 * frac:.0f} %), "
                f"{format_duration(elapsed)} so far{tail}")

    def close(self) -> None:
        if self.n:
            done = f"{self.n}/{self.total}" if self.total else f"{self.n} {self.unit}"
            self._write(f"{self.desc}: {done} done in {format_duration(time.monotonic() - self._t0)}")

    def _write(self, text: str) -> None:
        try:
            print(text, file=self.stream, flush=True)
        except (OSError, ValueError):  # a closed or broken log stream must not fail the work
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def bar(total: int | None, desc: str, unit: str = "it", quiet: bool = False):
    """A tqdm bar on a terminal (cleared when done), a `LogBar` elsewhere, a silent tqdm when `quiet`."""
    from tqdm import tqdm

    if quiet:
        return tqdm(total=total, disable=True)
    stream = sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(total=total, desc=desc, unit=unit, leave=False)
    return LogBar(total, desc, unit)
