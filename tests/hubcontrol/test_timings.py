"""Where a start's time goes (hubcontrol.timings): the pure breakdown of step and part marks."""

from __future__ import annotations

import pytest

from hubcontrol import timings
from hubcontrol.timings import Laps, breakdown


def steps(record: dict) -> list[tuple]:
    return [(s["step"], s["seconds"], s["parts"], s["rest"]) for s in record["steps"]]


@pytest.mark.parametrize(
    ("marks", "end", "extra", "want"),
    [
        # no marks at all: nothing but the total
        ([], 1.0, None, [("queued", 1.0, {}, 1.0)]),
        # two steps, the first starting at once
        ([("storage", None, 0.0), ("daemon", None, 0.25)], 1.0, None,
         [("storage", 0.25, {}, 0.25), ("daemon", 0.75, {}, 0.75)]),
        # waiting for the lock before the first step is "queued"
        ([("storage", None, 0.5)], 1.0, None, [("queued", 0.5, {}, 0.5), ("storage", 0.5, {}, 0.5)]),
        # parts last to the next mark of any kind; the time before the first part is the rest
        ([("daemon", None, 0.0), ("daemon", "dockerd", 0.1), ("daemon", "policy socket", 0.6),
          ("network", None, 0.7)], 1.0, None,
         [("daemon", 0.7, {"dockerd": 0.5, "policy socket": 0.1}, 0.1), ("network", 0.3, {}, 0.3)]),
        # a step marked again in a row (a new progress message) counts once
        ([("container", None, 0.0), ("container", None, 0.2)], 1.0, None,
         [("container", 1.0, {}, 1.0)]),
        # a step entered again later is a second entry
        ([("container", None, 0.0), ("restore", None, 0.2), ("container", None, 0.9)], 1.0, None,
         [("container", 0.2, {}, 0.2), ("restore", 0.7, {}, 0.7), ("container", 0.1, {}, 0.1)]),
        # parts measured elsewhere (the checkpointer's restore phases) go to their step
        ([("restore", None, 0.0), ("ready", None, 0.8)], 1.0, {"restore": {"criu": 0.5, "verify": 0.1}},
         [("restore", 0.8, {"criu": 0.5, "verify": 0.1}, 0.2), ("ready", 0.2, {}, 0.2)]),
    ],
)  # fmt: skip
def test_breakdown(marks, end, extra, want):
    record = breakdown(marks, 0.0, end, extra)
    assert record["seconds"] == end
    assert steps(record) == [(n, pytest.approx(s), pytest.approx(p), pytest.approx(r))
                             for n, s, p, r in want]  # fmt: skip


def test_laps_with_a_clock_and_the_log_line():
    now = iter([10.0, 10.0, 10.1, 10.5, 10.6, 11.0])
    laps = Laps(clock=lambda: next(now))
    laps.step("daemon")
    laps.part("dockerd")
    laps.part("policy socket")
    laps.step("ready")
    record = laps.finish(outcome="restored")
    assert record["outcome"] == "restored" and record["seconds"] == 1.0
    assert steps(record) == [
        ("daemon", pytest.approx(0.6), {"dockerd": pytest.approx(0.4), "policy socket": pytest.approx(0.1)},
         pytest.approx(0.1)),
        ("ready", pytest.approx(0.4), {}, pytest.approx(0.4)),
    ]  # fmt: skip
    assert timings.describe(record) == (
        "1.000 s: daemon 0.600 (dockerd 0.400, policy socket 0.100), ready 0.400"
    )
