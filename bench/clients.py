"""Load generators of the benchmarks: wrk for small requests, raw sockets for big bodies, asyncio +
wsproto for WebSockets. Each returns plain numbers; ``bench.run`` interleaves and aggregates.
"""

from __future__ import annotations

import asyncio
import re
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request, TextMessage

if TYPE_CHECKING:
    import httpx

MIB = 1024 * 1024


@dataclass(frozen=True)
class Endpoint:
    """Where a contender listens and what every request carries (Host, the session cookie)."""

    host: str
    port: int
    host_header: str
    cookie: str | None = None

    def header_lines(self) -> bytes:
        lines = f"Host: {self.host_header}\r\n"
        if self.cookie:
            lines += f"Cookie: {self.cookie}\r\n"
        return lines.encode()


# -- small requests: wrk ------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def progress_poll(get: Callable[[Mapping[str, str]], httpx.Response], since: str) -> dict:
    """One ask of ``/_hub/api/progress`` as the hub's progress page makes it: ``get(params)``
    with ``wait=20&since=<version>``, which the hub holds until the start moves on. Returns the
    view ({} for an answer that is not one). An answer at once with nothing new (the hub's
    per-user bound on held polls, or a hub without long polls) waits a second first, as the
    page does."""
    asked = time.monotonic()
    progress = get({"wait": "20", "since": since})
    view: dict = progress.json() if progress.status_code == 200 else {}
    unchanged = not view.get("ready") and view.get("version", "") == since
    if unchanged and time.monotonic() - asked < 0.25:
        time.sleep(1.0)
    return view


