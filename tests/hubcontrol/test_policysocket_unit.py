"""The policy socket's pure parts: request-head parsing, its command line, its paths."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hubcontrol import mounts, policysockets, procs
from hubcontrol.network import user_network
from hubcontrol.policysocket import __main__ as cli
from hubcontrol.policysocket import bindroot, http1, pins
from hubcontrol.supervisor import DaemonSpec


@pytest.mark.parametrize(
    ("raw", "framing", "length"),
    [
        (b"GET /_ping HTTP/1.1\r\nHost: d", "none", 0),
        (b"POST /build HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: Chunked", "chunked", 0),
        (b"POST /containers/create HTTP/1.1\r\nContent-Length: 12", "length", 12),
        (b"POST /containers/create HTTP/1.0\r\nContent-Length: 0", "none", 0),
    ],
)
def test_request_heads(raw, framing, length):
    head = http1.parse_request_head(raw)
    assert (head.framing, head.length) == (framing, length)


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /_ping HTTP/2.0",
        b"GET /_ping",
        b"GET  /_ping HTTP/1.1",
        b"G3T /_ping HTTP/1.1",
        b"GET /_ping HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked",
        b"GET /_ping HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1",
        b"GET /_ping HTTP/1.1\r\nContent-Length: -1",
        b"GET /_ping HTTP/1.1\r\nContent-Length: 0x10",
        b"GET /_ping HTTP/1.1\r\nTransfer-Encoding: identity",
        b"GET /_ping HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        b"GET /_ping HTTP/1.1\r\n folded: x",
        b"GET /_ping HTTP/1.1\r\nNo-Colon",
        b"GET /_ping HTTP/1.1\r\nBad Name: x",
        b"GET /_ping HTTP/1.1\r\nX: a\nTransfer-Encoding: chunked",
        b"GET /_ping\x7f HTTP/1.1",
        "GET /_ping HTTP/1.1\r\nX: \u00e9".encode(),
    ],
)
def test_request_heads_refused(raw):
    with pytest.raises(http1.HttpError) as e:
        http1.parse_request_head(raw)
    assert e.value.refusal.status == 400


def test_upgrade_is_recognized():
    head = http1.parse_request_head(
        b"POST /exec/x/start HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: tcp"
    )
    assert head.wants_upgrade


def spec(tmp_path) -> DaemonSpec:
    return DaemonSpec(
        user="alice",
        net_id=32768,
        data_root=tmp_path / "d",
        daemon_dir=tmp_path / "dd",
        run_dir=Path("/run/rediacc/hub"),
    )


def test_args_for_a_daemon(tmp_path):
    args = policysockets.args_for(
        spec(tmp_path),
        workspace="/ws/alice",
        container_workspace="/home/w",
        net=user_network(32768, "10.208.0.0/12"),
    )
    assert args.listen == "/run/rediacc/hub/32768/env/docker.sock"
    assert args.upstream == "/run/rediacc/hub/32768/docker.sock"
    assert args.binds_dir == "/run/rediacc/hub/32768/binds"  # beside env/, never inside
    assert args.pidfile == "/run/rediacc/hub/32768/policy.pid"
    assert args.user_networks == ("10.208.0.128/25",)
    assert args.publish_ip == "10.208.0.65"


def test_command_line_round_trips(tmp_path):
    args = policysockets.args_for(
        spec(tmp_path),
        workspace="/ws/alice",
        container_workspace="/home/w",
        net=user_network(32768, "10.208.0.0/12"),
        allowed_registries=["127.0.0.1:5000"],
        audit=("/var/log/rediacc/hub", "--help", 32768),
    )
    argv = policysockets.command(args)
    assert argv[1:3] == ["-m", "hubcontrol.policysocket"]  # no bootstrap string, no package path
    config, pidfile = cli.config_from_argv(argv[3:])
    ctx = config.context
    assert (str(config.listen), str(config.upstream), pidfile) == (
        args.listen,
        args.upstream,
        args.pidfile,
    )
    assert (ctx.workspace, ctx.container_workspace, str(config.binds_dir)) == (
        "/ws/alice",
        "/home/w",
        args.binds_dir,
    )
    assert ctx.user_networks == args.user_networks and ctx.publish_ip == "10.208.0.65"
    assert ctx.allowed_registries == {"127.0.0.1:5000"} and ctx.policy_socket == args.listen
    assert (str(config.audit_dir), config.audit_user, config.net_id) == (
        "/var/log/rediacc/hub",
        "--help",
        32768,
    )


def no_daemon_args(tmp_path: Path) -> policysockets.ProxyArgs:
    """A policy socket under ``tmp_path/run`` for the workspace ``tmp_path/ws`` (made here) whose
    daemon does not exist: what the policy refuses is answered, anything else fails upstream."""
    (tmp_path / "ws").mkdir()
    exec_root = tmp_path / "run"
    return policysockets.ProxyArgs(
        listen=str(exec_root / "env" / "docker.sock"),
        upstream=str(tmp_path / "no-daemon.sock"),
        workspace=str(tmp_path / "ws"),
        pidfile=str(exec_root / "policy.pid"),
    )


def _refused_request(path: str) -> bytes:
    """One request on the policy socket at ``path``; the answer's raw bytes."""
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(10)
        client.connect(path)
        client.sendall(b"GET /swarm HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    return answer


@pytest.mark.docker  # root: the process prepares its pins directory with mounts
def test_the_served_process_loads_neither_docker_py_nor_httpx_nor_yaml(tmp_path):
    """The real process, started with the hub's own command line, serving and refusing a request
    (which loads the audit log lazily): what it imported, from ``python -X importtime``."""
    (tmp_path / "ws").mkdir()
    args = policysockets.ProxyArgs(
        listen=str(tmp_path / "run" / "env" / "docker.sock"),
        upstream=str(tmp_path / "no-daemon.sock"),
        workspace=str(tmp_path / "ws"),
        audit_dir=str(tmp_path / "audit"),
        audit_user="alice",
        net_id=32768,
    )
    argv = policysockets.command(args)
    proc = subprocess.Popen(
        [argv[0], "-X", "importtime", *argv[1:]], stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 15
        while not Path(args.listen).exists():
            assert proc.poll() is None and time.monotonic() < deadline, "it did not start"
            time.sleep(0.05)
        assert b" 403 Forbidden" in _refused_request(args.listen)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
        bindroot.unmount_bind_root(bindroot.default_bind_root(args.listen))
    loaded = {
        line.split("|")[-1].strip() for line in err.splitlines() if line.startswith("import time:")
    }
    assert {"hubcontrol.policysocket.server", "hubcontrol.auditlog"} <= loaded  # it did serve
    heavy = sorted(m for m in loaded if m.split(".")[0] in ("docker", "httpx", "yaml"))
    assert heavy == []
    hub_side = {"hubcontrol.hub", "hubcontrol.config", "hubcontrol.policysockets"} & loaded
    assert hub_side == set()


@pytest.mark.docker  # root: the process prepares its pins directory with mounts
def test_connections_over_the_limit_are_answered_503_and_the_socket_recovers(tmp_path):
    """A user's clients cannot make their policy socket (outside their cgroups) hold unbounded
    connections: past MAX_CONNECTIONS a request gets a Docker error naming the limit, and once
    connections close, requests are served again."""
    from hubcontrol.policysocket.server import MAX_CONNECTIONS

    args = no_daemon_args(tmp_path)
    policysockets.start(args)
    held: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS):
            s = socket.socket(socket.AF_UNIX)
            s.connect(args.listen)
            held.append(s)
        time.sleep(0.5)  # the server has accepted them all
        over = _refused_request(args.listen)
        assert over.startswith(b"HTTP/1.1 503 ")
        assert f"{MAX_CONNECTIONS} connections to this docker socket".encode() in over
        for s in held:
            s.close()
        held.clear()
        deadline = time.monotonic() + 10
        while b" 403 Forbidden" not in (answer := _refused_request(args.listen)):
            assert time.monotonic() < deadline, answer  # the policy's own answer again
            time.sleep(0.1)
    finally:
        for s in held:
            s.close()
        policysockets.stop(args)


def test_the_served_process_logs_through_the_inert_formatter(tmp_path):
    """What a user sends shows in the policy socket's log lines as text, one line per event."""
    code = (
        "import logging, sys; sys.argv[1:] = ['--help']\n"
        "from hubcontrol.policysocket.__main__ import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "logging.getLogger('x').warning('refused: %s', 'GET /\\x1b[2J\\nfake line')\n"
    )
    err = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stderr
    assert "\x1b" not in err and err.count("\n") == 1 and "/\\x1b[2J\\nfake line" in err


def test_systemd_transient_unit_is_bound_to_the_daemon(tmp_path):
    args = policysockets.args_for(
        spec(tmp_path), workspace="/ws/alice", container_workspace="/workspace"
    )
    argv = policysockets.systemd_run_argv(args, "rediacc-hub-dockerd-alice.service")
    assert argv[0] == "systemd-run"
    assert "--unit=rediacc-hub-policy-alice.service" in argv
    assert "--property=BindsTo=rediacc-hub-dockerd-alice.service" in argv
    assert "--slice=rediacc.slice" in argv
    assert "--property=MemoryMax=512M" in argv  # outside the user's groups: bounded itself
    cmd = policysockets.command(args)
    assert argv[-len(cmd) :] == cmd


def test_refusal_response_is_a_docker_error():
    raw = http1.refusal_response(http1.policy.Refusal("hub policy refused x: y"))
    assert raw.startswith(b"HTTP/1.1 403 Forbidden\r\n") and raw.endswith(
        b'{"message": "hub policy refused x: y"}'
    )
    assert b"Connection: close" in raw


BODY = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n"


@pytest.mark.parametrize("split", [1, 2, 3, 7, len(BODY)])
def test_chunk_scanner_finds_the_end_across_blocks(split):
    scanner = http1.ChunkScanner()
    data = BODY + b"GET /next HTTP/1.1\r\n"
    ends = []
    for start in range(0, len(data), split):
        end = scanner.feed(data[start : start + split], decode=True)
        if end is not None:
            ends.append(start + end)
            break
    assert ends == [len(BODY)]
    assert scanner.take_decoded() == b"hello world"


@pytest.mark.parametrize(
    "body",
    [
        b"0x5\r\nhello\r\n0\r\n\r\n",  # Python's int() would read these sizes; Go would not
        b"+5\r\nhello\r\n0\r\n\r\n",
        b"0_5\r\nhello\r\n0\r\n\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"-1\r\n",
        b"5\nhello\r\n0\r\n\r\n",  # bare LF
        b"5\r\nhelloXX0\r\n\r\n",  # no CRLF after the data
        b"11111111111111111\r\n",  # over 16 hex digits
    ],
)
def test_chunk_scanner_is_as_strict_as_go(body):
    with pytest.raises(http1.HttpError):
        http1.ChunkScanner().feed(body)


@pytest.mark.docker  # root, for mount(8)
def test_a_view_left_by_an_earlier_user_of_the_net_id_is_replaced(tmp_path):
    """Network IDs are reused: a stale view must never show the previous user's workspace."""
    old, new, view = tmp_path / "old", tmp_path / "new", str(tmp_path / "view")
    for ws in (old, new):
        ws.mkdir()
        (ws / "owner").write_text(ws.name)
    try:
        bindroot.mount_bind_root(str(old), view)
        bindroot.mount_bind_root(str(old), view)  # idempotent for the same workspace
        assert Path(view, "owner").read_text() == "old"
        bindroot.mount_bind_root(str(new), view)
        assert Path(view, "owner").read_text() == "new"
        assert {"nosymfollow", "nosuid", "nodev"} <= mounts.mount_options(view)
        # a plain bind mount (no nosymfollow) of the right workspace is replaced too
        bindroot.unmount_bind_root(view)
        Path(view).mkdir()
        subprocess.run(["mount", "--bind", str(new), view], check=True)
        bindroot.mount_bind_root(str(new), view)
        assert "nosymfollow" in mounts.mount_options(view)
    finally:
        bindroot.unmount_bind_root(view)
    assert not Path(view).exists()


@pytest.mark.docker  # root, for mount(8)
def test_a_policy_socket_whose_socket_file_is_removed_exits(tmp_path):
    """A daemon's cleanup or a destroyed user removes the socket file: nobody can reach the
    process any more, so it ends."""
    args = no_daemon_args(tmp_path)
    pid = policysockets.start(args)
    try:
        assert Path(pins.default_binds_dir(args.listen)).is_dir()
        Path(args.listen).unlink()
        deadline = time.monotonic() + 15
        while procs.alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not procs.alive(pid)
        assert not Path(args.pidfile).exists()
    finally:
        policysockets.stop(args)


@pytest.mark.docker  # root, for mount(8)
def test_starting_a_policy_socket_reads_the_process_table_once(tmp_path, monkeypatch):
    """``start`` waits for the new process through its pidfile: the process table is read once
    (to find a stale process to replace), not on every poll, where thousands of /proc reads
    per start held the hub's GIL while many users logged in at once (bench/load.py)."""
    args = no_daemon_args(tmp_path)
    scans = []
    real_pids = procs.pids
    monkeypatch.setattr(procs, "pids", lambda: scans.append(1) or real_pids())
    pid = policysockets.start(args)
    try:
        assert len(scans) == 1
        assert procs.cmdline(pid)[1:3] == ["-m", "hubcontrol.policysocket"]
        assert Path(args.pidfile).read_text().strip() == str(pid)
        assert b" 403 Forbidden" in _refused_request(args.listen)  # it serves the policy
        scans.clear()
        assert policysockets.start(args) == pid  # running: found by its pidfile alone
        assert scans == []
    finally:
        policysockets.stop(args)


# The bootstrap a hub before this version started its policy sockets with, verbatim: argv is
# ``python -c <this> <hubcontrol package dir> --flag=value...``.
LEGACY_BOOTSTRAP = (
    "import sys, types; p = types.ModuleType('hubcontrol'); p.__path__ = [sys.argv.pop(1)]; "
    "sys.modules['hubcontrol'] = p; from hubcontrol import socketproxy; "
    "socketproxy.main(sys.argv[1:])"
)


@pytest.mark.docker  # root: the process prepares its pins directory with mounts
def test_a_policy_socket_started_by_the_previous_version_is_found_and_replaced(tmp_path):
    """An upgraded hub meets policy sockets running with the old command line: it must find
    them (a second process on the same socket would fail) and replace them, so the new policy
    code takes effect (docs/security.md, "The policy socket")."""
    # The old installed package, as far as the old command line needs it: its package dir
    # (here the current modules, plus the socketproxy module the bootstrap imports).
    old_pkg = tmp_path / "old-hubcontrol"
    old_pkg.mkdir()
    for entry in Path(policysockets.__file__).parent.iterdir():
        (old_pkg / entry.name).symlink_to(entry)
    (old_pkg / "socketproxy.py").write_text("from hubcontrol.policysocket.__main__ import main\n")
    args = no_daemon_args(tmp_path)
    options = policysockets.command(args)[3:]
    old = subprocess.Popen(
        [sys.executable, "-c", LEGACY_BOOTSTRAP, str(old_pkg), *options], start_new_session=True
    )
    try:
        deadline = time.monotonic() + 15
        while policysockets.running_pid(args) != old.pid or not Path(args.listen).exists():
            assert old.poll() is None and time.monotonic() < deadline, "the old one did not start"
            time.sleep(0.05)
        assert b" 403 Forbidden" in _refused_request(args.listen)
        pid = policysockets.start(args)
        assert pid != old.pid and old.wait(timeout=15) == 0  # replaced, cleanly
        assert procs.cmdline(pid)[1:3] == ["-m", "hubcontrol.policysocket"]
        assert policysockets.running_pid(args) == pid
        assert b" 403 Forbidden" in _refused_request(args.listen)  # the new one serves
        assert policysockets.start(args) == pid  # and is kept from now on
    finally:
        policysockets.stop(args)
        if old.poll() is None:
            old.kill()
            old.wait()


def test_tell_ready_writes_only_to_a_pipe_and_closes_it(monkeypatch):
    """The ready descriptor named in the environment gets one byte and is closed when it is a
    pipe; any other descriptor of the process (a socket the number happens to name) is left
    alone, and so is a value that is not a number."""
    r, w = os.pipe()
    monkeypatch.setenv("HUB_POLICY_SOCKET_READY_FD", str(w))
    cli._tell_ready()
    assert os.read(r, 8) == b"R" and os.read(r, 8) == b""  # written, and the write end closed
    os.close(r)
    assert "HUB_POLICY_SOCKET_READY_FD" not in os.environ
    a, b = socket.socketpair()
    try:
        monkeypatch.setenv("HUB_POLICY_SOCKET_READY_FD", str(a.fileno()))
        cli._tell_ready()
        a.sendall(b"still open")
        assert b.recv(64) == b"still open"
        monkeypatch.setenv("HUB_POLICY_SOCKET_READY_FD", "-1; rm")
        cli._tell_ready()
    finally:
        a.close()
        b.close()
