"""Progress a person can read in a log, not only on a terminal."""

import io

from instascene.progress import LogBar, bar, format_duration, time_left


def test_a_log_gets_lines_with_counts_and_time_left(monkeypatch):
    clock = iter([0.0, 5.0, 12.0, 20.0, 25.0, 40.0])
    monkeypatch.setattr("instascene.progress.time.monotonic", lambda: next(clock))
    out = io.StringIO()
    b = LogBar(8, "segment: features", "step", every=10.0, stream=out)
    b.update(1)  # t = 5: too soon for a line
    b.update(1)  # t = 12: 2 of 8 in 12 s -> 36 s left
    b.update(2)  # t = 20: 8 s after the last line, none
    b.n = 6  # Stages sets n directly
    b.refresh()  # t = 25: 6 of 8 in 25 s
    b.close()  # t = 40
    assert out.getvalue().splitlines() == [
        "segment: features: 2/8 (25 %), 12 s so far, about 36 s left",
        "segment: features: 6/8 (75 %), 25 s so far, about 8 s left",
        "segment: features: 6/8 done in 40 s",
    ]


def test_time_left_and_durations_read_as_people_say_them():
    assert time_left(30.0, 0.25) == 90.0
    assert time_left(1.0, 0.01) is None  # too early to tell
    assert [format_duration(s) for s in (4.4, 59.6, 200, 3725)] == ["4 s", "1 min 00 s", "3 min 20 s", "1 h 02 min"]


def test_bar_writes_lines_where_no_terminal_is_attached():
    assert isinstance(bar(10, "x"), LogBar)  # pytest captures stderr: not a terminal
    assert not isinstance(bar(10, "x", quiet=True), LogBar)
