"""``hub start --workers N``: pure decisions, then the real thing as processes.

The integration tests run ``hub start``'s own code path in a subprocess (tests/hubproxy/
workerhub.py: worker 0 with tests.support.proxyharness's ``StubHub`` as control plane, which "starts" a user by
routing to an echo server) and the real ``python -O -m hubproxy.workers`` children, sharing the
port with ``SO_REUSEPORT``, against the real npm OIDC provider. Which process serves a
connection is the kernel's choice; the test finds out through /proc (the accepted socket's inode
in /proc/net/tcp, then the process holding it) and reconnects until it has the one it wants.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpcore
import httpx
import pytest

from hubcontrol import procs
from hubcontrol.config import MAX_WORKERS, build_config, parse_workers
from hubcontrol.errors import ConfigError
from hubcontrol.hub import Route, RouteTable
from hubcontrol.stats import Counter, Gauge
from hubproxy.auth.sessionstore import Session, SessionStore
from hubproxy.server.master import LISTEN_BACKLOG, HubPortLoop
from hubproxy.workers import link
from hubproxy.workers.worker import RemoteControlPlane, parse_args
from hubproxy.workers.workeringress import trusted_client
from hubproxy.workers.workerpool import FleetMetrics
from tests.support.echoenv import echo_environment
from tests.support.oidc_provider import free_port, npm_oidc_provider
from tests.support.procs import stop
from tests.support.proxyharness import logout, wait_ready, ws_handshake, ws_roundtrip
from tests.support.webclient import HubTransport, provider_login

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = "example.test"
ALICE_IP = "127.0.0.2"
LABELS = {"rediacc.hub.route.term": "7681", "rediacc.hub.image": "img"}

# -- pure decisions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", 1), ("2", 2), (" 16 ", 16), (str(MAX_WORKERS), MAX_WORKERS), (8, 8)],
)
def test_parse_workers(value, expected):
    assert parse_workers(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "0 is out of range; expected 1 to 64"),
        ("65", "65 is out of range"),
        ("-1", "is not a whole number"),
        ("two", "'two' is not a whole number"),
        ("1.5", "is not a whole number"),
        (True, "is not a whole number"),
    ],
)
def test_parse_workers_rejects(value, message):
    with pytest.raises(ValueError, match=message):
        parse_workers(value)


@pytest.mark.parametrize(
    ("flags", "environ", "expected"),
    [
        ({}, {}, 1),
        ({"workers": "4"}, {}, 4),
        ({}, {"HUB_WORKERS": "3"}, 3),
        ({"workers": "2"}, {"HUB_WORKERS": "5"}, 2),  # the flag wins, as --base-domain does
        ({"workers": ""}, {"HUB_WORKERS": "5"}, 5),  # an empty flag is "not given"
    ],
)
def test_workers_from_flag_or_variable(flags, environ, expected):
    config = build_config(LABELS, flags, environ, require_oauth=False)
    assert config.workers == expected
    assert not any("HUB_WORKERS" in w for w in config.warnings)


@pytest.mark.parametrize(
    ("flags", "environ", "problem"),
    [
        ({"workers": "0"}, {}, "flag --workers=0: 0 is out of range; expected 1 to 64"),
        ({"workers": "many"}, {}, "flag --workers=many: 'many' is not a whole number"),
        ({}, {"HUB_WORKERS": "100"}, "variable HUB_WORKERS=100: 100 is out of range"),
    ],
)
def test_bad_workers_is_a_config_problem(flags, environ, problem):
    with pytest.raises(ConfigError) as e:
        build_config(LABELS, flags, environ, require_oauth=False)
    assert any(problem in p for p in e.value.problems), e.value.problems


def test_hub_start_refuses_bad_workers_before_starting_anything(tmp_path):
    from typer.testing import CliRunner

    from hubcli.app import app

    labels = tmp_path / "hub.labels.yaml"
    labels.write_text("version: 1\nservice: hub\nlabels:\n  rediacc.hub.route.term: '7681'\n")
    result = CliRunner().invoke(app, ["start", "--labels", str(labels), "--workers=0"])
    assert result.exit_code == 2
    assert "--workers=0" in result.output and "expected 1 to 64" in result.output


def test_hub_start_with_workers_refuses_a_port_in_use(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from hubcli.app import app

    labels = tmp_path / "hub.labels.yaml"
    labels.write_text(
        "version: 1\nservice: hub\nlabels:\n  rediacc.hub.route.term: '7681'\n"
        "  rediacc.hub.image: img\n"
    )
    for name, value in {
        "HUB_OAUTH_CLIENT_ID": "hub",
        "HUB_OAUTH_CLIENT_SECRET": "s",
        "HUB_OAUTH_AUTHORIZE_URL": "http://127.0.0.1:9/auth",
        "HUB_OAUTH_TOKEN_URL": "http://127.0.0.1:9/token",
        "HUB_OAUTH_USERINFO_URL": "http://127.0.0.1:9/me",
        "HUB_OAUTH_USERINFO_PATH": "login",
        "HUB_DOMAIN": DOMAIN,
    }.items():
        monkeypatch.setenv(name, value)
    with socket.socket() as stale:  # e.g. an old hub, which SO_REUSEPORT would silently join
        stale.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        stale.bind(("0.0.0.0", 0))
        stale.listen()
        port = stale.getsockname()[1]
        assert link.port_taken(port) is not None
        result = CliRunner().invoke(
            app,
            ["start", "--labels", str(labels), f"--port={port}", "--workers=2"]
            + [f"--state-dir={tmp_path / 'state'}", f"--workspace-dir={tmp_path / 'ws'}"],
        )
    assert result.exit_code == 1, result.output
    assert f"--port={port} is in use" in result.output
    assert not (tmp_path / "state" / "workers.sock").exists()
    assert link.port_taken(port) is None


def test_link_path_fits_a_unix_socket(tmp_path):
    assert link.link_path("/var/lib/rediacc/hub") == "/var/lib/rediacc/hub/workers.sock"
    with pytest.raises(ValueError, match="use a shorter --state-dir, or --workers=1"):
        link.link_path("/" + "d" * 100)


def test_install_keeps_workers_in_the_unit():
    from hubcontrol.install import exec_start_argv, render_unit

    argv = exec_start_argv(["hub", "start", "--port=7112", "--workers=4"], hub_exe="/usr/bin/hub")
    assert "--workers=4" in argv
    assert "--workers=4" in render_unit(argv)


def test_route_table_round_trip():
    table = RouteTable(
        {
            "alice": Route("alice", "alice", "running", "10.1.0.2", {"term": 7681}, "python"),
            "bob--1a2b3c": Route("Bob", "bob--1a2b3c", "starting", "10.1.1.2", {}, ""),
        }
    )
    wire = json.loads(json.dumps(link.routes_to_wire(table)))
    copy = link.routes_from_wire(wire)
    assert copy.get("alice") == table.get("alice")
    assert copy.by_name("bob--1a2b3c") == table.by_name("bob--1a2b3c")
    assert copy.get("bob--1a2b3c") is None  # a safe name is not a username, on workers too
    assert len(copy) == 2


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ([], []),
        ([[(("term", "2xx"), 3.0)]], [(("term", "2xx"), 3.0)]),
        (
            [[(("term", "2xx"), 3.0)], [(("term", "2xx"), 4.0), (("code", "5xx"), 1.0)]],
            [(("code", "5xx"), 1.0), (("term", "2xx"), 7.0)],
        ),
        ([[((), 1.0)], [((), -1.0)]], [((), 0.0)]),  # gauges may go down
    ],
)
def test_sum_samples(parts, expected):
    assert link.sum_samples(parts) == expected


@pytest.mark.parametrize(
    ("stamp", "current", "expected"),
    [
        (10.0, None, True),
        (10.0, (9.0, "http"), True),
        (10.0, (10.0, "http"), False),
        (5.0, (9.0, "ws-in"), False),
    ],
)
def test_newer_activity_wins(stamp, current, expected):
    assert link.newer(stamp, current) is expected


@pytest.mark.parametrize(
    ("failures", "delay"), [(0, 0.5), (1, 0.5), (2, 1.0), (3, 2.0), (7, 30.0), (50, 30.0)]
)
def test_restart_backoff(failures, delay):
    assert link.backoff(failures) == delay


@pytest.mark.parametrize(
    ("private", "token", "client", "result"),
    [
        (True, "t0k", "203.0.113.9", "203.0.113.9"),
        (True, "t0k", " ::1 ", "::1"),
        (False, "t0k", "203.0.113.9", "not on the private listener"),
        (True, "bad", "203.0.113.9", "bad or missing worker token"),
        (True, None, "203.0.113.9", "bad or missing worker token"),
        (True, "t0k", "evil, 127.0.0.1", "bad client address"),
    ],
)
def test_trusted_client(private, token, client, result):
    if "." in result or ":" in result:
        assert trusted_client(private, token, "t0k", client) == result
    else:
        with pytest.raises(ValueError, match=result):
            trusted_client(private, token, "t0k", client)


def test_worker_command_and_arguments():
    command = link.worker_command("/py", 1, 3, "/s/workers.sock", ["--port=7112", "--x"])
    assert command == [
        "/py", "-O", "-m", "hubproxy.workers", "--index=3", "--link=/s/workers.sock", "--",
        "--port=7112", "--x",
    ]  # fmt: skip
    assert "-O" not in link.worker_command("/py", 0, 1, "/s", [])
    args = parse_args(command[4:])
    assert (args.index, args.link, args.start_args) == (
        3,
        "/s/workers.sock",
        ["--port=7112", "--x"],
    )


def test_session_replica_follows_changes():
    store = SessionStore(None, clock=lambda: 1000.0)
    seen = []
    store.listeners.append(lambda added, removed: seen.append((added, removed)))
    a = store.create("alice", browser="digest")
    b = store.create("alice", template="python")
    replica = SessionStore.replica(
        [Session.from_json(json.loads(json.dumps(a.to_json())))],
        clock=lambda: 1000.0,
    )
    replica.apply(*seen[1])
    assert replica.get(b.sid, "alice") == b and replica.get(a.sid, "alice") == a
    store.revoke_user("alice")
    replica.apply(*seen[2])
    assert replica.get(a.sid, "alice") is None and replica.get(b.sid, "alice") is None
    assert isinstance(seen[0][0][0], Session) and sorted(seen[2][1]) == sorted([a.sid, b.sid])


def test_fleet_metrics_sum_workers_and_keep_dead_workers_counts():
    requests = Counter("hub_proxy_requests_total", "r", ("prefix", "code"))
    requests.inc("term", "2xx", amount=5)
    open_ws = Gauge("hub_websockets_open", "w", ("prefix",))
    open_ws.inc("term")

    class Pool:
        count = 3
        ready = {1}
        samples = {1: {"hub_proxy_requests_total": [(("term", "2xx"), 7.0)],
                       "hub_websockets_open": [(("term",), 2.0)]}}  # fmt: skip
        retired = {2: {"hub_proxy_requests_total": [(("term", "2xx"), 11.0)],
                       "hub_websockets_open": [(("term",), 4.0)]}}  # fmt: skip

    families = {f.name: f for f in FleetMetrics(Pool()).families([requests, open_ws])}
    assert families["hub_proxy_requests_total"].samples() == [(("term", "2xx"), 23.0)]
    assert families["hub_websockets_open"].samples() == [(("term",), 3.0)]  # live only
    assert families["hub_workers"].samples() == [((), 2.0)]
    assert families["hub_worker_requests_total"].samples() == [
        (("0",), 5.0),
        (("1",), 7.0),
        (("2",), 11.0),
    ]


async def _serve_twice(port: int) -> int:
    """Two listeners on one port in one loop: only possible with SO_REUSEPORT."""

    async def handle(reader, writer):
        writer.close()

    servers = []
    try:
        for p in (port, port, 0):
            servers.append(await asyncio.start_server(handle, "127.0.0.1", p))
        return [s.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) for s in servers]
    finally:
        for s in servers:
            s.close()
            await s.wait_closed()


def test_reuse_port_loop_applies_to_its_port_only():
    port = free_port()
    with asyncio.Runner(loop_factory=lambda: HubPortLoop(port, reuse_port=True)) as runner:
        assert runner.run(_serve_twice(port)) == [1, 1, 0]
    with pytest.raises(OSError):  # an ordinary loop: the second bind fails
        asyncio.run(_serve_twice(port))
    with asyncio.Runner(loop_factory=lambda: HubPortLoop(port)) as runner, pytest.raises(OSError):
        runner.run(_serve_twice(port))  # one worker: no SO_REUSEPORT


async def _listen_backlogs(port: int) -> tuple[int, int]:
    """The kernel's accept-queue bound (``ss``'s Send-Q) of a listener on ``port`` and of one on
    another port, both opened by the running loop."""
    other = free_port()
    servers = [await asyncio.start_server(lambda r, w: None, "127.0.0.1", p) for p in (port, other)]
    try:
        ss = await asyncio.to_thread(
            subprocess.run, ["ss", "-ltnH"], capture_output=True, text=True, check=True
        )
        shown = ss.stdout
        queues = {}
        for line in shown.splitlines():
            fields = line.split()
            queues[int(fields[3].rsplit(":", 1)[1])] = int(fields[2])
        return queues[port], queues[other]
    finally:
        for s in servers:
            s.close()
            await s.wait_closed()


def test_the_hubs_port_queues_a_reconnect_storm():
    """asyncio listens with a backlog of 100: 1,000 tabs reconnecting at once overflowed it and
    waited out TCP's 1 s retransmission. The hub's port gets LISTEN_BACKLOG (the kernel caps it
    at net.core.somaxconn); other listeners keep asyncio's default."""
    port = free_port()
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    with asyncio.Runner(loop_factory=lambda: HubPortLoop(port)) as runner:
        assert runner.run(_listen_backlogs(port)) == (min(LISTEN_BACKLOG, somaxconn), 100)


