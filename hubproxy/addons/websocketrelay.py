"""Relay upgraded WebSockets as bytes, outside mitmproxy's layers (the hub's hot path for terminals).

mitmproxy decodes every WebSocket frame with wsproto, re-encodes it for the other side and runs a
hook task per message: about 4x the CPU of configurable-http-proxy's byte pipe per round trip
(docs/performance.md). Once the hub has authenticated and routed an upgrade request, the frames
are the user's own business with their own environment, so the hub can do what CHP does: pipe
bytes, stamping activity for chunks that carry data frames (``FrameScanner`` follows frame
headers without decoding payloads; pings and pongs are not a user's activity).

How, for an upgrade request the router sent to an environment (``requestheaders``, after
``Router``):

1. the hub opens the upstream connection itself and sends the request head exactly as the router
   left it (h11 frames it), then reads the response head;
2. anything but ``101 Switching Protocols`` becomes the flow's response (body read up to 1 MiB),
   so mitmproxy answers the browser as for any other request;
3. on 101 the hub takes the browser's connection over from mitmproxy: the transport gets a relay
   protocol, mitmproxy's writer for it is replaced by one that writes nothing, and the flow is
   killed, so mitmproxy finishes its bookkeeping for the connection without touching the socket.
   The 101 head (hub cookies stripped) and any bytes the environment sent after it go to the
   browser, and from then on each side's ``data_received`` writes to the other's transport, with
   flow control (a full write buffer pauses reading on the other side) and half-close.

Fallbacks to mitmproxy's own WebSocket layer (``hubproxy.addons.activity``): a TLS or HTTP/2 client
connection (the bytes on the socket are not the bytes of the exchange), a request with a body,
no handle on the client connection, or the environment refusing the TCP connection (mitmproxy
then answers 502 as for any request).

A relay is registered under its session id in ``HubContext.websockets`` beside mitmproxy
WebSocket flows; logout closes both kinds (``oauthlogin.close_websockets``). The browser
must not send before the 101 (RFC 6455 4.1); bytes it sent anyway that mitmproxy's HTTP parser
already consumed are not relayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import h11
from mitmproxy import http
from mitmproxy.net.http import http1

from hubproxy.auth import cookies
from hubproxy.context import ROUTED, SESSION, TARGET, USER, HubContext
from hubproxy.guard import connection_handler, fail_closed
from hubproxy.server import admission
from hubproxy.web import pages

if TYPE_CHECKING:
    from mitmproxy.proxy.server import ConnectionIO

    from hubproxy.addons.metrics import ProxyMetrics

log = logging.getLogger("hubproxy.relay")

RELAYED = "hub.relayed"  # flow.metadata: the Relay that carries this flow's WebSocket
CONNECT_TIMEOUT = 10.0
HEAD_TIMEOUT = 60.0
MAX_HEAD = 64 * 1024
MAX_REFUSAL_BODY = 1 << 20


class HandshakeError(Exception):
    """The environment's answer to the upgrade request could not be read."""


def relayable(flow: http.HTTPFlow) -> bool:
    """True for a routed HTTP/1.1 WebSocket upgrade on a plain TCP client connection."""
    request = flow.request
    return (
        bool(flow.metadata.get(ROUTED))
        and flow.response is None
        and request.headers.get("upgrade", "").lower() == "websocket"
        and request.http_version == "HTTP/1.1"
        and not flow.client_conn.tls
        and "content-length" not in request.headers
        and "transfer-encoding" not in request.headers
    )


def request_event(request: http.Request) -> h11.Request:
    return h11.Request(
        method=request.data.method,
        target=request.data.path,
        headers=list(request.headers.fields),
        http_version="1.1",
    )


def response_from(
    event: h11.Response | h11.InformationalResponse, body: bytes | None = None
) -> http.Response:
    headers = http.Headers(
        [(name, value) for name, value in event.headers.raw_items()]  # original case
    )
    set_cookies = headers.get_all("set-cookie")
    kept = cookies.without_hub_set_cookies(set_cookies)
    if len(kept) != len(set_cookies):
        headers.set_all("set-cookie", kept)
    now = time.time()
    if body is not None:
        headers.pop("transfer-encoding", None)
        headers["content-length"] = str(len(body))
    return http.Response(
        http_version=b"HTTP/1.1",
        status_code=event.status_code,
        reason=event.reason or b"",
        headers=headers,
        content=body,
        trailers=None,
        timestamp_start=now,
        timestamp_end=now,
    )


