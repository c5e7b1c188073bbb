"""What one user can make the hub write into their audit log: every string capped, each user's
activity spending a byte budget, what is over it counted in ``dropped`` records, and the hub's
own records and the trail's notes written whatever the user did (hubcontrol.auditlog)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hubcontrol.auditlog import (
    BUDGET_BURST,
    BUDGET_RATE,
    FIELD_LIMIT,
    AuditBudget,
    AuditLog,
    cap_record,
    exempt_from_budget,
    truncate,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def exec_record(i: int, command: str = "true", **attrs) -> dict:
    return {
        "ts": f"2026-04-16T05:53:{i % 60:02d}Z",
        "user": "alice",
        "net_id": 32768,
        "type": "container",
        "action": "exec_start",
        "resource": "c" * 64,
        "attrs": {
            "image": "img",
            "name": "env",
            "command": command,
            "execID": f"{i:064x}",
            **attrs,
        },
    }


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


@pytest.mark.parametrize(
    ("value", "limit", "want"),
    [
        ("short", 10, "short"),
        ("x" * 10, 10, "x" * 10),
        ("x" * 11, 10, "x" * 10 + "...[1 more characters cut by the hub]"),
        (
            "y" * 900_000,
            FIELD_LIMIT,
            "y" * FIELD_LIMIT + "...[895904 more characters cut by the hub]",
        ),
    ],
)
def test_truncate_says_how_much_was_cut(value, limit, want):
    assert truncate(value, limit) == want


def test_every_string_of_a_record_is_capped():
    huge = "z" * (FIELD_LIMIT + 5)
    capped = cap_record({**exec_record(0, huge), "resource": huge})
    assert capped["attrs"]["command"].endswith("...[5 more characters cut by the hub]")
    assert capped["resource"].startswith("z" * FIELD_LIMIT) and capped["net_id"] == 32768
    assert capped["attrs"]["name"] == "env"


@pytest.mark.parametrize(
    ("record", "exempt"),
    [
        (exec_record(0), False),
        (exec_record(0, origin="hub"), True),  # the hub's own hooks
        ({"type": "audit", "action": "gap", "attrs": {}}, True),
        ({"type": "policy", "action": "refused", "attrs": {"reason": "x"}}, False),
    ],
)
def test_what_spends_the_budget(record, exempt):
    assert exempt_from_budget(record) is exempt


def test_the_default_budget_bounds_a_day():
    assert BUDGET_BURST + BUDGET_RATE * 86400 < 200 * 2**20  # under 200 MB a day per writer


def test_a_flood_is_cut_counted_and_reported(tmp_path):
    clock = Clock()
    log = AuditLog(tmp_path, AuditBudget(rate=100, burst=5000, report_seconds=60, clock=clock))
    path = tmp_path / "alice.log"
    # 200 execs with 900 KB command lines, in no time: the first few fit, the rest are counted
    for i in range(200):
        log.append("alice", [exec_record(i, "x" * 900_000)])
    got = lines(path)
    written = [r for r in got if r["action"] == "exec_start"]
    assert 0 < len(written) <= 2  # 5000 bytes of burst, ~4.3 KB per capped record
    assert all(len(r["attrs"]["command"]) < FIELD_LIMIT + 60 for r in written)
    (dropped,) = [r for r in got if r["action"] == "dropped"]
    assert dropped["type"] == "audit" and dropped["user"] == "alice" and dropped["net_id"] == 32768
    assert dropped["attrs"]["events"] == "1"  # said at the first drop
    assert path.stat().st_size < 5000 + 1000
    # later: the rest of the flood in one report, and records fit again as the bucket refills
    clock.now += 61
    log.append("alice", [exec_record(500, "ls")])
    got = lines(path)
    reports = [r for r in got if r["action"] == "dropped"]
    assert len(reports) == 2
    assert int(reports[0]["attrs"]["events"]) + int(reports[1]["attrs"]["events"]) == 200 - len(
        written
    )
    assert reports[1]["attrs"]["actions"] == f"container/exec_start={200 - len(written) - 1}"
    assert got[-2]["attrs"]["command"] == "ls" or got[-1]["attrs"]["command"] == "ls"


def test_reports_come_at_most_once_per_interval_and_at_flush(tmp_path):
    clock = Clock()
    log = AuditLog(tmp_path, AuditBudget(rate=0, burst=0, report_seconds=60, clock=clock))
    for i in range(1000):
        clock.now += 0.01  # 10 s of a flood
        log.append("alice", [exec_record(i)])
    assert [r["attrs"]["events"] for r in lines(tmp_path / "alice.log")] == ["1"]
    log.flush("alice")
    assert [r["attrs"]["events"] for r in lines(tmp_path / "alice.log")] == ["1", "999"]
    log.flush("alice")  # nothing new: no empty report
    assert len(lines(tmp_path / "alice.log")) == 2


def test_the_hubs_records_and_gaps_are_written_past_an_exhausted_budget(tmp_path):
    log = AuditLog(tmp_path, AuditBudget(rate=0, burst=0, clock=Clock()))
    gap = {"ts": "t", "user": "alice", "net_id": 1, "type": "audit", "action": "gap",
           "resource": "", "attrs": {}}  # fmt: skip
    log.append("alice", [exec_record(0), exec_record(1, origin="hub"), gap])
    assert [r["action"] for r in lines(tmp_path / "alice.log")] == ["exec_start", "gap", "dropped"]
    assert lines(tmp_path / "alice.log")[0]["attrs"]["origin"] == "hub"


def test_users_have_budgets_of_their_own(tmp_path):
    log = AuditLog(tmp_path, AuditBudget(rate=0, burst=2000, clock=Clock()))
    for i in range(50):
        log.append("mallory", [exec_record(i, "x" * 1000)])
    log.append("alice", [exec_record(0)])
    assert [r["action"] for r in lines(tmp_path / "alice.log")] == ["exec_start"]


def test_a_report_that_could_not_be_written_is_counted_again(tmp_path):
    log = AuditLog(tmp_path / "log", AuditBudget(rate=0, burst=0, clock=Clock()))
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "alice.log").mkdir()  # opening it for writing fails
    with pytest.raises(OSError):
        log.append("alice", [exec_record(0)])
    (tmp_path / "log" / "alice.log").rmdir()
    log.append("alice", [exec_record(1)])
    log.flush("alice")
    reports = lines(tmp_path / "log" / "alice.log")
    assert sum(int(r["attrs"]["events"]) for r in reports) == 2


def test_a_flood_that_stopped_is_reported_when_due_without_more_records(tmp_path):
    clock = Clock()
    log = AuditLog(tmp_path, AuditBudget(rate=0, burst=0, report_seconds=60, clock=clock))
    for i in range(10):
        log.append("alice", [exec_record(i)])
    log.flush_all(force=False)  # the writers' periodic check: not due yet
    assert [r["attrs"]["events"] for r in lines(tmp_path / "alice.log")] == ["1"]
    clock.now += 60
    log.flush_all(force=False)
    assert [r["attrs"]["events"] for r in lines(tmp_path / "alice.log")] == ["1", "9"]