@pytest.mark.anyio
async def test_remote_control_plane_reads_locally_and_starts_once():
    sent = []
    control = RemoteControlPlane(sent.append, clock=lambda: 42.0)
    control.set_routes(link.routes_to_wire(RouteTable({})))
    assert control.route("alice") is None
    first = control.start("alice", None)
    assert control.start("alice", None) is first
    assert sent == [{"t": "start", "user": "alice", "template": None}]
    control.set_progress("alice", {"state": "starting", "step": "image", "message": "Pulling"})
    assert control.progress("alice").message == "Pulling"
    control.started("alice", None, None)
    assert first.done() and first.result() is None
    control.touch("alice", "ws-in")
    assert control.take_stamps() == [["alice", 42.0, "ws-in"]] and control.take_stamps() == []


# -- the real processes ------------------------------------------------------------------------------


def _tcp_inode(server_port: int, client_port: int) -> int:
    """The inode of the server side of an accepted loopback connection (0 until accepted)."""
    want_local, want_remote = f":{server_port:04X}", f":{client_port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[1].endswith(want_local) and fields[2].endswith(want_remote):
                    return int(fields[9])
    return 0


def serving_pid(sock: socket.socket, server_port: int, pids, timeout: float = 3.0) -> int | None:
    """Which of ``pids`` accepted the connection ``sock``."""
    client_port = sock.getsockname()[1]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        inode = _tcp_inode(server_port, client_port)
        if inode:
            target = f"socket:[{inode}]"
            for pid in pids:
                with contextlib.suppress(OSError):
                    for fd in os.listdir(f"/proc/{pid}/fd"):
                        with contextlib.suppress(OSError):
                            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                                return pid
        time.sleep(0.02)
    return None


