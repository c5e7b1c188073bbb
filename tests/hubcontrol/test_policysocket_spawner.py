"""Policy sockets forked from one process that imported them once (hubcontrol/policysocket/spawner.py),
started the way the hub starts them (``policysockets.start``), against a small fake dockerd on a
unix socket. What an operator would notice: the process looks and behaves exactly like an
executed one (its command line, its session, its log, its signals), it shares the interpreter's
memory with the spawner instead of holding its own copy, and a dead spawner costs nothing but
the next start going the old way or through a new spawner."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hubcontrol import policysockets, procs
from hubcontrol.policysocket import spawner


@contextlib.contextmanager
def fake_dockerd(path: Path):
    """Answers every request with ``200 OK`` and the body ``OK`` (enough for ``/_ping``)."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    server.settimeout(0.1)  # so the loop sees ``stop``: close() does not wake accept()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(10)
            with conn, contextlib.suppress(OSError):  # a client may leave without asking
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if b"\r\n\r\n" in data:
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                        b"Content-Length: 2\r\n\r\nOK"
                    )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield str(path)
    finally:
        stop.set()
        server.close()
        thread.join(5)


@pytest.fixture
def upstream(tmp_path):
    with fake_dockerd(tmp_path / "dockerd.sock") as path:
        yield path


def args_in(home: Path, upstream: str) -> policysockets.ProxyArgs:
    return policysockets.ProxyArgs(
        listen=str(home / "docker.sock"),
        upstream=upstream,
        workspace=str(home),
        binds_dir=str(home / "binds"),
        pidfile=str(home / "policy.pid"),
    )


@pytest.fixture
def started(tmp_path, upstream):
    """Starts policy sockets in ``tmp_path``; stops every one at the end."""
    made: list[policysockets.ProxyArgs] = []

    def start(name: str = "u") -> tuple[policysockets.ProxyArgs, int]:
        home = tmp_path / name
        home.mkdir()
        args = args_in(home, upstream)
        made.append(args)
        return args, policysockets.start(args, log_path=home / "policy.log")

    yield start
    for args in made:
        policysockets.stop(args)


def ask(listen: str, request: bytes) -> bytes:
    """One request through the policy socket; the whole answer (head and body)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(listen)
        s.sendall(request)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
            head, sep, body = answer.partition(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                None,
            )
            if sep and length is not None and len(body) >= length:
                break
        return answer


def memory(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return {line.split(":")[0]: int(line.split()[1]) for line in f if line.endswith("kB\n")}


def test_a_forked_policy_socket_is_the_process_the_hub_would_have_executed(started):
    args, pid = started()
    assert procs.cmdline(pid) == policysockets.command(args)  # how the hub finds it
    assert policysockets.running_pid(args) == pid
    assert os.getsid(pid) == pid  # its own session, as setsid --fork gave it
    assert int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) != os.getpid()
    assert os.readlink(f"/proc/{pid}/cwd") == "/"
    assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
    assert os.readlink(f"/proc/{pid}/fd/1") == os.readlink(f"/proc/{pid}/fd/2")
    assert os.readlink(f"/proc/{pid}/fd/1").endswith("policy.log")
    # it serves: forwards what the policy allows, refuses what is malformed by itself
    assert ask(args.listen, b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n").endswith(b"OK")
    refused = ask(args.listen, b"GET  /_ping HTTP/1.1\r\nHost: d\r\n\r\n")
    assert refused.startswith(b"HTTP/1.1 400")
    # its signals: SIGUSR1 drops idle connections (and says so in its log), SIGTERM ends it
    os.kill(pid, signal.SIGUSR1)
    log = Path(args.listen).parent / "policy.log"
    deadline = time.monotonic() + 10
    while b"dropped" not in log.read_bytes():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    policysockets.stop(args)
    assert not procs.alive(pid)
    assert not Path(args.listen).exists() and not Path(args.pidfile).exists()


def test_forked_policy_sockets_share_the_interpreters_memory(started, monkeypatch):
    _, forked = started("forked")
    monkeypatch.setenv(policysockets.Spawner.ENV, "0")
    _, executed = started("executed")
    assert procs.cmdline(forked)[1:3] == procs.cmdline(executed)[1:3]
    # anonymous pages the forked one still shares with the spawner (copy-on-write): the
    # imported modules; an executed one built its own
    shared = memory(forked)["Shared_Dirty"]
    assert shared > 4 * 1024, memory(forked)
    assert memory(executed)["Shared_Dirty"] < 1024, memory(executed)
    assert memory(forked)["Private_Dirty"] < memory(executed)["Private_Dirty"]


def test_a_dead_spawner_is_replaced_and_its_policy_sockets_live_on(started):
    first_args, first = started("first")
    spawner_pid = policysockets.SPAWNER.pid()
    os.kill(spawner_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while policysockets.SPAWNER.pid() is not None:  # it has noticed (and reaped) the death
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # the policy socket it forked is not its child: it serves on
    assert procs.alive(first)
    assert ask(first_args.listen, b"GET /_ping HTTP/1.1\r\nHost: d\r\n\r\n").endswith(b"OK")
    # the next start forks from a new spawner
    second_args, second = started("second")
    assert policysockets.SPAWNER.pid() not in (None, spawner_pid)
    assert procs.cmdline(second) == policysockets.command(second_args)
    assert memory(second)["Shared_Dirty"] > 4 * 1024


def test_the_spawner_forks_nothing_but_a_policy_socket():
    with pytest.raises(ValueError, match="not a policy socket"):
        spawner.spawn([sys.executable, "-c", "print(1)"], dict(os.environ), -1, -1, -1)


def test_the_spawner_ends_with_the_hub_and_its_policy_sockets_do_not(tmp_path, upstream):
    """A hub process (here a short Python program) starts a policy socket and exits; its
    spawner goes with it, the policy socket stays (as the user's dockerd does)."""
    home = tmp_path / "h"
    home.mkdir()
    args = args_in(home, upstream)
    program = f"""
import json
from hubcontrol import policysockets
args = policysockets.ProxyArgs(**{vars(args)!r})
pid = policysockets.start(args)
print(json.dumps([pid, policysockets.SPAWNER.pid()]))
"""
    out = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, timeout=60
    )
    pid, spawner_pid = json.loads(out.stdout)
    try:
        deadline = time.monotonic() + 10
        while procs.alive(spawner_pid):
            assert time.monotonic() < deadline, "the spawner outlived the hub"
            time.sleep(0.05)
        assert procs.alive(pid)
        assert policysockets.running_pid(args) == pid
    finally:
        policysockets.stop(args)


def test_the_spawner_is_started_ahead_of_the_first_user_unless_switched_off(monkeypatch):
    policysockets.SPAWNER.close()
    monkeypatch.setenv(policysockets.Spawner.ENV, "0")
    policysockets.SPAWNER.prestart()
    time.sleep(0.3)
    assert policysockets.SPAWNER.pid() is None
    monkeypatch.delenv(policysockets.Spawner.ENV)
    policysockets.SPAWNER.prestart()
    deadline = time.monotonic() + 10
    while policysockets.SPAWNER.pid() is None:
        assert time.monotonic() < deadline, "the spawner did not start"
        time.sleep(0.02)
    pid = policysockets.SPAWNER.pid()
    assert procs.cmdline(pid)[1:3] == ["-m", "hubcontrol.policysocket.spawner"]
