"""WebSocket upgrades wait for a slot on the hub's port; everything else goes straight in
(hubproxy/server/admission.py). Real sockets and a real event loop; the server behind the
admission is a small asyncio stream server that answers plain requests at once and holds
upgrades until the test says so, so which connection reached it, and when, is what the test sees.

Through the whole proxy, every test that goes through ``tests.support.proxyharness`` (the relay's,
the login's) runs on the hub's own loop with the admission in front."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from hubcontrol import Counter, Gauge
from hubproxy.server import admission
from hubproxy.server.admission import Admission, asks_upgrade

UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: term.example.test\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
PAGE = b"GET /page HTTP/1.1\r\nHost: code.example.test\r\n\r\n"

pytestmark = pytest.mark.anyio


def test_an_upgrade_is_told_from_its_head_only():
    assert asks_upgrade(UPGRADE[: UPGRADE.index(b"\r\n\r\n")])
    assert asks_upgrade(b"GET / HTTP/1.1\r\nhost: x\r\nUPGRADE : h2c")
    assert not asks_upgrade(PAGE[: PAGE.index(b"\r\n\r\n")])
    # the request line is not a header, nor is a header that merely mentions the word
    assert not asks_upgrade(b"GET /upgrade: HTTP/1.1\r\nX-Note: upgrade: websocket")


class Backend:
    """What mitmproxy would be: records every connection handed to it with the bytes it got,
    answers plain requests at once, and answers an upgrade when ``release(path)`` is called."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self.gates: dict[bytes, asyncio.Event] = {}
        self.eofs = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            try:
                await self._handle(reader, writer)
            finally:
                writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            self.seen.append(e.partial)
            self.eofs += 1
            return
        self.seen.append(head)
        path = head.split(b" ", 2)[1]
        if asks_upgrade(head):
            await self.gates.setdefault(path, asyncio.Event()).wait()
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
            rest = await reader.read(100)  # what the client sends after the 101
            writer.write(b"echo:" + rest)
        else:
            body = await reader.read(len(b"tail")) if b"tail" in path else b""
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()

    def release(self, path: bytes) -> None:
        self.gates.setdefault(path, asyncio.Event()).set()

    def paths(self) -> list[bytes]:
        return [h.split(b" ", 2)[1] if b" " in h else h for h in self.seen]


class Served:
    def __init__(self, backend: Backend, gate: Admission, port: int) -> None:
        self.backend = backend
        self.gate = gate
        self.port = port
        self.writers: list[asyncio.StreamWriter] = []

    async def connect(self, data: bytes = b"") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writers.append(writer)
        if data:
            writer.write(data)
            await writer.drain()
        return reader, writer


@contextlib.asynccontextmanager
async def served(slots: int = 1, hold_max: float = 30.0) -> AsyncIterator[Served]:
    backend = Backend()
    gate = Admission(slots=slots, hold_max=hold_max)
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task] = set()

    def factory() -> asyncio.StreamReaderProtocol:
        def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.ensure_future(backend.handle(reader, writer))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        return asyncio.StreamReaderProtocol(asyncio.StreamReader(), handle)

    server = await loop.create_server(gate.wrap(factory), "127.0.0.1", 0)
    s = Served(backend, gate, server.sockets[0].getsockname()[1])
    try:
        yield s
    finally:
        server.close()
        for writer in s.writers:
            writer.close()
        for path in list(backend.gates):
            backend.release(path)
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        await server.wait_closed()


async def until(predicate, timeout: float = 5.0) -> None:  # noqa: ASYNC109 (a poll)
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def ws(path: bytes) -> bytes:
    return UPGRADE.replace(b"/ws", path, 1)