def pinned_socket(port: int, pid: int, pids) -> socket.socket:
    """A connection to ``port`` that the process ``pid`` accepted (reconnecting until so)."""
    for _ in range(60):
        sock = socket.create_connection(("127.0.0.1", port), 5)
        if serving_pid(sock, port, pids) == pid:
            return sock
        sock.close()
    raise AssertionError(f"no connection to :{port} landed on pid {pid}")


class PinnedBackend(httpcore.SyncBackend):
    """httpcore connections to the hub's port all land on one worker process."""

    def __init__(self, port: int, pid: int, pids) -> None:
        self.port, self.pid, self.pids = port, pid, pids

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        if port != self.port:
            return super().connect_tcp(host, port, timeout, local_address, socket_options)
        return httpcore._backends.sync.SyncStream(pinned_socket(port, self.pid, self.pids))


def pinned_browser(port: int, pid: int, pids) -> httpx.Client:
    transport = HubTransport(DOMAIN, port)
    transport._pool = httpcore.ConnectionPool(network_backend=PinnedBackend(port, pid, pids))
    return httpx.Client(
        transport=transport,
        follow_redirects=True,
        headers={"Accept": "text/html", "Sec-Fetch-Mode": "navigate"},
        timeout=15,
    )


def children(pid: int) -> list[int]:
    out = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
            out += [int(p) for p in f.read().split()]
    return out


