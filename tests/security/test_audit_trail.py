"""The audit trail against a user who attacks it, through the real Hub (LocalSupervisor, a real
per-user dockerd, the real policy socket process) and the real docker CLI:

- a `docker exec` whose command carries terminal escapes is recorded exactly, shows as visible
  escapes in `hub audit`, and is the user's (no ``origin``), while the hub's own on_create hook
  exec in the same environment is marked ``origin: hub``;
- a loop of execs with 900 KB command lines writes a bounded amount: every command is capped,
  what is over the budget is counted in ``dropped`` records, nothing disappears uncounted, and
  a refusal right after the flood is still written;
- a loop of refused requests spends the policy socket's own budget the same way."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import docker
import pytest
from typer.testing import CliRunner

from hubcli.app import app
from hubcontrol.auditlog import (
    BUDGET_BURST,
    BUDGET_RATE,
    FIELD_LIMIT,
    AuditBudget,
    AuditLog,
    exempt_from_budget,
)
from hubcontrol.embed import embedded
from tests.security.policyhub import wait_for_socket
from tests.support.hubcore import host_test_image, make_config, unique_user

pytestmark = [pytest.mark.docker, pytest.mark.timeout(240)]

HOOK = "echo hooked > /tmp/hooked"
# clear the screen, home the cursor, print a fake line, retitle the terminal, reverse the text
ESCAPES = "\x1b[2J\x1b[H\nroot logged in from 10.0.0.1\x1b]0;owned\x07\u202e"
DISPLAY_CONTROLS = ("\x1b", "\x07", "\u202e")


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def wait_for(path: Path, done, what: str, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        records = read(path)
        if done(records):
            return records
        if time.monotonic() > deadline:
            pytest.fail(f"{what} never recorded; last: {records[-3:]}")
        time.sleep(0.1)


@contextlib.contextmanager
def hub_with_hook(tmp_path: Path):
    with host_test_image() as image:
        config = make_config(tmp_path, image, on_create=HOOK)
        user = unique_user("aud")
        try:
            with embedded(config, ready_timeout=20) as hub:
                env = hub.ensure_running(user)
                sock = hub.hub.daemon_spec(user).env_socket_path
                wait_for_socket(sock)
                yield hub, user, env, sock, AuditLog(config.audit_dir).path(user)
                hub.destroy(user, remove_data=True)
        finally:
            with contextlib.suppress(Exception), embedded(config) as hub:
                hub.destroy(user, remove_data=True)


def docker_cli(sock: Path, *args: str) -> subprocess.CompletedProcess:
    """The real docker CLI, talking to the user's policy socket as a shell in the environment."""
    with tempfile.TemporaryDirectory() as cli_config:
        env = dict(os.environ, DOCKER_HOST=f"unix://{sock}", DOCKER_CONFIG=cli_config)
        return subprocess.run(["docker", *args], env=env, capture_output=True, timeout=60)


def test_a_users_exec_is_theirs_and_shows_as_text_the_hooks_is_the_hubs(tmp_path, monkeypatch):
    with hub_with_hook(tmp_path) as (hub, user, env, sock, log):
        done = docker_cli(sock, "exec", env.container_id, "sh", "-c", "true", ESCAPES)
        assert done.returncode == 0, done.stderr
        records = wait_for(
            log,
            lambda rs: any(r["action"] == "exec_die" and "origin" not in r["attrs"] for r in rs),
            "the user's exec",
        )
        runner = CliRunner()
        from hubcli.output import console

        monkeypatch.setattr(console, "_width", 400)  # every cell on one line
        table = runner.invoke(app, ["audit", user, "--audit-dir", str(log.parent)])
        as_json = runner.invoke(app, ["audit", user, "--json", "--audit-dir", str(log.parent)])
        raw = log.read_bytes().decode()

    execs = [r for r in records if r["action"] in ("exec_start", "exec_die")]
    (hook,) = [r for r in execs if r["action"] == "exec_start" and HOOK in r["attrs"]["command"]]
    (mine,) = [r for r in execs if r["action"] == "exec_start" and ESCAPES in r["attrs"]["command"]]
    # attribution: by exec ID, the hook's start and end are the hub's, the user's are the user's
    assert hook["attrs"]["origin"] == "hub" and "origin" not in mine["attrs"]
    by_id = {r["attrs"]["execID"]: r for r in execs if r["action"] == "exec_die"}
    assert by_id[hook["attrs"]["execID"]]["attrs"]["origin"] == "hub"
    assert "origin" not in by_id[mine["attrs"]["execID"]]["attrs"]
    assert mine["resource"] == env.container_id  # in the environment the hub manages
    # the log holds the command exactly (as JSON escapes) and no raw control character
    assert not any(c in raw for c in DISPLAY_CONTROLS)
    # hub audit: visible escapes on the record's own row, not a cleared screen or a fake line
    assert table.exit_code == 0, table.output
    assert not any(c in table.output for c in DISPLAY_CONTROLS), repr(table.output)
    (row,) = [line for line in table.output.splitlines() if "root logged in" in line]
    assert "\\x1b[2J\\x1b[H\\nroot logged in from 10.0.0.1\\x1b]0;owned\\x07\\u202e" in row
    assert "exec_start" in row and "by hub" not in row
    assert as_json.exit_code == 0 and not any(c in as_json.output for c in DISPLAY_CONTROLS)
    logged = [json.loads(line) for line in as_json.output.splitlines()]
    assert f"sh -c true {ESCAPES}" in {r["attrs"].get("command") for r in logged}  # exact