async def test_an_upgrade_storm_waits_its_turn_while_a_page_goes_straight_through():
    async with served(slots=1) as hub:
        backend, gate = hub.backend, hub.gate
        first = await hub.connect(ws(b"/one"))
        await until(lambda: backend.paths() == [b"/one"])
        second = await hub.connect(ws(b"/two"))
        third = await hub.connect(ws(b"/three"))
        await until(lambda: len(gate.waiting) == 2)
        # a page (a probe, another user's request) is not behind them
        page, _ = await hub.connect(PAGE)
        assert (await asyncio.wait_for(page.read(), 5)).startswith(b"HTTP/1.1 200 OK")
        assert backend.paths() == [b"/one", b"/page"]
        # the first upgrade's answer gives its slot to the next in line, in arrival order
        backend.release(b"/one")
        await until(lambda: backend.paths()[2:] == [b"/two"])
        assert len(gate.waiting) == 1
        backend.release(b"/two")
        await until(lambda: backend.paths()[2:] == [b"/two", b"/three"])
        backend.release(b"/three")
        for reader, writer in (first, second, third):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head == b"HTTP/1.1 101 Switching Protocols\r\n\r\n"
            writer.write(b"after")  # the connection is the backend's from here on
            assert await asyncio.wait_for(reader.read(), 5) == b"echo:after"
        assert gate.busy == 0 and not gate.waiting and gate.queued_total == 2


async def test_the_metrics_count_the_line_as_it_grows_and_empties():
    """``hub_websocket_upgrades_waiting`` and ``..._queued_total`` (/_hub/metrics): what an
    operator sees of a reconnect storm, including a browser that leaves the line."""
    waiting = Gauge("hub_websocket_upgrades_waiting", "w")
    queued = Counter("hub_websocket_upgrades_queued_total", "q")
    async with served(slots=1) as hub:
        hub.gate.count_in(waiting, queued)
        assert waiting.samples() == [((), 0.0)] and queued.samples() == [((), 0.0)]
        await hub.connect(ws(b"/holder"))
        await until(lambda: hub.backend.paths() == [b"/holder"])
        await hub.connect(ws(b"/second"))
        _, quitter = await hub.connect(ws(b"/quitter"))
        await hub.connect(ws(b"/third"))
        await until(lambda: len(hub.gate.waiting) == 3)
        assert (waiting.get(), queued.get()) == (3, 3)
        quitter.transport.abort()
        await until(lambda: len(hub.gate.waiting) == 2)
        assert (waiting.get(), queued.get()) == (2, 3)
        for path in (b"/holder", b"/second"):
            hub.backend.release(path)
            await until(lambda path=path: hub.backend.paths()[-1] != path)
        await until(lambda: not hub.gate.waiting)
        assert (waiting.get(), queued.get()) == (0, 3)


async def test_a_waiting_upgrade_gets_every_byte_it_sent_in_pieces():
    async with served(slots=1) as hub:
        await hub.connect(ws(b"/holder"))
        await until(lambda: hub.backend.paths() == [b"/holder"])
        reader, writer = await hub.connect()
        request = ws(b"/pieces")
        for i in range(0, len(request), 7):  # the head arrives in small pieces
            writer.write(request[i : i + 7])
            await writer.drain()
            await asyncio.sleep(0.005)
        await until(lambda: len(hub.gate.waiting) == 1)
        hub.backend.release(b"/holder")
        await until(lambda: len(hub.backend.seen) == 2)
        assert hub.backend.seen[1] == request
        hub.backend.release(b"/pieces")
        assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)


async def test_a_slot_comes_back_when_the_answer_is_slow_or_the_browser_leaves():
    # the environment never answers: after hold_max the next upgrade goes in anyway
    async with served(slots=1, hold_max=0.2) as hub:
        await hub.connect(ws(b"/slow"))
        await until(lambda: hub.backend.paths() == [b"/slow"])
        await hub.connect(ws(b"/next"))
        await until(lambda: hub.backend.paths() == [b"/slow", b"/next"], timeout=3)
    # a browser that gives up while it waits leaves the queue; the one after it goes in
    async with served(slots=1) as hub:
        await hub.connect(ws(b"/holder"))
        await until(lambda: hub.backend.paths() == [b"/holder"])
        _, quitter = await hub.connect(ws(b"/quitter"))
        await until(lambda: len(hub.gate.waiting) == 1)
        quitter.transport.abort()
        await until(lambda: not hub.gate.waiting)  # noticed while it waited
        await hub.connect(ws(b"/after"))
        await until(lambda: len(hub.gate.waiting) == 1)
        hub.backend.release(b"/holder")
        await until(lambda: hub.backend.paths() == [b"/holder", b"/after"])
        assert hub.gate.busy == 1