def worker_pids(hub: subprocess.Popen, count: int, timeout: float = 20.0) -> list[int]:
    """[worker 0, worker 1, ...] once every worker listens (as worker 0's log says)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert hub.poll() is None, "the hub exited"
        kids = children(hub.pid)
        if len(kids) == count - 1 and all(_listening(pid) for pid in kids):
            return [hub.pid, *sorted(kids)]
        time.sleep(0.1)
    raise TimeoutError("the workers did not come up")


def _listening(pid: int) -> bool:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
        return b"hubproxy.workers" in f.read() and _holds_listener(pid)
    return False


def _holds_listener(pid: int) -> bool:
    inodes = procs.fd_inodes(pid, "socket")
    with open("/proc/net/tcp") as f:
        next(f)
        return any(line.split()[3] == "0A" and int(line.split()[9]) in inodes for line in f)


def metrics(client: httpx.Client, port: int) -> str:
    # From a direct local connection, /_hub/metrics needs no token (Prometheus on the host); the
    # worker that takes it forwards it to worker 0 with the true client address.
    r = client.get(f"http://term.{DOMAIN}:{port}/_hub/metrics", headers={"Accept": "*/*"})
    assert r.status_code == 200, r.text[:300]
    return r.text


def family_total(text: str, name: str) -> float:
    return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(name + "{"))


def sample(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


@contextlib.contextmanager
def hub_process(tmp_path: Path, port: int, issuer: str, term_port: int, workers: int = 2):
    (tmp_path / "labels.yaml").write_text(
        "version: 1\nservice: hub\nlabels:\n"
        f'  rediacc.hub.route.term: "{term_port}"\n  rediacc.hub.image: img\n'
    )
    env = tmp_path / "hub.env"
    env.write_text(
        f"HUB_DOMAIN={DOMAIN}\nHUB_OAUTH_CLIENT_ID=hub\nHUB_OAUTH_CLIENT_SECRET=hub-secret\n"
        f"HUB_OAUTH_AUTHORIZE_URL={issuer}/auth\nHUB_OAUTH_TOKEN_URL={issuer}/token\n"
        f"HUB_OAUTH_USERINFO_URL={issuer}/me\nHUB_OAUTH_USERINFO_PATH=preferred_username\n"
        f"HUB_SESSION_SECRET={'e' * 64}\n"
    )
    argv = [sys.executable, "-O", "-m", "tests.hubproxy.workerhub"]
    argv += ["--labels", str(tmp_path / "labels.yaml"), "--env-file", str(env)]
    argv += [f"--port={port}", f"--workers={workers}", f"--state-dir={tmp_path / 'state'}"]
    argv += [f"--audit-dir={tmp_path / 'audit'}", f"--workspace-dir={tmp_path / 'ws'}"]
    log = open(tmp_path / "hub.log", "wb")  # closed below
    stub = {"STUB_ADDRESSES": ALICE_IP, "STUB_TOUCHES": str(tmp_path / "touches")}
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **stub}
    )
    try:
        yield proc
    finally:
        kids = workers_of(tmp_path)
        stop(proc, 30)
        for pid in kids:  # never leave a worker behind, even when the test failed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        log.close()


def workers_of(tmp_path: Path) -> list[int]:
    """Every live ``hubproxy.workers`` process of the hub in ``tmp_path``, whoever its parent."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
                if b"hubproxy.workers" in cmdline and str(tmp_path).encode() in cmdline:
                    if not _zombie_or_gone(int(entry)):
                        found.append(int(entry))
    return found