def test_a_loop_of_huge_execs_writes_a_bounded_log_and_says_what_it_dropped(tmp_path):
    budget = AuditBudget(rate=512, burst=64 * 1024)  # the defaults' shape, small for a short test
    with hub_with_hook(tmp_path) as (hub, user, env, sock, log):
        hub.hub.audit.log.budget = budget
        before = log.stat().st_size if log.exists() else 0
        started = time.monotonic()
        client = docker.DockerClient(base_url=f"unix://{sock}", version="1.41", timeout=60)
        flood = []
        try:
            # the attack was 900 KB of arguments per exec; the policy now caps an exec's
            # command line at 128 KiB (dockerpolicy.MAX_ARGS_BYTES), and 20 execs just under
            # that still wrote 5 MB without the audit bounds
            for _ in range(20):
                exec_id = client.api.exec_create(env.container_id, ["true", "x" * 120_000])
                client.api.exec_start(exec_id["Id"])
                flood.append(exec_id["Id"])
        finally:
            client.close()

        def counted(records: list[dict]) -> int:
            written = sum(r["attrs"].get("execID") in flood for r in records)
            dropped = sum(
                int(n)
                for r in records
                if r["action"] == "dropped"
                for what, _, n in (item.rpartition("=") for item in r["attrs"]["actions"].split())
                if what in ("container/exec_start", "container/exec_die")
            )
            return written + dropped

        # the first drop is reported at once; the stream's end reports the rest
        wait_for(log, lambda rs: any(r["action"] == "dropped" for r in rs), "a dropped record")
        # the flood spent the hub's budget; a refusal right after it is still written
        refused = docker_cli(sock, "run", "--privileged", "after-the-flood", "true")
        assert refused.returncode != 0 and b"hub policy refused" in refused.stderr
        wait_for(
            log,
            lambda rs: any(r["type"] == "policy" and "privileged" in r["attrs"]["reason"]
                           for r in rs),
            "the refusal after the flood",
        )  # fmt: skip
        hub.stop(user)
        elapsed = time.monotonic() - started
        records = wait_for(log, lambda rs: counted(rs) >= 40, "every exec, written or counted")
        added = log.read_bytes()[before:].splitlines(keepends=True)

    assert counted(records) == 40, "an exec neither written nor counted, or one counted twice"
    written = [r for r in records if r["attrs"].get("execID") in flood]
    assert 0 < len(written) < 40
    assert all(len(r["attrs"].get("command", "")) < FIELD_LIMIT + 60 for r in written)
    commands = [r["attrs"]["command"] for r in written if r["action"] == "exec_start"]
    assert all(c.endswith("more characters cut by the hub]") for c in commands)
    # without the bounds the loop wrote 18 MB; now the user's records fit the burst and the
    # refill, and only the hub's own records (the stop) and the reports come on top
    spent = sum(len(line) for line in added if not exempt_from_budget(json.loads(line)))
    assert spent <= budget.burst + budget.rate * elapsed, (spent, elapsed)
    assert sum(map(len, added)) < spent + 16 * 1024
    dropped = [r for r in records if r["action"] == "dropped"]
    assert all(r["type"] == "audit" and r["user"] == user for r in dropped)


def refuse(sock: Path, path: str) -> bytes:
    """One refused request, raw over the user's socket (a flood loop would do this)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def test_a_flood_of_refusals_spends_the_policy_sockets_budget_and_is_counted(tmp_path):
    with hub_with_hook(tmp_path) as (hub, user, env, sock, log):
        flood = 1200
        started = time.monotonic()
        for i in range(flood):  # each record carries a 300-character path
            assert b" 403 " in refuse(sock, f"/v1.41/swarm/{i:06d}{'a' * 280}").split(b"\r\n")[0]
        wait_for(log, lambda rs: any(r["action"] == "dropped" for r in rs), "a dropped record")
        hub.stop(user)  # the policy socket exits and reports what it dropped since
        elapsed = time.monotonic() - started
        records = wait_for(
            log,
            lambda rs: sum(1 for r in rs if r["type"] == "policy") + dropped_refusals(rs) >= flood,
            "every refusal, written or counted",
        )
    written = [r for r in records if r["type"] == "policy"]
    assert len(written) + dropped_refusals(records) == flood
    assert len(written) < flood
    spent = sum(len(json.dumps(r, separators=(",", ":"))) + 1 for r in written)
    assert spent <= BUDGET_BURST + BUDGET_RATE * elapsed, (spent, elapsed)


def dropped_refusals(records: list[dict]) -> int:
    return sum(
        int(item.rpartition("=")[2])
        for r in records
        if r["action"] == "dropped"
        for item in r["attrs"]["actions"].split()
        if item.startswith("policy/refused=")
    )