def parse_wrk(text: str) -> dict:
    """Requests/s, p50/p99 latency (ms), request count and error count of a ``wrk --latency`` run."""
    out: dict = {"rps": 0.0, "p50_ms": None, "p99_ms": None, "requests": 0, "errors": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        out["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in", text)
    if m:
        out["requests"] = int(m.group(1))
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if m:
            out[key] = float(m.group(1)) * _UNITS[m.group(2)]
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        out["errors"] += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["errors"] += sum(int(g) for g in m.groups())
    return out


def wrk(
    ep: Endpoint,
    path: str = "/1k",
    *,
    connections: int = 50,
    seconds: float = 3,
    close: bool = False,
    requests: int | None = None,
) -> dict:
    """Run wrk (one thread) against ``ep``; ``close`` sends ``Connection: close`` (a new TCP
    connection per request). ``requests`` runs until about that many were made instead."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    cmd += ["-H", f"Host: {ep.host_header}"]
    if ep.cookie:
        cmd += ["-H", f"Cookie: {ep.cookie}"]
    if close:
        cmd += ["-H", "Connection: close"]
    cmd.append(f"http://{ep.host}:{ep.port}{path}")
    if requests is not None:
        return wrk_until(cmd, requests, seconds)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    result = parse_wrk(done.stdout)
    result["work"] = result["requests"]
    result["raw"] = done.stdout
    return result


def wrk_until(cmd: list[str], requests: int, seconds: float = 5) -> dict:
    """Repeat ``seconds`` long wrk runs until ``requests`` requests were made."""
    total, errors = 0, 0
    idle_runs = 0
    while total < requests:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        r = parse_wrk(done.stdout)
        if not r["requests"]:
            # a run this short on a loaded machine may end before the first answer
            idle_runs += 1
            if idle_runs >= 3:
                raise RuntimeError(f"wrk made no requests: {done.stdout}{done.stderr}")
            continue
        total += r["requests"]
        errors += r["errors"]
    return {"requests": total, "errors": errors}


# -- big bodies: raw sockets --------------------------------------------------------------------


class HttpError(RuntimeError):
    pass


def _read_head(sock: socket.socket, buf: bytearray) -> tuple[int, dict[bytes, bytes], bytes]:
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            break
        data = sock.recv(65536)
        if not data:
            raise HttpError("connection closed before the response head")
        buf += data
    head = bytes(buf[:end])
    rest = bytes(buf[end + 4 :])
    buf.clear()
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, rest


def _read_body(sock: socket.socket, headers: dict, rest: bytes, sink: memoryview) -> int:
    """Read (and drop) the response body; returns its length."""
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        data = bytearray(rest)
        total = 0
        while True:
            while b"\r\n" not in data:
                data += sock.recv(1 << 20)
            line, _, _ = bytes(data).partition(b"\r\n")
            size = int(line.split(b";")[0], 16)
            need = len(line) + 2 + size + 2
            while len(data) < need:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise HttpError("connection closed inside a chunked body")
                data += chunk
            del data[:need]
            total += size
            if size == 0:
                return total
    length = int(headers.get(b"content-length", b"0"))
    got = len(rest)
    while got < length:
        n = sock.recv_into(sink, min(len(sink), length - got))
        if not n:
            raise HttpError(f"connection closed after {got} of {length} body bytes")
        got += n
    return length


def transfer(ep: Endpoint, method: str, path: str, size: int, count: int) -> dict:
    """``count`` sequential downloads (GET ``path``) or uploads (POST ``size`` bytes to ``path``)
    on one keep-alive connection; MB/s over the whole run and seconds per transfer (median)."""
    sink = memoryview(bytearray(1 << 20))
    piece = memoryview(b"u" * min(size, 1 << 20))
    sock = socket.create_connection((ep.host, ep.port), timeout=120)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    buf = bytearray()
    try:
        for _ in range(count):
            start = time.perf_counter()
            head = f"{method} {path} HTTP/1.1\r\n".encode() + ep.header_lines()
            if method == "POST":
                sock.sendall(
                    head
                    + b"Content-Type: application/octet-stream\r\n"
                    + f"Content-Length: {size}\r\n\r\n".encode()
                )
                left = size
                while left:
                    n = min(left, len(piece))
                    sock.sendall(piece[:n])
                    left -= n
            else:
                sock.sendall(head + b"\r\n")
            status, headers, rest = _read_head(sock, buf)
            got = _read_body(sock, headers, rest, sink)
            if status != 200:
                raise HttpError(f"{method} {path}: HTTP {status}")
            if method == "GET" and got != size:
                raise HttpError(f"GET {path}: {got} bytes, expected {size}")
            times.append(time.perf_counter() - start)
    finally:
        sock.close()
    total = sum(times)
    return {
        "mbps": size * count / MIB / total,
        "median_s": statistics.median(times),
        "work": size * count / MIB,
    }


# -- WebSockets ---------------------------------------------------------------------------------


async def ws_connect(
    ep: Endpoint, path: str = "/ws"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, WSConnection]:
    reader, writer = await asyncio.open_connection(ep.host, ep.port, limit=1 << 20)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ws = WSConnection(ConnectionType.CLIENT)
    extra = [("Cookie", ep.cookie)] if ep.cookie else []
    writer.write(ws.send(Request(host=ep.host_header, target=path, extra_headers=extra)))
    while True:
        data = await reader.read(65536)
        if not data:
            raise HttpError(f"WebSocket upgrade of {path} refused (connection closed)")
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                return reader, writer, ws
            raise HttpError(f"WebSocket upgrade of {path} refused: {event!r}")


async def _echo_loop(ep: Endpoint, stop_at: float, size: int, latencies: list[float]) -> int:
    reader, writer, ws = await ws_connect(ep)
    payload = "m" * size
    count = 0
    try:
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            writer.write(ws.send(TextMessage(data=payload)))
            got = False
            while not got:
                data = await reader.read(65536)
                if not data:
                    raise HttpError("WebSocket closed during the echo test")
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, TextMessage | BytesMessage) and event.message_finished:
                        got = True
            latencies.append(time.perf_counter() - start)
            count += 1
    finally:
        writer.close()
    return count


def ws_echo(ep: Endpoint, connections: int, seconds: float, size: int = 64) -> dict:
    """Round trips per second and p50/p99 round-trip latency (ms) of ``connections`` clients
    each echoing ``size``-byte text messages back to back."""

    async def main() -> tuple[float, list[float]]:
        latencies: list[float] = []
        stop_at = time.perf_counter() + seconds + 0.0
        start = time.perf_counter()
        counts = await asyncio.gather(
            *(_echo_loop(ep, stop_at, size, latencies) for _ in range(connections))
        )
        elapsed = time.perf_counter() - start
        return sum(counts) / elapsed, latencies

    rate, latencies = asyncio.run(main())
    latencies.sort()
    return {
        "work": len(latencies),
        "rps": rate,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


async def ws_hold(ep: Endpoint, count: int, ready: asyncio.Event, release: asyncio.Event) -> int:
    """Open ``count`` WebSockets (50 at a time), signal ``ready``, hold them until ``release``."""
    conns = []
    sem = asyncio.Semaphore(50)

    async def one() -> None:
        async with sem:
            conns.append(await ws_connect(ep))

    try:
        await asyncio.gather(*(one() for _ in range(count)))
        ready.set()
        await release.wait()
    finally:
        for _, writer, _ in conns:
            writer.close()
    return len(conns)
