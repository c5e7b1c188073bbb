"""A stand-in for a user's environment service: echoes HTTP requests and WebSocket messages.

Used where a test checks what the *proxy* does (headers, cookies, streaming, frames) and the
environment's own behaviour does not matter; end-to-end tests use the real image with ttyd.
Each HTTP answer is JSON: the server's ``name``, the method, path and request headers.
WebSocket text messages come back prefixed with ``<name>:``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Message, Ping, Request, TextMessage


async def _handle(name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        writer.close()
        return
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if ":" in line]
    if any(k.lower() == "upgrade" and v.lower() == "websocket" for k, v in headers):
        await _websocket(name, head, reader, writer)
        return
    length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
    body = await reader.readexactly(length) if length else b""
    if path.startswith("/bytes/"):  # /bytes/N: N bytes of b"x", written in 64 KiB chunks
        size = int(path.split("/")[2])
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size)
        chunk = b"x" * 65536
        while size > 0:
            writer.write(chunk[: min(size, len(chunk))])
            size -= len(chunk)
            await writer.drain()
        writer.close()
        return
    payload = json.dumps(
        {"name": name, "method": method, "path": path, "headers": headers, "body_length": len(body)}
    ).encode()
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nSet-Cookie: env=1; Path=/\r\n"
        + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(payload)
        + payload
    )
    await writer.drain()
    writer.close()


async def _websocket(name, head, reader, writer) -> None:
    ws = WSConnection(ConnectionType.SERVER)
    ws.receive_data(head)
    try:
        while True:
            for event in ws.events():
                if isinstance(event, Request):
                    writer.write(ws.send(AcceptConnection()))
                elif isinstance(event, TextMessage):
                    writer.write(ws.send(Message(data=f"{name}:{event.data}")))
                elif isinstance(event, Ping):
                    writer.write(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    writer.write(ws.send(event.response()))
                    await writer.drain()
                    writer.close()
                    return
            await writer.drain()
            data = await reader.read(65536)
            if not data:
                break
            ws.receive_data(data)
    except ConnectionError:
        pass
    writer.close()


@contextlib.contextmanager
def echo_environment(name: str, host: str = "127.0.0.1", port: int = 0) -> Iterator[int]:
    """Serve on ``host:port`` in a thread; yields the port."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict = {}

    async def main() -> None:
        box["task"] = asyncio.current_task()
        server = await asyncio.start_server(lambda r, w: _handle(name, r, w), host, port)
        box["port"] = server.sockets[0].getsockname()[1]
        started.set()
        async with server:
            await server.serve_forever()

    thread = threading.Thread(target=lambda: _run(loop, main()), daemon=True)
    thread.start()
    started.wait(5)
    try:
        yield box["port"]
    finally:
        loop.call_soon_threadsafe(box["task"].cancel)
        thread.join(5)


def _run(loop: asyncio.AbstractEventLoop, coro) -> None:
    asyncio.set_event_loop(loop)
    with contextlib.suppress(asyncio.CancelledError):
        loop.run_until_complete(coro)
    for task in asyncio.all_tasks(loop):
        task.cancel()
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