def hub_log(tmp_path: Path) -> str:
    return (tmp_path / "hub.log").read_text(errors="replace")


def callbacks(port):
    return [f"http://term.{DOMAIN}:{port}/_hub/oauth/callback"]


@pytest.mark.oidc
@pytest.mark.timeout(120)
def test_two_workers_login_route_websocket_logout_metrics(tmp_path):
    port, term_port = free_port(), free_port()
    client = {"client_id": "hub", "client_secret": "hub-secret", "redirect_uris": callbacks(port)}
    with (
        npm_oidc_provider([client]) as issuer,
        echo_environment("alice-term", ALICE_IP, term_port),
        hub_process(tmp_path, port, issuer, term_port) as hub,
        contextlib.ExitStack() as stack,
    ):
        pids = worker_pids(hub, 2)
        w0, w1 = pids
        term = f"http://term.{DOMAIN}:{port}"
        host = f"term.{DOMAIN}:{port}"
        # Log in with every connection on worker 1: the login page, the OAuth callback and the
        # progress API are forwarded to worker 0, which makes the session and tells worker 1.
        with pinned_browser(port, w1, pids) as browser1:
            r = browser1.get(f"{term}/work?x=1")
            r = provider_login(browser1, r, "alice")
            assert r.status_code == 503 and "/_hub/api/progress" in r.text, r.text[:300]
            cookie = browser1.cookies.get("rediacc_hub_session")
            browser_id = browser1.cookies.get("rediacc_hub_browser")
            assert cookie
            wait_ready(browser1, term)
            echo = browser1.get(f"{term}/work?x=1").json()
            assert echo["name"] == "alice-term" and echo["path"] == "/work?x=1"
            headers = {k.lower(): v for k, v in echo["headers"]}
            assert "rediacc_hub" not in headers.get("cookie", "")
            assert headers["host"] == host and headers["x-forwarded-for"] == "127.0.0.1"
        # The same session works on worker 0 (it made it) ...
        with pinned_browser(port, w0, pids) as browser0:
            browser0.cookies.set("rediacc_hub_session", cookie, domain=DOMAIN)
            browser0.cookies.set("rediacc_hub_browser", browser_id, domain=DOMAIN)
            assert browser0.get(f"{term}/").json()["name"] == "alice-term"
        # ... and a WebSocket held by worker 1 reaches the environment.
        sock = stack.enter_context(contextlib.closing(pinned_socket(port, w1, pids)))
        sock.settimeout(10)
        ws = ws_handshake(
            sock, host, f"rediacc_hub_session={cookie}; rediacc_hub_browser={browser_id}"
        )
        assert ws_roundtrip(sock, ws, "hello") == "alice-term:hello"
        # Activity seen by worker 1 reached the Hub in worker 0 (batched, about a second).
        deadline = time.monotonic() + 5
        touched = []
        while time.monotonic() < deadline and not any(k.startswith("ws") for _, k, _ in touched):
            with contextlib.suppress(FileNotFoundError):
                touched = [json.loads(x) for x in (tmp_path / "touches").read_text().splitlines()]
            time.sleep(0.2)
        assert ["alice", "http", w0] in touched
        assert any(u == "alice" and k.startswith("ws") and pid == w0 for u, k, pid in touched)
        # /_hub/metrics (worker 0, asked through worker 1) sums both workers' counts.
        with pinned_browser(port, w1, pids) as plain:
            time.sleep(1.2)  # one batch interval
            text = metrics(plain, port)
        assert sample(text, "hub_workers") == 2
        assert sample(text, 'hub_worker_requests_total{worker="0"}') >= 1
        assert sample(text, 'hub_worker_requests_total{worker="1"}') >= 2
        per_worker = sum(sample(text, f'hub_worker_requests_total{{worker="{i}"}}') for i in (0, 1))
        assert family_total(text, "hub_proxy_requests_total") == per_worker
        # Logout is a POST with the session's CSRF token, forwarded by worker 1 to worker 0 with
        # its form body. A GET, or a POST from another site, logs nobody out.
        with pinned_browser(port, w1, pids) as browser1:
            browser1.cookies.set("rediacc_hub_session", cookie, domain=DOMAIN)
            browser1.cookies.set("rediacc_hub_browser", browser_id, domain=DOMAIN)
            r = browser1.get(f"{term}/_hub/logout")
            assert r.status_code == 200 and "Log out?" in r.text
            token = re.search(r'name="csrf" value="([^"]+)"', r.text).group(1)
            r = browser1.post(
                f"{term}/_hub/logout",
                data={"csrf": token},
                headers={"Origin": "https://evil.example.org", "Sec-Fetch-Site": "cross-site"},
            )
            assert r.status_code == 403 and "still logged in" in r.text
            assert ws_roundtrip(sock, ws, "still open") == "alice-term:still open"
            # Logging out through worker 1 (answered by worker 0) closes the WebSocket worker 1
            # holds, and the session is gone on worker 1 too.
            r = logout(browser1, term)
            assert r.status_code == 200 and "Logged out" in r.text
        assert ws_roundtrip(sock, ws, "still there?") is None
        sock.close()
        with pinned_browser(port, w1, pids) as browser1:
            browser1.cookies.set("rediacc_hub_session", cookie, domain=DOMAIN)
            browser1.cookies.set("rediacc_hub_browser", browser_id, domain=DOMAIN)
            r = browser1.get(f"{term}/", follow_redirects=False)
            assert r.status_code == 302 and r.headers["location"].startswith("/_hub/login")
    assert "Traceback" not in hub_log(tmp_path), hub_log(tmp_path)[-3000:]