class _Handshake(asyncio.Protocol):
    """The upstream connection until the response head (and, for a refusal, its body) is in."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.transport: asyncio.Transport | None = None
        self.result: asyncio.Future = loop.create_future()
        self._head: h11.Response | None = None
        self._body = bytearray()
        # after the 101 and before the relay starts: bytes, and whether the environment closed
        self.held: list[bytes] = []
        self.eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.result.done():
            self.held.append(data)
            return
        self.h11.receive_data(data)
        self._advance()

    def eof_received(self) -> bool:
        if self.result.done():
            self.eof = True
        else:
            self.h11.receive_data(b"")
            self._advance()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.result.done():
            self.result.set_exception(HandshakeError("the environment closed the connection"))

    def _advance(self) -> None:
        try:
            while not self.result.done():
                event = self.h11.next_event()
                if event is h11.NEED_DATA:
                    if self.h11.their_state is h11.CLOSED:
                        raise HandshakeError("the environment closed the connection")
                    return
                if event is h11.PAUSED:
                    raise HandshakeError("the environment switched protocols without a 101")
                if isinstance(event, h11.InformationalResponse):
                    if event.status_code == 101:
                        leftover, _ = self.h11.trailing_data
                        self.result.set_result((event, bytes(leftover)))
                    continue  # 100 Continue and friends
                if isinstance(event, h11.Response):
                    self._head = event
                elif isinstance(event, h11.Data):
                    self._body += event.data
                    if len(self._body) > MAX_REFUSAL_BODY:
                        raise HandshakeError("the refusal's body is over 1 MiB")
                elif isinstance(event, h11.EndOfMessage):
                    self.result.set_result((self._head, bytes(self._body)))
                elif isinstance(event, h11.ConnectionClosed):
                    raise HandshakeError("the environment closed the connection")
        except (h11.ProtocolError, HandshakeError) as e:
            if not self.result.done():
                self.result.set_exception(HandshakeError(str(e) or type(e).__name__))


def frame_header(buf: bytes) -> tuple[int, int, int] | None:
    """``(header size, payload length, opcode)`` of the WebSocket frame header that ``buf``
    starts with (RFC 6455 5.2), or None while ``buf`` is shorter than the header."""
    if len(buf) < 2:
        return None
    length = buf[1] & 0x7F
    size = 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if buf[1] & 0x80 else 0)
    if len(buf) < size:
        return None
    if length == 126:
        length = int.from_bytes(buf[2:4], "big")
    elif length == 127:
        length = int.from_bytes(buf[2:10], "big")
    return size, length, buf[0] & 0x0F


class FrameScanner:
    """Follows the frame boundaries of one direction of a WebSocket without decoding payloads,
    to tell a user's traffic (data frames) from keep-alive (ping, pong, close: ttyd pings every
    few seconds, which must not keep an idle environment from being checkpointed)."""

    __slots__ = ("skip", "head", "data", "closed")

    def __init__(self) -> None:
        self.skip = 0  # payload bytes of the current frame still to come
        self.head = b""  # a frame header split across chunks
        self.data = False  # the current frame is a data frame (text, binary, continuation)
        self.closed = False  # a close frame went by

    @property
    def at_boundary(self) -> bool:
        return not self.skip and not self.head

    def scan(self, chunk: bytes) -> bool:
        """True when ``chunk`` carries any part of a data frame."""
        active = False
        pos, end = 0, len(chunk)
        while pos < end:
            if self.skip:
                take = min(self.skip, end - pos)
                self.skip -= take
                pos += take
                active = active or self.data
                continue
            held = self.head
            parsed = frame_header(held + chunk[pos : pos + 14] if held else chunk[pos : pos + 14])
            if parsed is None:  # fewer than 14 bytes left, and not a whole header yet
                self.head = held + chunk[pos:]
                return active
            size, length, opcode = parsed
            pos += size - len(held)
            self.head = b""
            self.data = opcode < 8
            active = active or self.data
            if opcode == 8:
                self.closed = True
            self.skip = length
        return active


# A normal close (1000), as the environment would send it (unmasked) and as a browser would.
CLOSE_TO_BROWSER = b"\x88\x02\x03\xe8"


def close_to_environment() -> bytes:
    """A normal close frame as a client sends it: masked (RFC 6455 5.3)."""
    mask = os.urandom(4)
    return b"\x88\x82" + mask + bytes(b ^ mask[i] for i, b in enumerate(b"\x03\xe8"))


class _Side(asyncio.Protocol):
    """One direction's reader: what arrives on ``transport`` is written to ``peer.transport``."""

    __slots__ = ("relay", "transport", "peer", "touch", "eof", "frames", "goodbye")

    def __init__(
        self,
        relay: Relay,
        transport: asyncio.Transport,
        touch: Callable[[], None],
        goodbye: bytes,
    ) -> None:
        self.relay = relay
        self.transport = transport
        self.peer: _Side | None = None
        self.touch = touch
        self.eof = False
        self.frames = FrameScanner()
        self.goodbye = goodbye  # the close frame the other side gets if this one just vanishes

    def _farewell(self) -> None:
        """This side's connection ended without a close frame: give the other side a normal
        close, as mitmproxy's WebSocket layer did (wsproto turns an abnormal closure into 1000).
        A terminal (ttyd) reconnects by itself after anything but 1000, so an environment stopped
        for idleness would otherwise be started again at once by a tab left open."""
        frames = self.frames
        peer = self.peer.transport
        if not frames.closed and frames.at_boundary and not peer.is_closing():
            frames.closed = True
            peer.write(self.goodbye)

    def data_received(self, data: bytes) -> None:
        if self.frames.scan(data):
            self.touch()  # stamped before the other side can see the bytes
        self.peer.transport.write(data)

    def eof_received(self) -> bool:
        self._farewell()
        self.eof = True
        peer = self.peer
        if peer.eof:
            self.relay.close()
            return False
        if peer.transport.can_write_eof():
            peer.transport.write_eof()
        return True  # keep our side open: the other direction may still send

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.eof:
            self._farewell()
        self.relay.close()

    # our transport's write buffer is full: stop reading what fills it
    def pause_writing(self) -> None:
        self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self.peer.transport.resume_reading()


