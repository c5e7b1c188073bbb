"""``hub audit`` as an operator runs it: table, --json, --since, errors, and --follow in a real
process while the log is appended to and rotated (copytruncate) underneath it."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hubcli.app import app
from hubcontrol.auditlog import AuditLog

CID = "abc123" + "0" * 58


def rec(ts: str, action: str, **attrs) -> dict:
    return {
        "ts": ts,
        "user": "alice",
        "net_id": 32768,
        "type": "container",
        "action": action,
        "resource": CID,
        "attrs": {"image": "hello-world:latest", "name": "happy_pike", **attrs},
    }


RECORDS = [
    rec("2026-04-16T05:53:12Z", "start"),
    rec("2026-04-16T05:53:13Z", "kill", signal="9"),
    rec("2026-04-16T05:53:14Z", "die", exitCode="137"),
    rec("2026-04-16T06:10:00Z", "stop", origin="hub"),
]


@pytest.fixture
def audit_dir(tmp_path: Path) -> Path:
    AuditLog(tmp_path).append("alice", RECORDS)
    return tmp_path


def hub(*args: str):
    return CliRunner().invoke(app, ["audit", *args], catch_exceptions=False)


@pytest.fixture
def wide_console(monkeypatch):
    """A terminal wide enough that the table's cells are not folded (CliRunner has none)."""
    from hubcli.output import console

    monkeypatch.setattr(console, "_width", 200)


def test_table_shows_every_record_with_its_details(audit_dir, wide_console):
    result = hub("alice", "--audit-dir", str(audit_dir))
    assert result.exit_code == 0, result.output
    out = result.output
    for text in ("2026-04-16T05:53:12Z", "abc123000000", "happy_pike", "hello-world:latest"):
        assert text in out
    assert "signal=9" in out and "exitCode=137" in out and "by hub" in out
    assert CID not in out  # ids are shortened as docker ps does


def test_json_lines_are_the_log_lines(audit_dir):
    result = hub("alice", "--json", "--audit-dir", str(audit_dir))
    assert result.exit_code == 0
    assert result.output.encode() == (audit_dir / "alice.log").read_bytes()


@pytest.mark.parametrize(
    ("since", "count"),
    [("2026-04-16T05:53:13Z", 3), ("2026-04-16T06:00:00", 1), ("2026-04-17", 0), ("1h", 0)],
)
def test_since_filters_by_record_time(audit_dir, since, count):
    result = hub("alice", "--json", "--since", since, "--audit-dir", str(audit_dir))
    assert result.exit_code == 0
    assert len(result.output.splitlines()) == count


def test_recent_records_match_a_duration(tmp_path):
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    AuditLog(tmp_path).append("alice", [*RECORDS, rec(now, "destroy")])
    result = hub("alice", "--json", "--since", "10m", "--audit-dir", str(tmp_path))
    assert [json.loads(line)["action"] for line in result.output.splitlines()] == ["destroy"]


def test_missing_log_names_the_path_and_exits_1(tmp_path):
    result = hub("bob", "--audit-dir", str(tmp_path))
    assert result.exit_code == 1
    assert str(tmp_path / "bob.log") in result.output


def test_bad_since_exits_2_and_names_the_forms(audit_dir):
    result = hub("alice", "--since", "yesterday", "--audit-dir", str(audit_dir))
    assert result.exit_code == 2
    assert "30m, 1h" in result.output


def test_unsafe_user_names_map_to_their_safe_file(tmp_path):
    result = hub("../../etc/passwd", "--audit-dir", str(tmp_path))
    assert result.exit_code == 1
    assert "etc/passwd.log" not in result.output
    assert str(tmp_path) in result.output


def test_a_user_name_with_no_safe_form_exits_2(tmp_path):
    result = hub("..", "--audit-dir", str(tmp_path))
    assert result.exit_code == 2


def ctrl_c_reaches_it() -> None:
    """A ``preexec_fn``: the child takes SIGINT as a terminal's Ctrl-C, even when the suite runs
    as a shell's background job (which starts with SIGINT ignored, and Python then installs no
    KeyboardInterrupt for it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Lines:
    """Whole lines from a child's stdout as they come (os.read: no hidden buffering)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.buf = b""

    def take(self, n: int, timeout: float = 10) -> list[dict]:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while self.buf.count(b"\n") < n:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    got = self.buf.count(b"\n")
                    pytest.fail(f"hub audit --follow printed {got} of {n} lines")
                chunk = os.read(fd, 65536)
                if not chunk:
                    pytest.fail(f"hub audit --follow exited: {self.proc.stderr.read()!r}")
                self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n", n)
        return [json.loads(line) for line in lines]


