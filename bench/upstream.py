"""The benchmarks' upstream: a fast HTTP/1.1 keep-alive responder and WebSocket echo.

Runs inside a user's environment container (python3 only, plus wsproto/h11 copied next to it),
bound to ``__SERVICE_IP__``; every contender proxies to it. Raw ``asyncio.Protocol`` with no
framework so the upstream is never the bottleneck a proxy is measured against.

    GET  /1k, /1m, /64m   1 KiB, 1 MiB, 64 MiB bodies (Content-Length, keep-alive)
    POST /upload          a sink: reads the body (Content-Length or chunked), answers its size
    GET  /ws              WebSocket upgrade, echoes every message
    anything else         404

Standard library only apart from wsproto, which is imported on the first upgrade.
"""

from __future__ import annotations

import argparse
import asyncio
import socket

KIB = 1024
MIB = 1024 * KIB
SIZES = {b"/1k": KIB, b"/1m": MIB, b"/64m": 64 * MIB}
CHUNK = 256 * KIB
_ZEROS = memoryview(b"x" * CHUNK)
_SMALL = {
    path: b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n"
    % size
    + (b"x" * size if size <= MIB else b"")
    for path, size in SIZES.items()
}
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
MAX_HEAD = 64 * KIB


def parse_head(head: bytes) -> tuple[bytes, bytes, dict[bytes, bytes]]:
    """``(method, path, headers)`` of a request head (lower-case header names)."""
    lines = head.split(b"\r\n")
    method, path, _ = lines[0].split(b" ", 2)
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return method, path, headers


class Http(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.body_left = 0  # bytes of a Content-Length upload still to read
        self.chunked: bytearray | None = None  # pending chunked upload data
        self.received = 0
        self.ws = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.big: asyncio.Task | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.writable.set()
        if self.big is not None:
            self.big.cancel()

    def data_received(self, data: bytes) -> None:
        if self.ws is not None:
            self._ws_data(data)
            return
        if self.body_left:
            take = min(self.body_left, len(data))
            self.body_left -= take
            self.received += take
            data = data[take:]
            if self.body_left:
                return
            self._answer_upload()
        if self.chunked is not None:
            self.chunked += data
            if not self._drain_chunked():
                return
            data = b""
        if data:
            self.buf += data
        self._process()

    def _process(self) -> None:
        while self.big is None and self.ws is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self.transport.close()
                return
            head = bytes(self.buf[:end])
            del self.buf[: end + 4]
            method, path, headers = parse_head(head)
            path = path.split(b"?", 1)[0]
            if headers.get(b"upgrade", b"").lower() == b"websocket":
                self._upgrade(head + b"\r\n\r\n")
                return
            if method == b"POST" or b"content-length" in headers:
                length = int(headers.get(b"content-length", b"0"))
                self.received = 0
                if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
                    self.chunked = bytearray(self.buf)
                    self.buf.clear()
                    if not self._drain_chunked():
                        return
                    continue
                take = min(length, len(self.buf))
                del self.buf[:take]
                self.received = take
                self.body_left = length - take
                if self.body_left:
                    return
                self._answer_upload()
                continue
            size = SIZES.get(path)
            if headers.get(b"connection", b"").lower() == b"close":
                # answer and close, saying so (a client counts a silent close as an error)
                if size is None:
                    self.transport.write(NOT_FOUND)
                else:
                    head = _SMALL[path].replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
                    self.transport.write(head)
                    if size > MIB:
                        self.big = asyncio.ensure_future(self._send_big(size, close=True))
                        return
                self.transport.close()
                return
            if size is None:
                self.transport.write(NOT_FOUND)
            elif size <= MIB:
                self.transport.write(_SMALL[path])
            else:
                self.transport.write(_SMALL[path])
                self.big = asyncio.ensure_future(self._send_big(size))
                return

    async def _send_big(self, size: int, close: bool = False) -> None:
        left = size
        while left:
            await self.writable.wait()
            if self.transport.is_closing():
                return
            n = min(left, CHUNK)
            self.transport.write(_ZEROS[:n])
            left -= n
        self.big = None
        if close:
            self.transport.close()
            return
        if self.buf:
            self._process()

    def _drain_chunked(self) -> bool:
        """Consume complete chunks; True once the terminating chunk was read."""
        buf = self.chunked
        while True:
            end = buf.find(b"\r\n")
            if end < 0:
                return False
            size = int(bytes(buf[:end]).split(b";", 1)[0], 16)
            if size == 0:
                trailer_end = buf.find(b"\r\n\r\n", end)
                if trailer_end < 0 and buf[end + 2 : end + 4] != b"\r\n":
                    return False
                rest = buf[end + 4 :] if buf[end + 2 : end + 4] == b"\r\n" else b""
                self.chunked = None
                self.buf += rest
                self._answer_upload()
                return True
            if len(buf) < end + 2 + size + 2:
                return False
            self.received += size
            del buf[: end + 2 + size + 2]

    def _answer_upload(self) -> None:
        body = b"%d" % self.received
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    # -- WebSocket echo -----------------------------------------------------------------------

    def _upgrade(self, head: bytes) -> None:
        from wsproto import ConnectionType, WSConnection

        self.ws = WSConnection(ConnectionType.SERVER)
        self._ws_data(head + bytes(self.buf))
        self.buf.clear()

    def _ws_data(self, data: bytes) -> None:
        from wsproto.events import (
            AcceptConnection,
            BytesMessage,
            CloseConnection,
            Ping,
            Request,
            TextMessage,
        )

        ws = self.ws
        ws.receive_data(data)
        out = []
        for event in ws.events():
            if isinstance(event, TextMessage | BytesMessage):
                out.append(
                    ws.send(
                        event.__class__(data=event.data, message_finished=event.message_finished)
                    )
                )
            elif isinstance(event, Request):
                out.append(ws.send(AcceptConnection()))
            elif isinstance(event, Ping):
                out.append(ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                out.append(ws.send(event.response()))
                self.transport.write(b"".join(out))
                self.transport.close()
                return
        if out:
            self.transport.write(b"".join(out))


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Http, host, port, backlog=4096, reuse_address=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