class _Detached:
    """Stands in for mitmproxy's ``StreamWriter`` of a connection the relay took over: mitmproxy
    ends its handling of the connection without writing to or closing the socket."""

    transport = None

    def is_closing(self) -> bool:
        return True

    def write(self, data: bytes) -> None:
        pass

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        pass

    async def drain(self) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


def client_io(flow: http.HTTPFlow) -> ConnectionIO | None:
    """mitmproxy's ``ConnectionIO`` of the flow's client connection, if it is a plain stream."""
    handler = connection_handler(flow)
    io = handler.transports.get(flow.client_conn) if handler is not None else None
    if (
        io is None
        or not isinstance(io.writer, asyncio.StreamWriter)
        or not isinstance(io.reader, asyncio.StreamReader)
    ):
        return None
    return io


def keepalive(transport: asyncio.BaseTransport) -> None:
    """TCP keepalive on a relayed connection: a peer that vanished without a FIN (a laptop closed,
    a network gone) is noticed within about two minutes, while a quiet but alive terminal stays
    open as long as it likes (the relay has no idle timeout of its own)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 15)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4)


class Relay:
    """One relayed WebSocket: the browser's and the environment's transports, piped."""

    def __init__(
        self, context: HubContext, metrics: ProxyMetrics, user: str, sid: str, prefix: str
    ) -> None:
        self.context = context
        self.metrics = metrics
        self.user = user
        self.sid = sid
        self.prefix = prefix
        self.client: _Side | None = None
        self.upstream: _Side | None = None
        self._writer = None  # mitmproxy's StreamWriter: closes the socket when collected
        self.closed = False

    def start(
        self,
        client_transport: asyncio.Transport,
        writer: asyncio.StreamWriter,
        upstream_transport: asyncio.Transport,
        head: bytes,
        to_client: bytes,
        to_upstream: bytes,
    ) -> None:
        # before anything is written or registered: once the browser has its 101 (or anyone sees
        # this relay in context.websockets) the sockets are fully set up
        for transport in (client_transport, upstream_transport):
            keepalive(transport)
        touch = self.context.control.touch
        user = self.user
        self._writer = writer
        self.client = _Side(
            self, client_transport, lambda: touch(user, "ws-in"), close_to_environment()
        )
        self.upstream = _Side(
            self, upstream_transport, lambda: touch(user, "ws-out"), CLOSE_TO_BROWSER
        )
        self.client.peer, self.upstream.peer = self.upstream, self.client
        self.context.websockets.setdefault(self.sid, set()).add(self)
        self.metrics.websockets.inc(self.prefix)
        self.metrics.websockets_open.inc(self.prefix)
        # bytes that came with the handshake are the start of each direction's frame stream
        self.upstream.frames.scan(to_client)
        self.client.frames.scan(to_upstream)
        client_transport.write(head + to_client)
        if to_upstream:
            upstream_transport.write(to_upstream)
        client_transport.set_protocol(self.client)
        upstream_transport.set_protocol(self.upstream)
        for transport in (client_transport, upstream_transport):
            if not transport.is_reading():
                transport.resume_reading()

    def close(self) -> None:
        """Close both connections (idempotent); the relay's bookkeeping ends here."""
        if self.closed:
            return
        self.closed = True
        for side in (self.client, self.upstream):
            if side is not None:
                side.transport.close()
        relays = self.context.websockets.get(self.sid)
        if relays is not None:
            relays.discard(self)
            if not relays:
                del self.context.websockets[self.sid]
        self.metrics.websockets_open.dec(self.prefix)
        self._writer = None