@pytest.mark.timeout(120)
def test_forged_worker_headers_on_the_public_port_are_ignored_and_killed_workers_return(
    tmp_path,
):
    port = free_port()
    with hub_process(tmp_path, port, "http://127.0.0.1:9", free_port()) as hub:
        pids = worker_pids(hub, 2)
        w0, w1 = pids
        # On the public port the workers' headers are a client's own: dropped unread. This local
        # client still gets token-free metrics (a direct local connection), not 403/401.
        forged = "X-Hub-Worker-Client: 203.0.113.9\r\nX-Hub-Worker-Token: guess\r\n"
        assert _get(port, w0, pids, "/_hub/metrics", forged).startswith(b"HTTP/1.1 200")
        # On worker 0's private listener they must carry worker 0's token.
        private = int(re.search(r"listening at 127\.0\.0\.1:(\d+)", hub_log(tmp_path)).group(1))
        for extra in (forged, "X-Hub-Worker-Client: 127.0.0.1\r\n"):
            with socket.create_connection(("127.0.0.1", private), 5) as sock:
                assert _request(sock, "/_hub/health", extra).startswith(b"HTTP/1.1 403")
        # A worker that dies is restarted, and the new one serves.
        os.kill(w1, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            kids = children(hub.pid)
            if kids and kids != [w1] and all(_listening(p) for p in kids):
                break
            time.sleep(0.1)
        else:
            raise AssertionError("worker 1 was not restarted: " + hub_log(tmp_path)[-2000:])
        (new,) = kids
        assert _get(port, new, [w0, new], "/_hub/health").startswith(b"HTTP/1.1 200")
        assert f"worker 1 (pid {w1}) exited with SIGKILL; restarting" in hub_log(tmp_path)
        # SIGTERM to worker 0 stops everything: no process, socket file or listener remains.
        hub.send_signal(signal.SIGTERM)
        assert hub.wait(30) == 0
        for pid in (w0, new):
            assert not os.path.exists(f"/proc/{pid}") or _zombie_or_gone(pid)
        assert not (tmp_path / "state" / "workers.sock").exists()
        assert not _listeners(port)
        with socket.socket() as s:  # free for an ordinary listener (TIME_WAIT aside) again
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            s.listen()


@pytest.mark.timeout(120)
def test_every_workers_port_answers_probes_with_worker_0s_document(tmp_path):
    """A load balancer's probe that lands on worker 1 is answered at worker 1's port with the
    document worker 0 published (not sent through two mitmproxies to worker 0), and follows
    worker 0's changes: here, the count of ready workers while worker 1 is replaced."""
    port = free_port()
    with hub_process(tmp_path, port, "http://127.0.0.1:9", free_port()) as hub:
        pids = worker_pids(hub, 2)
        w0, w1 = pids

        def probe(pid: int, pids: list[int]) -> dict:
            with contextlib.closing(pinned_socket(port, pid, pids)) as sock:
                sock.settimeout(10)
                answer = _request(sock, "/_hub/health")  # asks to close: read to the end
                while chunk := sock.recv(65536):
                    answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:300]
            return json.loads(body)

        deadline = time.monotonic() + 10
        while probe(w1, pids)["workers"]["ready"] != 2:  # published once worker 1 said "ready"
            assert time.monotonic() < deadline, "worker 1's answer never showed 2 ready workers"
            time.sleep(0.1)

        def answered() -> float:
            """The counter, once worker 1's batches (one a second) have stopped changing it."""
            with pinned_browser(port, w0, pids) as plain:
                last = None
                for _ in range(30):
                    now = sample(metrics(plain, port), "hub_health_probes_answered_total")
                    if now == last:
                        return now
                    last = now
                    time.sleep(1.2)
            raise AssertionError("hub_health_probes_answered_total never settled")

        before = answered()  # the probes above included
        for _ in range(5):
            ours, theirs = probe(w1, pids), probe(w0, pids)
            ours.pop("status_refreshed_at"), theirs.pop("status_refreshed_at")
            assert ours == theirs and ours["workers"] == {"ready": 2, "configured": 2}
        deadline = time.monotonic() + 30
        while (after := answered()) < before + 10 and time.monotonic() < deadline:
            pass  # a loaded machine may hold worker 1's batch back
        assert after - before == 10  # five on each worker's port; none went through mitmproxy
        # Worker 1 killed: worker 0's answer says one worker is missing, and the new worker's
        # port answers from the document it was welcomed with, then from the ones that follow.
        os.kill(w1, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while (kids := children(hub.pid)) in ([], [w1]) or not all(_listening(k) for k in kids):
            assert time.monotonic() < deadline, "worker 1 was not restarted"
            time.sleep(0.1)
        (new,) = kids
        deadline = time.monotonic() + 10
        while probe(new, [w0, new])["workers"]["ready"] != 2:
            assert time.monotonic() < deadline, "the new worker's answer never showed 2 ready"
            time.sleep(0.1)
    assert "Traceback" not in hub_log(tmp_path), hub_log(tmp_path)[-3000:]


def _request(sock: socket.socket, path: str, extra: str = "") -> bytes:
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: term.{DOMAIN}\r\n{extra}Connection: close\r\n\r\n".encode()
    )
    return sock.recv(65536)