async def test_what_is_not_an_http1_head_is_handed_over_at_once_unchanged(monkeypatch):
    monkeypatch.setattr(admission, "SILENT_MAX", 0.2)
    async with served(slots=1) as hub:
        await hub.connect(ws(b"/holder"))  # every slot taken
        await until(lambda: hub.backend.paths() == [b"/holder"])
        # a TLS ClientHello's first bytes: the backend gets them (and EOF) without waiting
        hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
        _, writer = await hub.connect(hello)
        writer.write_eof()
        await until(lambda: hello in hub.backend.seen)
        # a client that says nothing is handed over after SILENT_MAX, and its EOF reaches it
        _, silent = await hub.connect()
        await asyncio.sleep(0.4)
        silent.write_eof()
        await until(lambda: b"" in hub.backend.seen)
        # a head cut short by EOF reaches the backend as it is, with the EOF
        _, cut = await hub.connect(b"GET /cut HTTP/1.1\r\nHost: x\r\n")
        cut.write_eof()
        await until(lambda: b"GET /cut HTTP/1.1\r\nHost: x\r\n" in hub.backend.seen)
        assert hub.backend.eofs == 3 and not hub.gate.waiting


async def test_a_request_body_sent_with_the_head_arrives_whole():
    async with served(slots=1) as hub:
        reader, _ = await hub.connect(
            b"POST /tail HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\ntail"
        )
        assert (await asyncio.wait_for(reader.read(), 5)).endswith(b"\r\n\r\ntail")


@pytest.mark.parametrize("slots", [1, 4])
async def test_many_upgrades_all_reach_the_backend_and_the_slots_all_come_back(slots):
    async with served(slots=slots) as hub:
        conns = [await hub.connect(ws(b"/c%d" % i)) for i in range(20)]
        for i in range(20):
            await until(lambda i=i: len(hub.backend.seen) > i)
            hub.backend.release(hub.backend.paths()[i])
        for reader, _ in conns:
            assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert sorted(hub.backend.paths()) == sorted(b"/c%d" % i for i in range(20))
        await until(lambda: hub.gate.busy == 0)
        assert not hub.gate.waiting


PROBE = b"GET /probe HTTP/1.1\r\nHost: x\r\n\r\n"


def answer_probes(head: bytes) -> tuple[bytes, bool] | None:
    """An ``Admission.answer`` for these tests: ``/probe`` answered here (``/probe-close`` and
    the connection closed), anything else handed over."""
    path = head.split(b" ", 2)[1]
    if path not in (b"/probe", b"/probe-close"):
        return None
    return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nup", path == b"/probe"


async def test_a_probe_is_answered_at_the_port_while_everything_behind_it_is_busy():
    """What ``answer`` takes never reaches the backend (mitmproxy), so a load balancer's probe
    is not behind a storm of work there; the connection's next request that it does not take
    goes to the backend whole, and pipelined probes are each answered."""
    async with served(slots=1) as hub:
        hub.gate.answer = answer_probes
        await hub.connect(ws(b"/holder"))  # the backend busy: it never answers this one
        await until(lambda: hub.backend.paths() == [b"/holder"])
        reader, writer = await hub.connect(PROBE)
        reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nup"
        assert await asyncio.wait_for(reader.readexactly(len(reply)), 5) == reply
        writer.write(PROBE)  # the same connection, kept open
        assert await asyncio.wait_for(reader.readexactly(len(reply)), 5) == reply
        assert hub.backend.paths() == [b"/holder"] and hub.gate.answered == 2
        writer.write(PAGE)  # not a probe: the backend gets it, and the connection
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200 OK")
        assert hub.backend.seen[-1] == PAGE
        # a probe that asks for the connection to close is answered, then the connection ends
        reader, _ = await hub.connect(PROBE.replace(b"/probe", b"/probe-close"))
        assert await asyncio.wait_for(reader.read(), 5) == reply
        assert hub.gate.answered == 3 and len(hub.backend.seen) == 2


async def test_pipelined_probes_are_the_backends_to_pace():
    """Probes sent in one go (a load balancer does not; a client flooding the port does) are not
    answered here in a burst that would hold the loop: the connection goes to the backend (mitmproxy,
    which takes one request at a time) with every byte."""
    async with served(slots=1) as hub:
        hub.gate.answer = answer_probes
        reader, _ = await hub.connect(PROBE * 3)
        await until(lambda: hub.backend.seen[:1] == [PROBE])
        assert hub.gate.answered == 0
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(
            b"HTTP/1.1 200"
        )