def test_follow_keeps_printing_across_copytruncate(tmp_path):
    log = AuditLog(tmp_path)
    path = tmp_path / "alice.log"
    log.append("alice", RECORDS[:1])
    proc = subprocess.Popen(
        [sys.executable, "-c", "from hubcli.app import main; main()", "audit", "alice",
         "--follow", "--json", "--audit-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=ctrl_c_reaches_it,
    )  # fmt: skip
    out = Lines(proc)
    try:
        assert [r["action"] for r in out.take(1)] == ["start"]
        log.append("alice", RECORDS[1:2])
        assert [r["action"] for r in out.take(1)] == ["kill"]
        shutil.copyfile(path, tmp_path / "alice.log.1")  # logrotate copytruncate
        os.truncate(path, 0)
        # at once: the file grows past the follower's old offset before it looks again
        log.append("alice", RECORDS[2:])
        assert [r["action"] for r in out.take(2)] == ["die", "stop"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        finally:
            proc.stdout.close()
            proc.stderr.close()
    assert proc.returncode == 0


# What a user can put into their own records: the command of a `docker exec`, a container name.
HOSTILE_COMMAND = (
    "sh -c true \x1b[2J\x1b[H\x1b]0;owned\x07\nFAKE root login\x9b31m\u202etxt.exe\u2028x"
)
HOSTILE_NAME = "[bold red]fake[/]\x1b[8m"
DISPLAY_CONTROLS = ("\x1b", "\x07", "\x9b", "\u202e", "\u2028")


@pytest.fixture
def hostile_log(tmp_path: Path) -> Path:
    AuditLog(tmp_path).append(
        "alice",
        [rec("2026-04-16T05:53:12Z", "exec_start", command=HOSTILE_COMMAND, name=HOSTILE_NAME)],
    )
    return tmp_path


def test_control_characters_in_records_print_as_visible_escapes(hostile_log, monkeypatch):
    from hubcli.output import console

    monkeypatch.setattr(console, "_width", 400)  # every cell on one line
    result = hub("alice", "--audit-dir", str(hostile_log))
    assert result.exit_code == 0, result.output
    out = result.output
    assert not any(c in out for c in DISPLAY_CONTROLS), repr(out)
    (line,) = [line for line in out.splitlines() if "FAKE root login" in line]
    assert "2026-04-16T05:53:12Z" in line  # in the record's own row, not a line of its own
    for shown in ("\\x1b[2J\\x1b[H", "\\x1b]0;owned\\x07", "\\nFAKE root login", "\\x9b31m",
                  "\\u202etxt.exe", "\\u2028x"):  # fmt: skip
        assert shown in out, shown
    assert "[bold red]fake[/]\\x1b[8m" in out  # markup shown as typed, not applied


def test_follow_prints_the_same_escapes(hostile_log):
    proc = subprocess.Popen(
        [sys.executable, "-c", "from hubcli.app import main; main()", "audit", "alice",
         "--follow", "--audit-dir", str(hostile_log)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "400"},
        preexec_fn=ctrl_c_reaches_it,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        out = b""
        while b"exec_start" not in out or not out.endswith(b"\n"):
            assert time.monotonic() < deadline, out
            out += os.read(proc.stdout.fileno(), 65536)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()
    text = out.decode()
    assert not any(c in text for c in DISPLAY_CONTROLS), repr(text)
    assert "\\x1b[2J" in text and text.count("\n") == 1


def test_json_output_is_exact_and_inert(hostile_log):
    result = hub("alice", "--json", "--audit-dir", str(hostile_log))
    assert result.exit_code == 0
    assert not any(c in result.output for c in DISPLAY_CONTROLS)
    (record,) = [json.loads(line) for line in result.output.splitlines()]
    assert record["attrs"]["command"] == HOSTILE_COMMAND  # exact, once parsed
    assert result.output.encode() == (hostile_log / "alice.log").read_bytes()  # as in the log
