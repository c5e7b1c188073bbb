"""WebSockets relayed as bytes (hubproxy/addons/websocketrelay.py), through the real proxy (lean
mitmproxy master) on raw sockets, against an echo environment and a scripted one that misbehaves
on purpose."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import generate_accept_token

from hubproxy.addons import websocketrelay
from hubproxy.addons.websocketrelay import Relay
from tests.support.echoenv import echo_environment
from tests.support.oidc_provider import free_port
from tests.support.proxyfakes import make_config, make_route
from tests.support.proxyharness import StubHub, cookie_for, logout, running_proxy
from tests.support.webclient import browser

DOMAIN = "example.test"
ALICE_IP = "127.0.0.2"
ACCEPT = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: %s\r\n"
)


def _accept_key(head: bytes) -> bytes:
    key = next(
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    return generate_accept_token(key)


def _text_frame(text: bytes) -> bytes:
    assert len(text) < 126
    return bytes([0x81, len(text)]) + text  # server frames are not masked


RECORDED: dict[bytes, bytes] = {}
# Set-Cookie values for the hub's session cookie, as browsers parse names (RFC 6265bis 5.6)
PLANTED = [
    b"rediacc_hub_session=evil; Path=/",
    b"=rediacc_hub_session=evil; Domain=example.test; Path=/_hub",  # nameless: sent as name=...
    b" = rediacc_hub_session=evil",
    b"rediacc_hub_session",
    b"\trediacc_hub_session\t=evil",
    b"REDIACC_HUB_SESSION=evil",
    b"__Host-rediacc_hub_session=evil; Secure; Path=/",
]


def _scripted(conn: socket.socket) -> None:
    """One connection of the misbehaving environment; the request path picks the script."""
    with conn:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(65536)
            if not chunk:
                return
            head += chunk
        path = head.split(b" ", 2)[1]
        if path == b"/greet":  # the 101 and a first frame in one write
            conn.sendall(ACCEPT % _accept_key(head) + b"\r\n" + _text_frame(b"hello"))
            while conn.recv(65536):
                pass
        elif path == b"/plant":  # a 101 that tries to set the hub's cookie in every spelling
            planted = b"".join(b"Set-Cookie: %s\r\n" % c for c in PLANTED)
            conn.sendall(
                (ACCEPT % _accept_key(head))
                + planted
                + b"Set-Cookie: env=1\r\n\r\n"
                + _text_frame(b"planted")
            )
            while conn.recv(65536):
                pass
        elif path == b"/refuse":
            body = b"no such socket"
            conn.sendall(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n" % len(body)
                + b"Set-Cookie: rediacc_hub_session=evil; Path=/\r\nSet-Cookie: env=1\r\n\r\n"
                + body
            )
        elif path == b"/hangup":  # a frame, then the environment goes away
            conn.sendall(ACCEPT % _accept_key(head) + b"\r\n" + _text_frame(b"bye"))
        elif path == b"/halfclose":  # reads to EOF, then still answers
            conn.sendall(ACCEPT % _accept_key(head) + b"\r\n")
            received = b""
            while chunk := conn.recv(65536):
                received += chunk
            conn.sendall(_text_frame(b"got %d" % len(received)))
        elif path == b"/headers":  # what the environment was sent, as one frame
            lower = head.lower()
            facts = b"hub-cookie=%d forwarded=%d" % (
                b"rediacc_hub" in lower,
                b"x-forwarded-for: 127.0.0.1" in lower,
            )
            conn.sendall(ACCEPT % _accept_key(head) + b"\r\n" + _text_frame(facts))
            while conn.recv(65536):
                pass
        elif path.startswith(b"/record/"):  # keeps what the browser sent, for the test to read
            conn.sendall(ACCEPT % _accept_key(head) + b"\r\n")
            received = b""
            while chunk := conn.recv(65536):
                received += chunk
            RECORDED[path] = received
        elif path == b"/silent":
            time.sleep(3)


@contextlib.contextmanager
def scripted_environment(ip: str, port: int):
    server = socket.create_server((ip, port))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=_scripted, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        server.close()
        thread.join(5)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    term, odd = free_port(), free_port()
    routes = {"term": term, "odd": odd}
    with echo_environment("alice-term", ALICE_IP, term), scripted_environment(ALICE_IP, odd):
        config = make_config(
            tmp_path_factory.mktemp("relay"),
            routes=routes,
            base_domain=DOMAIN,
            session_secret="7" * 64,
        )
        hub = StubHub([ALICE_IP], routes, start_delay=0)
        with running_proxy(config, hub, free_port()) as running:
            hub._set(make_route("alice", "running", ALICE_IP, routes))
            yield running


def upgrade(proxy, prefix: str, path: str = "/ws") -> tuple[socket.socket, WSConnection, bytes]:
    """A WebSocket handshake through the hub; returns the socket, the client state and any bytes
    that came with the 101."""
    sock = socket.create_connection(("127.0.0.1", proxy.port), 10)
    ws = WSConnection(ConnectionType.CLIENT)
    host = f"{prefix}.{DOMAIN}:{proxy.port}"
    cookie = cookie_for(proxy, "alice")
    sock.sendall(
        ws.send(Request(host=host, target=path, extra_headers=[(b"cookie", cookie.encode())]))
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed during the handshake: {data!r}"
        data += chunk
    ws.receive_data(data)
    return sock, ws, data


def events_until(sock, ws, kinds, timeout: float = 10.0) -> list:
    sock.settimeout(timeout)
    seen = []
    while True:
        for event in ws.events():
            seen.append(event)
            if isinstance(event, kinds) and getattr(event, "message_finished", True):
                return seen
        data = sock.recv(1 << 20)
        ws.receive_data(data or None)
        if not data:
            return [*seen, *ws.events()]


def open_relays(proxy) -> list[Relay]:
    return [r for live in proxy.context.websockets.values() for r in live if isinstance(r, Relay)]


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_relay_carries_small_and_large_messages_and_counts_them(proxy):
    sock, ws, _ = upgrade(proxy, "term")
    with sock:
        assert isinstance(next(iter(ws.events())), AcceptConnection)
        (carrier,) = open_relays(proxy)
        assert carrier.user == "alice" and carrier.prefix == "term"
        # dead peers are noticed (TCP keepalive on both relayed sockets)
        for side in (carrier.client, carrier.upstream):
            relayed = side.transport.get_extra_info("socket")
            assert relayed.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert relayed.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 60
        metrics = carrier.metrics
        assert metrics.websockets.get("term") >= 1
        assert metrics.requests.get("term", "1xx") >= 1
        assert metrics.websockets_open.get("term") == 1
        proxy.hub.touches.clear()
        for i in range(100):
            sock.sendall(ws.send(Message(data=f"m{i}")))
            (*_, echoed) = events_until(sock, ws, TextMessage)
            assert echoed.data == f"alice-term:m{i}"
        assert proxy.hub.touches.count(("alice", "ws-in")) >= 100
        assert proxy.hub.touches.count(("alice", "ws-out")) >= 100
        # 8 MiB one way and back: far more than the socket buffers, so the relay must pause
        # reading while the other side's buffer is full, and lose nothing
        big = "".join(chr(97 + i % 26) for i in range(8 << 20))
        sock.sendall(ws.send(Message(data=big)))
        # the echo environment answers each piece it reads as a message of its own
        echoed, current = [], ""
        sock.settimeout(60)
        while sum(map(len, echoed)) < len(big):
            data = sock.recv(1 << 20)
            assert data, "closed while echoing"
            ws.receive_data(data)
            for event in ws.events():
                current += event.data
                if event.message_finished:
                    assert current.startswith("alice-term:")
                    echoed.append(current.removeprefix("alice-term:"))
                    current = ""
        assert "".join(echoed) == big
        sock.sendall(ws.send(CloseConnection(code=1000)))
        assert any(isinstance(e, CloseConnection) for e in events_until(sock, ws, CloseConnection))
    wait_for(lambda: not open_relays(proxy))
    assert metrics.websockets_open.get("term") == 0


def _frames() -> list[tuple[bytes, bool]]:
    """Client and server frames of every header shape, each with whether it is a data frame."""
    from wsproto.frame_protocol import FrameProtocol, Opcode

    out = []
    for masked in (True, False):  # browsers mask, servers do not
        proto = FrameProtocol(client=masked, extensions=[])
        out += [
            (proto.send_data("hi"), True),
            (proto.send_data(b"x" * 200), True),  # 16-bit length
            (proto.send_data(b"y" * 70000), True),  # 64-bit length
            (proto.send_data(b""), True),
            (proto.ping(b"p"), False),
            (proto.pong(b"p"), False),
            (proto._serialize_frame(Opcode.TEXT, b"part", fin=False), True),
            (proto._serialize_frame(Opcode.CONTINUATION, b"rest"), True),
            (proto.close(1000), False),
        ]
    return out


def test_frame_scanner_tells_data_from_keepalive_across_any_split():
    frames = _frames()
    stream = b"".join(f for f, _ in frames)
    # per byte: does it show a data frame? The last byte of its header and every payload byte
    # do (before the header is complete the opcode may be known, the frame's extent is not).
    is_data = [
        d and i >= websocketrelay.frame_header(f)[0] - 1 for f, d in frames for i in range(len(f))
    ]
    for split in (1, 2, 3, 7, 13, 14, 15, 4096, len(stream)):
        scanner = websocketrelay.FrameScanner()
        for i in range(0, len(stream), split):
            assert scanner.scan(stream[i : i + split]) == any(is_data[i : i + split]), (split, i)
        assert scanner.skip == 0 and scanner.head == b"", split
    # frame by frame: exactly the data frames count as activity
    scanner = websocketrelay.FrameScanner()
    assert [scanner.scan(f) for f, _ in frames] == [d for _, d in frames]
    # a chunk holding only pings and pongs is not activity, one with a data frame is
    scanner = websocketrelay.FrameScanner()
    keepalive = [f for f, d in frames if not d and f[0] & 0x0F in (9, 10)]
    assert scanner.scan(b"".join(keepalive)) is False
    assert scanner.scan(keepalive[0] + frames[0][0]) is True


def test_pings_do_not_count_as_activity_but_messages_do(proxy):
    sock, ws, _ = upgrade(proxy, "term")
    with sock:
        proxy.hub.touches.clear()
        for _ in range(5):
            sock.sendall(ws.send(Ping(b"still there?")))
            (*_, pong) = events_until(sock, ws, Pong)
            assert pong.payload == b"still there?"
        assert proxy.hub.touches == []
        sock.sendall(ws.send(Message(data="typing")))
        events_until(sock, ws, TextMessage)
        assert ("alice", "ws-in") in proxy.hub.touches
        assert ("alice", "ws-out") in proxy.hub.touches


def test_bytes_sent_with_the_101_reach_the_browser(proxy):
    sock, ws, _ = upgrade(proxy, "odd", "/greet")
    with sock:
        (*_, greeting) = events_until(sock, ws, TextMessage)
        assert greeting.data == "hello"


def test_the_environment_gets_the_routers_headers_without_hub_cookies(proxy):
    sock, ws, _ = upgrade(proxy, "odd", "/headers")
    with sock:
        (*_, facts) = events_until(sock, ws, TextMessage)
        assert facts.data == "hub-cookie=0 forwarded=1"


def test_a_101_cannot_set_the_hub_cookie_in_any_spelling(proxy):
    sock, ws, data = upgrade(proxy, "odd", "/plant")
    with sock:
        head = data.split(b"\r\n\r\n")[0]
        assert head.startswith(b"HTTP/1.1 101")
        set_cookies = [
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"set-cookie:")
        ]
        assert set_cookies == [b"env=1"]
        (*_, greeting) = events_until(sock, ws, TextMessage)
        assert greeting.data == "planted"


def test_a_refused_upgrade_is_answered_without_hub_cookies(proxy):
    sock, ws, data = upgrade(proxy, "odd", "/refuse")
    with sock:
        sock.settimeout(5)
        while not data.endswith(b"no such socket"):
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        head = data.split(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"http/1.1 404")
        assert b"set-cookie: env=1" in head
        assert b"rediacc_hub" not in head
        assert any(isinstance(e, RejectConnection) for e in ws.events())
    assert not open_relays(proxy)


def test_the_environment_going_away_closes_the_browser_connection_normally(proxy):
    # the environment closes its socket without a close frame (ttyd when its container stops):
    # the browser gets a normal close (1000), as from mitmproxy's WebSocket layer, so a terminal
    # tab does not reconnect by itself and restart an environment stopped for idleness
    sock, ws, _ = upgrade(proxy, "odd", "/hangup")
    with sock:
        seen = events_until(sock, ws, ())  # read to EOF
        assert [e.data for e in seen if isinstance(e, TextMessage)] == ["bye"]
        # the close frame the browser got (wsproto adds a local 1006 for the EOF after it)
        assert [e.code for e in seen if isinstance(e, CloseConnection)][0] == 1000
    wait_for(lambda: not open_relays(proxy))


def test_a_browser_that_vanishes_leaves_the_environment_a_normal_close(proxy):
    path = b"/record/%d" % time.monotonic_ns()
    sock, ws, _ = upgrade(proxy, "odd", path.decode())
    with sock:
        sock.sendall(ws.send(Message(data="last words")))
    wait_for(lambda: path in RECORDED)
    from wsproto.frame_protocol import FrameProtocol, Opcode

    frames = FrameProtocol(client=False, extensions=[])  # the environment's view: masked frames
    frames.receive_bytes(RECORDED[path])
    received = [(f.opcode, f.payload) for f in frames.received_frames()]
    assert received[0] == (Opcode.TEXT, "last words")
    assert received[1][0] == Opcode.CLOSE and received[1][1][0] == 1000


def test_half_close_is_passed_on_and_the_answer_still_arrives(proxy):
    sock, ws, _ = upgrade(proxy, "odd", "/halfclose")
    with sock:
        sock.sendall(b"x" * 1000)
        sock.shutdown(socket.SHUT_WR)
        (*_, answer) = events_until(sock, ws, TextMessage)
        assert answer.data == "got 1000"
    wait_for(lambda: not open_relays(proxy))


def test_an_environment_that_never_answers_the_upgrade_gets_a_502(proxy, monkeypatch):
    monkeypatch.setattr(websocketrelay, "HEAD_TIMEOUT", 0.5)
    sock, _, data = upgrade(proxy, "odd", "/silent")
    with sock:
        assert data.startswith(b"HTTP/1.1 502")


def test_logout_closes_relayed_websockets(proxy):
    sock, ws, _ = upgrade(proxy, "term")
    with sock:
        (carrier,) = open_relays(proxy)
        cookie = cookie_for(proxy, "alice")
        with browser(DOMAIN, proxy.port) as client:
            client.cookies.set("rediacc_hub_session", cookie.split("=", 1)[1], domain=DOMAIN)
            assert logout(client, f"http://term.{DOMAIN}:{proxy.port}").status_code == 200
        seen = events_until(sock, ws, ())  # the hub closes the connection: EOF
        assert not [e for e in seen if isinstance(e, TextMessage | BytesMessage | RejectData)]
    assert not open_relays(proxy)
    assert carrier.closed


def test_connections_the_relay_cannot_take_use_mitmproxys_websocket_layer(proxy, monkeypatch):
    # Stands in for a TLS or HTTP/2 client connection, which the relay leaves to mitmproxy; the
    # proxy, the environment and the frames are real.
    monkeypatch.setattr(websocketrelay, "client_io", lambda flow: None)
    sock, ws, _ = upgrade(proxy, "term")
    with sock:
        sock.sendall(ws.send(Message(data="via mitmproxy")))
        (*_, echoed) = events_until(sock, ws, TextMessage)
        assert echoed.data == "alice-term:via mitmproxy"
        assert not open_relays(proxy)
        (flows,) = proxy.context.websockets.values()
        (flow,) = flows
        assert flow.websocket is not None and flow.websocket.messages == []
