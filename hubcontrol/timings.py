"""Where a start's time goes: monotonic marks of its named steps and their parts.

A start (``Hub._ensure_running``) is a list of named steps, each also shown on the progress page
(storage, daemon, network, image, container, restore, ready). ``Laps`` takes a monotonic mark at
each step and at named parts inside a step (the daemon step's "dockerd", its "policy socket"
...), and ``breakdown`` turns the marks into seconds. The Hub keeps the result of each start in
the user's record (``last_start``) and logs it in one line, so ``bench/resume.py`` and an operator
read the same numbers (docs/performance.md, "Resume of a checkpointed user").

A step lasts from its mark to the next step's mark (or the end); a part from its mark to the next
mark of any kind. Time in a step before its first part, or not covered by parts measured
elsewhere (``add_parts``: the checkpointer's restore phases), is the step's ``rest``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

QUEUED = "queued"  # before the first step: waiting for the user's lock (another start, a stop)


def breakdown(
    marks: Iterable[tuple[str, str | None, float]],
    start: float,
    end: float,
    extra: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """``{"seconds", "steps": [{"step", "seconds", "parts": {name: s}, "rest"}]}`` of ``marks``.

    ``marks`` are ``(step, part or None, time)`` in time order, all between ``start`` and
    ``end``; ``extra`` adds parts measured elsewhere to a step (by step name). A step marked
    twice in a row (a progress message changed within it) counts once; a step entered again later
    (``container`` before and after a restore) is a second entry, in order.
    """
    steps: list[dict[str, Any]] = []
    marks = list(marks)
    first = marks[0][2] if marks else end
    if first - start >= 0.0005:
        steps.append({"step": QUEUED, "seconds": first - start, "parts": {}})
    for i, (step, part, at) in enumerate(marks):
        nxt = marks[i + 1][2] if i + 1 < len(marks) else end
        if part is None:
            if steps and steps[-1]["step"] == step and steps[-1].get("_open"):
                continue
            if steps:
                steps[-1].pop("_open", None)
            steps.append({"step": step, "seconds": 0.0, "parts": {}, "_open": True, "_at": at})
        else:
            if not steps or steps[-1]["step"] != step:
                steps.append({"step": step, "seconds": 0.0, "parts": {}, "_open": True, "_at": at})
            parts = steps[-1]["parts"]
            parts[part] = parts.get(part, 0.0) + (nxt - at)
    # a step's seconds: from its first mark to the next step's first mark
    opened = [s for s in steps if "_at" in s]
    for i, s in enumerate(opened):
        s["seconds"] = (opened[i + 1]["_at"] if i + 1 < len(opened) else end) - s["_at"]
    for s in steps:
        s.pop("_open", None)
        s.pop("_at", None)
        for name, seconds in (extra or {}).get(s["step"], {}).items():
            s["parts"][name] = s["parts"].get(name, 0.0) + seconds
        s["rest"] = max(0.0, s["seconds"] - sum(s["parts"].values()))
    return {"seconds": round(end - start, 4), "steps": [_rounded(s) for s in steps]}


def _rounded(step: dict[str, Any]) -> dict[str, Any]:
    return {
        "step": step["step"],
        "seconds": round(step["seconds"], 4),
        "parts": {k: round(v, 4) for k, v in step["parts"].items()},
        "rest": round(step["rest"], 4),
    }


def describe(record: Mapping[str, Any]) -> str:
    """One log line of a breakdown: ``1.02 s: daemon 0.45 (dockerd 0.40, ...), ready 0.10``."""
    out = []
    for s in record.get("steps", []):
        text = f"{s['step']} {s['seconds']:.3f}"
        parts = [f"{k} {v:.3f}" for k, v in s.get("parts", {}).items()]
        if parts:
            text += f" ({', '.join(parts)})"
        out.append(text)
    return f"{record.get('seconds', 0):.3f} s: " + ", ".join(out)


class Laps:
    """The marks of one start (see the module docstring). Not thread-safe: one start's task."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.start = clock()
        self._marks: list[tuple[str, str | None, float]] = []
        self._extra: dict[str, dict[str, float]] = {}

    @property
    def current(self) -> str | None:
        return self._marks[-1][0] if self._marks else None

    def step(self, name: str) -> None:
        self._marks.append((name, None, self._clock()))

    def part(self, name: str) -> None:
        """A named part of the current step starts now (it ends at the next mark)."""
        self._marks.append((self.current or QUEUED, name, self._clock()))

    def add_parts(self, parts: Iterable[tuple[str, float]]) -> None:
        """Parts of the current step measured elsewhere (seconds each)."""
        extra = self._extra.setdefault(self.current or QUEUED, {})
        for name, seconds in parts:
            extra[name] = extra.get(name, 0.0) + seconds

    def finish(self, **fields: Any) -> dict[str, Any]:
        """The breakdown up to now, with ``fields`` (outcome, when) added."""
        return {**fields, **breakdown(self._marks, self.start, self._clock(), self._extra)}
