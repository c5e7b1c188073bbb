"""Run the real proxy (lean mitmproxy master + the hub's addons) in a thread for a test.

The control plane is ``StubHub``: it implements the part of the ``hubcontrol.Hub`` API the proxy
uses (snapshot/touch/activity/progress/stats/ensure_running/run, in the Hub's own value types) and
"starts" an environment by pointing the user's route at an echo server on a loopback address of
its own. Tests of the whole product use the real
Hub (tests/e2e); these check the request path with a real proxy, provider and sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import cast

import anyio
import httpx
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    RejectConnection,
    Request,
    TextMessage,
)

from hubcontrol import Lifecycle, Progress, Route, RouteTable, StatusView
from hubcontrol.engine import Engine
from hubproxy.auth import cookies
from hubproxy.context import HubContext
from hubproxy.server.admission import Admission
from hubproxy.server.master import HubPortLoop, make_master, run_loop, run_master
from hubproxy.server.startup import start_control_plane
from tests.support.proxyfakes import make_route


class StubStats:
    """The part of ``hubcontrol.StatsSampler`` the proxy reads: no rows, no lifecycle counts."""

    def __init__(self) -> None:
        self.lifecycle = Lifecycle()

    def view(self) -> StatusView:
        return StatusView()


@dataclass
class StubHub:
    """Hands each new user the next address of ``addresses`` after ``start_delay`` seconds."""

    addresses: list[str]
    ports: dict
    start_delay: float = 0.3
    table: RouteTable = field(default_factory=RouteTable)
    touches: list = field(default_factory=list)
    ensure_calls: list = field(default_factory=list)
    assigned: dict = field(default_factory=dict)
    stats: StubStats = field(default_factory=StubStats)
    engine: Engine = field(default_factory=Engine)

    def snapshot(self) -> RouteTable:
        return self.table

    def touch(self, user, kind="http"):
        self.touches.append((user, kind))

    def activity(self, user):
        return None  # every stamp a worker reports is newer: the tests count them all

    def progress(self, user) -> Progress:
        route = self.table.get(user)
        return Progress(route.state if route else "stopped", "container", "Starting")

    async def ensure_running(self, user, template=None):
        self.ensure_calls.append((user, template))
        ip = self.assigned.setdefault(user, self.addresses[len(self.assigned)])
        self._set(make_route(user, "starting", ip, self.ports))
        await anyio.sleep(self.start_delay)
        self._set(make_route(user, "running", ip, self.ports))

    def stop_user(self, user):
        route = self.table.get(user)
        if route:
            self._set(replace(route, state="checkpointed"))

    def _set(self, route: Route) -> None:
        self.table = self.table.replace(route.name, route)  # a reference swap, as the Hub does

    async def run(self, *, task_status=anyio.TASK_STATUS_IGNORED):
        task_status.started()
        await anyio.sleep_forever()


@dataclass
class RunningProxy:
    port: int
    context: HubContext
    hub: StubHub
    admission: Admission | None = None  # the hub port's (what it answered before mitmproxy)


def wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"proxy did not listen on {port}")


@contextlib.contextmanager
def running_proxy(config, hub, port: int) -> Iterator[RunningProxy]:
    context = HubContext()
    control_thread = start_control_plane(config, context, hub=hub)
    box: dict = {}

    def serve() -> None:
        async def main() -> None:
            master = make_master(context, port, "127.0.0.1")
            box["master"] = master
            box["admission"] = cast(HubPortLoop, asyncio.get_running_loop()).admission
            await run_master(master)

        run_loop(main(), port)  # the hub's own loop: its backlog, and upgrades' admission

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        wait_listening(port)
        yield RunningProxy(port, context, hub, box["admission"])
    finally:
        if "master" in box:
            box["master"].shutdown()
        thread.join(10)
        control_thread.stop()


def ws_handshake(sock: socket.socket, host: str, cookie: str, path: str = "/ws") -> WSConnection:
    """A WebSocket handshake on ``sock`` with the session ``cookie``; raises AssertionError
    naming the status when the hub (or the environment) refuses it."""
    ws = WSConnection(ConnectionType.CLIENT)
    sock.sendall(
        ws.send(Request(host=host, target=path, extra_headers=[(b"cookie", cookie.encode())]))
    )
    while True:
        data = sock.recv(65536)
        assert data, "closed during handshake"
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                return ws
            if isinstance(event, RejectConnection):
                raise AssertionError(f"WebSocket refused with {event.status_code}")


def ws_roundtrip(sock: socket.socket, ws: WSConnection, text: str) -> str | None:
    """Send ``text``, return the next text message, or None when the connection closes."""
    sock.sendall(ws.send(Message(data=text)))
    while True:
        data = sock.recv(65536)
        if not data:
            return None
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, TextMessage):
                return event.data
            if isinstance(event, CloseConnection):
                return None


def wait_ready(client: httpx.Client, base: str, timeout: float = 10) -> None:
    """Poll the progress API, as the progress page does, until the environment is ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get(f"{base}/_hub/api/progress", headers={"Sec-Fetch-Mode": "cors"})
        if r.status_code == 200 and r.json()["ready"]:
            return
        time.sleep(0.1)
    raise TimeoutError("environment did not become ready")


def logout(client: httpx.Client, base: str) -> httpx.Response:
    """Log out as a browser does: open ``/_hub/logout``, press the button on the page (a
    same-origin form POST carrying the session's CSRF token)."""
    page = client.get(f"{base}/_hub/logout")
    assert page.status_code == 200, page.text[:300]
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token, page.text[:500]
    origin = f"{httpx.URL(base).scheme}://{httpx.URL(base).netloc.decode()}"
    return client.post(
        f"{base}/_hub/logout",
        data={"csrf": token.group(1)},
        headers={"Origin": origin, "Sec-Fetch-Site": "same-origin"},
    )


def cookie_for(proxy, user: str) -> str:
    context = proxy.context
    session = context.sessions.create(user)
    token = cookies.make_session_token(
        cookies.SessionCookie(user, session.sid, session.exp), context.session_key
    )
    return f"{cookies.SESSION_COOKIE}={token}"