def _get(port: int, pid: int, pids, path: str, extra: str = "") -> bytes:
    sock = pinned_socket(port, pid, pids)
    try:
        return _request(sock, path, extra)
    finally:
        sock.close()


def _listeners(port: int) -> list[str]:
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            found += [
                x for x in f if x.split()[3] == "0A" and x.split()[1].endswith(f":{port:04X}")
            ]
    return found


def _zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1].startswith("Z")
    except OSError:
        return True


@pytest.mark.timeout(60)
def test_workers_exit_when_worker_0_is_killed(tmp_path):
    port = free_port()
    with hub_process(tmp_path, port, "http://127.0.0.1:9", free_port()) as hub:
        w0, w1 = worker_pids(hub, 2)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # "ready" arrives just after the worker listens
            health = httpx.get(
                f"http://127.0.0.1:{port}/_hub/health", headers={"Host": f"term.{DOMAIN}"}
            ).json()
            if health["workers"]["ready"] == 2:
                break
            time.sleep(0.1)
        assert health["workers"] == {"ready": 2, "configured": 2}
        # The link is root-only, and only the process worker 0 spawned for an index may use it.
        sock_path = tmp_path / "state" / "workers.sock"
        mode = sock_path.stat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        for index in (1, 2):
            with socket.socket(socket.AF_UNIX) as intruder:
                intruder.settimeout(5)
                intruder.connect(str(sock_path))
                intruder.sendall(link.encode({"t": "hello", "index": index, "pid": w1}))
                assert intruder.recv(65536) == b"", "worker 0 answered a stranger"
        os.kill(w0, signal.SIGKILL)  # no chance to stop its workers itself
        hub.wait(10)
        deadline = time.monotonic() + 10
        while workers_of(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert workers_of(tmp_path) == [], "an orphaned worker survived worker 0"
        assert not _listeners(port)