class WebSocketRelay:
    """The addon: after ``Router`` decided the route, take routed WebSocket upgrades over."""

    def __init__(self, context: HubContext, metrics: ProxyMetrics) -> None:
        self.context = context
        self.metrics = metrics
        # HUB_WEBSOCKET_RELAY=0: every WebSocket through mitmproxy's own layer (slower)
        self.enabled = os.environ.get("HUB_WEBSOCKET_RELAY", "1") != "0"

    def requestheaders(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        # a plain function for every other request: no coroutine per request on the hot path
        if self.enabled and flow.metadata.get(ROUTED) and relayable(flow):
            return self._relay(flow)
        return None

    @fail_closed
    async def _relay(self, flow: http.HTTPFlow) -> None:
        io = client_io(flow)
        if io is None:
            return  # mitmproxy's WebSocket layer carries it
        loop = asyncio.get_running_loop()
        address = (flow.request.data.host, flow.request.data.port)
        try:
            transport, handshake = await asyncio.wait_for(
                loop.create_connection(lambda: _Handshake(loop), *address), CONNECT_TIMEOUT
            )
        except (TimeoutError, OSError):
            return  # mitmproxy connects again and answers 502, counted as for any request
        try:
            transport.write(handshake.h11.send(request_event(flow.request)))
            transport.write(handshake.h11.send(h11.EndOfMessage()))
            admission.give_back(io.writer.transport)  # only the environment's answer is left
            event, extra = await asyncio.wait_for(handshake.result, HEAD_TIMEOUT)
        except asyncio.CancelledError:
            transport.close()
            raise
        except (TimeoutError, HandshakeError, h11.LocalProtocolError) as e:
            transport.close()
            reason = "no answer in time" if isinstance(e, TimeoutError) else e
            log.warning("hub: WebSocket upgrade for %s: %s", flow.metadata.get(USER), reason)
            flow.response = pages.page(
                502, "Bad Gateway", "Your environment did not answer the WebSocket request."
            )
            return
        if event.status_code != 101:
            transport.close()
            flow.response = response_from(event, extra)
            return
        session = flow.metadata[SESSION]
        reader = io.reader
        if (
            io.writer.transport.is_closing()
            or reader.at_eof()
            or self.context.sessions.get(session.sid, session.user) is None
        ):
            # the browser left, or logged out, while the environment answered
            transport.close()
            flow.response = pages.page(401, "Not logged in", "Log in to use this hub.")
            return
        response = response_from(event)
        held = b"".join(handshake.held)
        to_upstream = bytes(reader._buffer)
        reader._buffer.clear()
        writer, io.writer = io.writer, _Detached()
        relay = Relay(
            self.context,
            self.metrics,
            session.user,
            session.sid,
            flow.metadata[TARGET].prefix or "",
        )
        self.metrics.requests.inc(relay.prefix, "1xx")  # before the browser can see the 101
        relay.start(
            admission.underlying(writer.transport),
            writer,
            transport,
            http1.assemble_response_head(response),
            extra + held,
            to_upstream,
        )
        if handshake.lost:
            relay.upstream.connection_lost(None)  # as if it happened now: a normal close
        elif handshake.eof:
            relay.upstream.eof_received()  # passed on as a half-close, like any later EOF
        flow.metadata[RELAYED] = relay
        flow.response = response
        # mitmproxy ends the flow and its handling of the (detached) client connection
        flow.kill()

    def done(self) -> None:
        """Proxy shutdown: close every relayed WebSocket (environments see a normal close)."""
        for relays in list(self.context.websockets.values()):
            for item in list(relays):
                if isinstance(item, Relay):
                    item.close()
