"""The per-user policy socket: the ``/var/run/docker.sock`` an environment sees.

One small long-lived process per user (``python -m hubcontrol.socketproxy``), started by the
daemon supervisor right after the user's dockerd and stopped with it. It does not run inside the
hub process on purpose: the environment bind-mounts the socket *file*, and a socket re-created by a
restarted hub would be a different inode, leaving the container's mount dead. A separate process
keeps the socket alive across hub restarts and upgrades (docs/security.md, "The policy socket").

For every request on the socket it parses the HTTP head, asks ``hubcontrol.dockerpolicy``, and
either answers with a Docker-style JSON error or forwards the request to the user's daemon and
streams the answer back. Only the small JSON bodies the policy inspects are read whole (capped);
everything else is streamed: build contexts, image loads, logs and events, and hijacked
connections (attach, exec) become a raw relay in both directions. Each client connection gets its
own upstream connection, closed with it, so the proxy never keeps anything open on the container
side that the client has not opened; idle keep-alive connections are closed after a timeout and
at once on SIGUSR1 (before a CRIU dump, an open docker.sock connection blocks it).

Allowed bind mounts are rewritten to ``bind_root``, a bind mount of the user's workspace with
``nosymfollow``: the daemon resolves a bind source when the container *starts*, and a symlink
swapped in after the policy's check must fail to resolve rather than lead out of the workspace.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import anyio
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from hubcontrol import dockerpolicy as policy

log = logging.getLogger(__name__)

HEAD_LIMIT = 64 * 1024
LINE_LIMIT = 4096
COPY_CHUNK = 256 * 1024
LINGER_SECONDS = 2.0
SOCKET_WATCH_SECONDS = 5.0
LINGER_BYTES = 64 << 20
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "content-length",
        "upgrade",
        "expect",
    }
)
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP header name (RFC 9110 token)
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


@dataclass(frozen=True)
class ProxyConfig:
    """Where the policy socket listens, the daemon it forwards to, and the user's policy."""

    listen: Path
    upstream: Path
    context: policy.PolicyContext
    idle_timeout: float = 30.0
    mount_bind_root: bool = True  # set up context.bind_root as a nosymfollow view of the workspace
    # Refusals are also written to the user's audit log (<audit-dir>/<user>.log) when set.
    audit_dir: Path | None = None
    audit_user: str | None = None
    net_id: int | None = None


class HttpError(Exception):
    """A malformed request: answered with ``status`` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.refusal = policy.Refusal(message, status)


@dataclass
class Head:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    framing: str  # "none", "length" or "chunked"
    length: int = 0

    def get(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    @property
    def wants_upgrade(self) -> bool:
        conn = (self.get("connection") or "").lower()
        return "upgrade" in {t.strip() for t in conn.split(",")} and bool(self.get("upgrade"))


def parse_request_head(raw: bytes) -> Head:
    """Parse a request head strictly: anything ambiguous (two lengths, folded lines, an unknown
    transfer coding) is refused, since the daemon and the policy must agree on where bodies end."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(400, "hub policy refused a request head that is not ASCII") from None
    lines = text.split("\r\n")
    if any(c in line for line in lines for c in "\r\n\x00"):
        # a bare CR or LF is a line break to the daemon: a header we never saw
        raise HttpError(400, "hub policy refused a request head with a bare CR or LF")
    parts = lines[0].split(" ")
    if (
        len(parts) != 3
        or parts[2] not in ("HTTP/1.1", "HTTP/1.0")
        or not parts[0].isalpha()
        or any(ord(c) < 0x21 or ord(c) == 0x7F for c in parts[1])
    ):
        raise HttpError(400, f"hub policy refused a malformed request line {lines[0][:100]!r}")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.match(name):
            raise HttpError(400, f"hub policy refused a malformed header line {line[:100]!r}")
        if any(c in value for c in "\r\n\x00"):
            raise HttpError(400, "hub policy refused a header with control characters")
        headers.append((name, value.strip()))
    head = Head(parts[0], parts[1], parts[2], headers, "none")
    lengths = [v for k, v in headers if k.lower() == "content-length"]
    codings = [v for k, v in headers if k.lower() == "transfer-encoding"]
    if codings:
        if lengths or len(codings) > 1 or codings[0].lower() != "chunked":
            raise HttpError(
                400,
                "hub policy refused an ambiguous body (Transfer-Encoding must be exactly "
                "'chunked', without Content-Length)",
            )
        head.framing = "chunked"
    elif lengths:
        if len(lengths) > 1 or not lengths[0].isdigit():
            raise HttpError(400, "hub policy refused an invalid or repeated Content-Length")
        head.length = int(lengths[0])
        head.framing = "length" if head.length else "none"
    return head


def refusal_response(refusal: policy.Refusal, version: str = "HTTP/1.1") -> bytes:
    body = refusal.body()
    reason = {400: "Bad Request", 403: "Forbidden", 413: "Payload Too Large", 502: "Bad Gateway"}
    return (
        f"{version} {refusal.status} {reason.get(refusal.status, 'Error')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


_CHUNK_SIZE = re.compile(rb"^([0-9a-fA-F]{1,16})[ \t]*(;.*)?$")


class ChunkScanner:
    """Follows HTTP/1.1 chunked framing across blocks, as strictly as Go's reader: hex sizes
    only (``0x10``, ``+1`` or ``1_0`` would be read differently by the daemon), CRLF line ends,
    a CRLF after each chunk's data, trailers up to an empty line."""

    def __init__(self) -> None:
        self.state = "size"  # size, data, crlf, trailer
        self.remaining = 0
        self.line = bytearray()
        self.decoded = bytearray()

    def take_decoded(self) -> bytes:
        out = bytes(self.decoded)
        self.decoded.clear()
        return out

    def feed(self, data: bytes, *, decode: bool = False) -> int | None:
        """Consume ``data``; the offset just past the body when it ends inside ``data``."""
        i, n = 0, len(data)
        while i < n:
            if self.state == "data":
                take = min(self.remaining, n - i)
                if decode:
                    self.decoded += data[i : i + take]
                i += take
                self.remaining -= take
                if not self.remaining:
                    self.state = "crlf"
                continue
            j = data.find(b"\n", i)
            if j < 0:
                self.line += data[i:]
                if len(self.line) > LINE_LIMIT:
                    raise HttpError(400, "hub policy refused a chunk line over 4 KiB")
                return None
            line = bytes(self.line) + data[i:j]
            self.line.clear()
            i = j + 1
            if not line.endswith(b"\r"):
                raise HttpError(400, "hub policy refused a chunked body with a bare LF")
            line = line[:-1]
            if self.state == "crlf":
                if line:
                    raise HttpError(400, "hub policy refused a malformed chunk")
                self.state = "size"
            elif self.state == "size":
                m = _CHUNK_SIZE.match(line)
                if not m:
                    raise HttpError(400, "hub policy refused a malformed chunk size")
                self.remaining = int(m.group(1), 16)
                self.state = "data" if self.remaining else "trailer"
            elif not line:  # the empty line after the trailers ends the body
                return i
        return None


async def _take(reader: BufferedByteReceiveStream) -> bytes:
    """The next block: whatever is buffered, else one read from the socket. Either way the
    buffer is empty afterwards, so bytes past a body's end can be handed back with feed_data."""
    if reader.buffer:
        return await reader.receive(1 << 30)  # served from the buffer, no socket read
    return await reader.receive(COPY_CHUNK)


class _Connection:
    """One client connection and, once a request is allowed, its own upstream connection."""

    def __init__(self, server: PolicySocket, client: SocketStream) -> None:
        self.server = server
        self.client = client
        self.reader = BufferedByteReceiveStream(client)
        self.upstream: SocketStream | None = None
        self.up_reader: BufferedByteReceiveStream | None = None
        self.idle_scope: anyio.CancelScope | None = None
        self.linger = False  # after a refusal: drain what the client still sends, then close

    async def run(self) -> None:
        while True:
            with anyio.move_on_after(self.server.config.idle_timeout) as scope:
                self.idle_scope = scope
                try:
                    raw = await self.reader.receive_until(b"\r\n\r\n", HEAD_LIMIT)
                except anyio.IncompleteRead:
                    return
                except anyio.DelimiterNotFound:
                    raise HttpError(431, "hub policy refused a request head over 64 KiB") from None
                finally:
                    self.idle_scope = None
            if scope.cancel_called:
                return  # idle keep-alive connection: close it (clients reconnect)
            head = parse_request_head(raw)
            if not await self.handle(head):
                return

    async def refuse(self, refusal: policy.Refusal, head: Head | None) -> bool:
        log.info("refused: %s", refusal.message)
        self.server.refused += 1
        self.server.audit(refusal, head)
        self.linger = True
        await self.client.send(refusal_response(refusal, head.version if head else "HTTP/1.1"))
        return False

    async def handle(self, head: Head) -> bool:
        """Serve one request; return whether the connection stays open for another."""
        request = policy.classify(head.method, head.target)
        if isinstance(request, policy.Refusal):
            return await self.refuse(request, head)
        ctype = (head.get("content-type") or "").lower()
        if ctype.startswith(FORM_TYPES):
            return await self.refuse(
                policy.Refusal(
                    f"hub policy refused a {ctype.split(';')[0]} body: the daemon would read "
                    "query parameters from it"
                ),
                head,
            )
        if (head.get("expect") or "").lower() == "100-continue":
            await self.client.send(f"{head.version} 100 Continue\r\n\r\n".encode())
        body_bytes: bytes | None = None
        if request.endpoint.body:
            body_bytes = await self.read_small_body(head)
            if isinstance(body_bytes, policy.Refusal):
                return await self.refuse(body_bytes, head)
            parsed = policy.read_json(body_bytes)
            if isinstance(parsed, policy.Refusal):
                return await self.refuse(parsed, head)
            request = request.with_body(parsed)
        facts = await self.server.lookup(policy.references(request))
        if isinstance(facts, policy.Refusal):
            return await self.refuse(facts, head)
        decision = policy.check(request, self.server.config.context, facts)
        if isinstance(decision, policy.Refusal):
            return await self.refuse(decision, head)
        if request.endpoint.body:
            body_bytes = policy.to_wire(decision) if decision is not None else body_bytes
        return await self.forward(head, request, body_bytes)

    async def read_small_body(self, head: Head) -> bytes | policy.Refusal:
        cap = policy.MAX_JSON_BODY
        too_big = policy.Refusal(
            f"hub policy refused a {head.method} body over {cap} bytes (limit for inspected "
            "requests)",
            413,
        )
        if head.framing == "none":
            return b""
        if head.framing == "length":
            if head.length > cap:
                return too_big
            return await self.reader.receive_exactly(head.length)
        out = bytearray()
        async for piece in self.chunks(self.reader, raw=False):
            out += piece
            if len(out) > cap:
                return too_big
        return bytes(out)

    async def chunks(self, reader: BufferedByteReceiveStream, *, raw: bool):
        """Yield a chunked body block by block: the raw bytes (framing included, to relay) or the
        decoded data. Blocks are as large as the socket delivers them; the scanner only finds
        where the body ends, so relaying costs one send per block, not several per chunk."""
        scanner = ChunkScanner()
        while True:
            data = await _take(reader)
            end = scanner.feed(data, decode=not raw)
            if end is not None:
                if end < len(data):
                    reader.feed_data(data[end:])  # the next request, pipelined
                data = data[:end]
            if raw:
                if data:
                    yield data
            else:
                decoded = scanner.take_decoded()
                if decoded:
                    yield decoded
            if end is not None:
                return

    async def connect_upstream(self) -> None:
        if self.upstream is None:
            self.upstream = await anyio.connect_unix(str(self.server.config.upstream))
            self.up_reader = BufferedByteReceiveStream(self.upstream)

    def upstream_head(self, head: Head, request: policy.ApiRequest, body: bytes | None) -> bytes:
        prefix = f"/v{request.version[0]}.{request.version[1]}" if request.version else ""
        _, _, query = head.target.partition("?")
        target = quote(prefix + request.path, safe="/:@!$&'()*+,;=-._~")
        if query:
            target += "?" + query
        lines = [f"{head.method} {target} {head.version}"]
        lines += [f"{k}: {v}" for k, v in head.headers if k.lower() not in HOP_BY_HOP]
        if head.wants_upgrade:
            lines += ["Connection: Upgrade", f"Upgrade: {head.get('upgrade')}"]
        if body is not None:
            if body or head.framing != "none":
                lines.append(f"Content-Length: {len(body)}")
        elif head.framing == "chunked":
            lines.append("Transfer-Encoding: chunked")
        elif head.framing == "length":
            lines.append(f"Content-Length: {head.length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def send_body(self, head: Head, body: bytes | None, done: anyio.Event) -> None:
        assert self.upstream is not None
        try:
            if body is not None:
                if body:
                    await self.upstream.send(body)
            elif head.framing == "length":
                remaining = head.length
                while remaining:
                    data = await self.reader.receive(min(remaining, COPY_CHUNK))
                    remaining -= len(data)
                    await self.upstream.send(data)
            elif head.framing == "chunked":
                async for piece in self.chunks(self.reader, raw=True):
                    await self.upstream.send(piece)
        finally:
            done.set()

    async def forward(self, head: Head, request: policy.ApiRequest, body: bytes | None) -> bool:
        try:
            await self.connect_upstream()
        except OSError as e:
            return await self.refuse(
                policy.Refusal(f"your docker daemon is not answering ({e.strerror})", 502), head
            )
        assert self.upstream is not None and self.up_reader is not None
        await self.upstream.send(self.upstream_head(head, request, body))
        body_done = anyio.Event()
        keep_open = True
        async with anyio.create_task_group() as tg:
            tg.start_soon(self.send_body, head, body, body_done)
            raw = await self.up_reader.receive_until(b"\r\n\r\n", HEAD_LIMIT)
            status, resp = _parse_response_head(raw)
            await self.client.send(raw + b"\r\n\r\n")
            hijacked = status == 101 or (
                request.endpoint.hijack
                and status == 200
                and resp.get("content-length") is None
                and "chunked" not in resp.get("transfer-encoding", "").lower()
            )
            if hijacked:
                await body_done.wait()
                await self.relay()
                return False
            if head.method == "HEAD" or status in (204, 304) or 100 <= status < 200:
                pass
            elif "chunked" in resp.get("transfer-encoding", "").lower():
                async for piece in self.chunks(self.up_reader, raw=True):
                    await self.client.send(piece)
            elif resp.get("content-length") is not None:
                remaining = int(resp["content-length"])
                while remaining:
                    data = await self.up_reader.receive(min(remaining, COPY_CHUNK))
                    remaining -= len(data)
                    await self.client.send(data)
            else:
                await self._copy_until_eof(self.up_reader, self.client)
                keep_open = False
            if not body_done.is_set():
                # The daemon answered before reading the whole body: the stream is out of step.
                tg.cancel_scope.cancel()
                keep_open = False
        if head.version == "HTTP/1.0" or "close" in resp.get("connection", "").lower():
            keep_open = False
        if (head.get("connection") or "").lower() == "close":
            keep_open = False
        return keep_open

    async def relay(self) -> None:
        """A hijacked connection: raw bytes both ways until the daemon's side ends."""
        assert self.upstream is not None and self.up_reader is not None
        upstream = self.upstream

        async def client_to_daemon() -> None:
            await self._copy_until_eof(self.reader, upstream)
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                await upstream.send_eof()

        async with anyio.create_task_group() as tg:
            tg.start_soon(client_to_daemon)
            await self._copy_until_eof(self.up_reader, self.client)
            tg.cancel_scope.cancel()

    @staticmethod
    async def _copy_until_eof(reader: BufferedByteReceiveStream, writer: SocketStream) -> None:
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            while True:
                await writer.send(await reader.receive(COPY_CHUNK))

    async def aclose(self) -> None:
        if self.linger:
            # Closing with unread input makes the kernel reset the connection, and the client
            # would report "broken pipe" instead of the refusal it was sent (nginx's lingering
            # close). Drain for a bounded time and amount.
            with anyio.move_on_after(LINGER_SECONDS), contextlib.suppress(Exception):
                await self.client.send_eof()
                drained = 0
                while drained < LINGER_BYTES:
                    drained += len(await self.client.receive(COPY_CHUNK))
        for stream in (self.upstream, self.client):
            if stream is not None:
                with contextlib.suppress(Exception):
                    await stream.aclose()


def _parse_response_head(raw: bytes) -> tuple[int, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ")[1])
    except (IndexError, ValueError):
        raise HttpError(502, "the docker daemon sent a malformed response") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers


class PolicySocket:
    """The policy socket server; ``serve()`` runs it in the current anyio event loop."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.connections: set[_Connection] = set()
        self.refused = 0
        self.inode = 0

    async def lookup(self, refs: set[tuple[str, str]]) -> policy.Facts | policy.Refusal:
        """Facts about the containers and networks a decision depends on (None: not found)."""
        facts: dict[tuple[str, str], object] = {}
        for kind, ref in refs:
            path = {"container": "/containers/{}/json", "network": "/networks/{}"}[kind]
            try:
                status, data = await self._get_json(path.format(quote(ref, safe="")))
            except (OSError, ValueError, TimeoutError, anyio.BrokenResourceError) as e:
                return policy.Refusal(f"hub policy could not look up {kind} {ref!r}: {e}", 502)
            if status == 404:
                facts[(kind, ref)] = None
                continue
            if status != 200 or not isinstance(data, dict):
                return policy.Refusal(
                    f"hub policy could not look up {kind} {ref!r}: daemon said {status}", 502
                )
            if kind == "container":
                labels = (data.get("Config") or {}).get("Labels") or {}
                facts[(kind, ref)] = policy.ContainerFacts(data["Id"], labels)
            else:
                facts[(kind, ref)] = policy.NetworkFacts(data["Id"], data.get("Driver", ""))
        return facts

    async def _get_json(self, path: str) -> tuple[int, object]:
        """GET ``path`` from the daemon (HTTP/1.0: one response, then close). A few lines instead
        of an HTTP client library keep the per-user process small and quick to start."""
        with anyio.fail_after(10):
            async with await anyio.connect_unix(str(self.config.upstream)) as stream:
                await stream.send(f"GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
                data = bytearray()
                with contextlib.suppress(anyio.EndOfStream):
                    while len(data) < (8 << 20):
                        data += await stream.receive()
        head, _, body = bytes(data).partition(b"\r\n\r\n")
        status, _ = _parse_response_head(head)
        return status, (json.loads(body) if status == 200 else None)

    def audit(self, refusal: policy.Refusal, head: Head | None) -> None:
        """Append the refusal to the user's audit log: attempts to get around the policy are
        what an operator most wants to see there."""
        config = self.config
        if config.audit_dir is None or not config.audit_user:
            return
        from hubcontrol.auditlog import AuditLog  # noqa: PLC0415 - only with an audit log

        target = head.target.partition("?")[0] if head else ""
        record = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "user": config.audit_user,
            "net_id": config.net_id,
            "type": "policy",
            "action": "refused",
            "resource": f"{head.method} {target}"[:300] if head else "",
            "attrs": {"status": str(refusal.status), "reason": refusal.message[:1000]},
        }
        try:
            AuditLog(config.audit_dir).append(config.audit_user, [record])
        except Exception:  # the refusal stands even when its record cannot be written
            log.exception("could not write the refusal to the audit log")

    def drop_idle(self) -> int:
        """Close every connection waiting between requests (before a CRIU dump)."""
        dropped = 0
        for conn in list(self.connections):
            if conn.idle_scope is not None:
                conn.idle_scope.cancel()
                dropped += 1
        return dropped

    async def _handle(self, client: SocketStream) -> None:
        conn = _Connection(self, client)
        self.connections.add(conn)
        try:
            await conn.run()
        except Exception as e:
            errors = _leaves(e)
            http = [x for x in errors if isinstance(x, HttpError)]
            if http:
                with contextlib.suppress(Exception):
                    await conn.refuse(http[0].refusal, None)
            elif not all(isinstance(x, _DISCONNECTS) for x in errors):
                log.exception("policy socket connection failed")
        finally:
            self.connections.discard(conn)
            await conn.aclose()

    async def serve(self, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        listen = self.config.listen
        if self.config.mount_bind_root and self.config.context.workspace:
            mount_bind_root(self.config.context.workspace, self.config.context.bind_root)
        # The environment mounts this directory, so its user must be able to traverse it; host
        # users are kept out one level up (the daemon's exec-root is 0700).
        listen.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        _remove_stale_socket(listen)
        listener = await anyio.create_unix_listener(listen)
        os.chmod(listen, 0o666)  # the environment's user (any uid) connects through its mount
        self.inode = os.lstat(listen).st_ino
        try:
            async with listener, anyio.create_task_group() as tg:
                tg.start_soon(self._watch_socket_file, tg.cancel_scope)
                task_status.started(self)
                await listener.serve(self._handle)
        finally:
            # Clean up only what is still ours: another policy socket may have taken the path.
            if self.socket_state() in ("ours", "gone"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(listen)
                if self.config.mount_bind_root:
                    unmount_bind_root(self.config.context.bind_root)

    def socket_state(self) -> str:
        """``ours``, ``gone`` (someone removed the socket file) or ``replaced``."""
        try:
            st = os.lstat(self.config.listen)
        except FileNotFoundError:
            return "gone"
        return "ours" if stat.S_ISSOCK(st.st_mode) and st.st_ino == self.inode else "replaced"

    async def _watch_socket_file(self, scope: anyio.CancelScope) -> None:
        """Exit once the socket file is gone or replaced: nobody can reach this process any more
        (a daemon's cleanup removed it, or its user was destroyed), so it would only linger."""
        while self.socket_state() == "ours":
            await anyio.sleep(SOCKET_WATCH_SECONDS)
        log.info("socket file %s; exiting", self.socket_state())
        scope.cancel()


_DISCONNECTS = (
    anyio.DelimiterNotFound,  # a line or head over its limit: nothing sensible to answer
    anyio.EndOfStream,
    anyio.IncompleteRead,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    ConnectionError,
)


def _leaves(e: BaseException) -> list[BaseException]:
    if isinstance(e, BaseExceptionGroup):
        return [leaf for sub in e.exceptions for leaf in _leaves(sub)]
    return [e]


def _remove_stale_socket(path: Path) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(f"another policy socket is already serving {path}")


def _is_mountpoint(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def mount_bind_root(workspace: str, bind_root: str) -> None:
    """Make ``bind_root`` a view of ``workspace`` that never follows symlinks (idempotent).

    A view already mounted there is kept only if it shows this very workspace: network IDs are
    reused, and a view left behind by an earlier user of this ID would hand that user's
    workspace to the next one."""
    os.makedirs(workspace, exist_ok=True)
    os.makedirs(bind_root, mode=0o700, exist_ok=True)
    while _is_mountpoint(bind_root):
        if _same_directory(bind_root, workspace) and _mount_options(bind_root) >= {
            "nosymfollow",
            "nosuid",
            "nodev",
        }:
            return
        if subprocess.run(["umount", bind_root], capture_output=True).returncode:
            subprocess.run(["umount", "-l", bind_root], capture_output=True, check=True)
    subprocess.run(["mount", "--bind", workspace, bind_root], check=True, capture_output=True)
    subprocess.run(
        ["mount", "-o", "remount,bind,nosymfollow,nosuid,nodev", bind_root],
        check=True,
        capture_output=True,
    )


def _same_directory(a: str, b: str) -> bool:
    sa, sb = os.stat(a), os.stat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _mount_options(path: str) -> set[str]:
    """The per-mount options of the topmost mount at ``path``."""
    options: set[str] = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == path:
                options = set(fields[5].split(","))  # later lines are mounted on top
    return options


def unmount_bind_root(bind_root: str) -> None:
    if _is_mountpoint(bind_root):
        subprocess.run(["umount", "-l", bind_root], capture_output=True)
    with contextlib.suppress(OSError):
        os.rmdir(bind_root)


# --- running it as its own process ---------------------------------------------------------------


@dataclass(frozen=True)
class ProxyArgs:
    """Everything a user's policy socket process is started with."""

    listen: str
    upstream: str
    workspace: str
    container_workspace: str = "/workspace"
    bind_root: str | None = None
    user_networks: tuple[str, ...] = ()
    allowed_registries: tuple[str, ...] = ()
    publish_ip: str | None = None
    idle_timeout: float = 30.0
    pidfile: str | None = None
    audit_dir: str | None = None
    audit_user: str | None = None
    net_id: int | None = None


def default_bind_root(listen: str | Path) -> str:
    """``<exec-root>/workspace`` for a socket at ``<exec-root>/env/docker.sock``: beside the env
    directory, never inside it (the environment mounts that directory, and the view holds the
    checkpoint images the environment must not see)."""
    return str(Path(listen).parent.parent / "workspace")


# ``python -m hubcontrol.socketproxy`` would run hubcontrol/__init__.py, which imports the whole
# control plane (docker-py, the Hub, ...): 1.4 s and ~50 MB for a process that needs none of it.
# The policy socket process registers a bare ``hubcontrol`` package instead and imports only
# this module and the policy.
BOOTSTRAP = (
    "import sys, types; p = types.ModuleType('hubcontrol'); p.__path__ = [sys.argv.pop(1)]; "
    "sys.modules['hubcontrol'] = p; from hubcontrol import socketproxy; "
    "socketproxy.main(sys.argv[1:])"
)


def command(args: ProxyArgs, python: str = sys.executable) -> list[str]:
    """The argv that runs a policy socket as its own process (see ``BOOTSTRAP``); equivalent to
    ``python -m hubcontrol.socketproxy ARGS``. Every value is joined to its flag with ``=``: the
    username comes from the OAuth provider and may start with ``-``."""
    options = [
        ("--listen", args.listen),
        ("--upstream", args.upstream),
        ("--workspace", args.workspace),
        ("--container-workspace", args.container_workspace),
        ("--idle-timeout", str(args.idle_timeout)),
        ("--bind-root", args.bind_root),
        ("--publish-ip", args.publish_ip),
        ("--pidfile", args.pidfile),
        ("--audit-dir", args.audit_dir),
        ("--audit-user", args.audit_user),
        ("--net-id", None if args.net_id is None else str(args.net_id)),
        *(("--user-network", net) for net in args.user_networks),
        *(("--allow-registry", reg) for reg in args.allowed_registries),
    ]
    head = [python, "-c", BOOTSTRAP, str(Path(__file__).resolve().parent)]
    return head + [f"{flag}={value}" for flag, value in options if value is not None]


def args_for(
    spec,
    *,
    workspace: Path | str,
    container_workspace: str,
    net=None,
    allowed_registries: Sequence[str] = (),
    audit: tuple[str, str, int] | None = None,
) -> ProxyArgs:
    """The policy socket of the per-user daemon ``spec`` (a ``supervisor.DaemonSpec``): it serves
    ``spec.env_socket_path`` and forwards to ``spec.socket``; ``net`` (a ``network.UserNetwork``)
    gives the address block the user's own networks and published ports may use; ``audit`` is
    (audit dir, username, net ID) for refusal records in the user's audit log."""
    return ProxyArgs(
        listen=str(spec.env_socket_path),
        upstream=str(spec.socket),
        workspace=str(workspace),
        container_workspace=container_workspace,
        bind_root=str(spec.exec_root / "workspace"),
        user_networks=(str(net.address_pool),) if net is not None else (),
        publish_ip=str(net.bridge_address.ip) if net is not None else None,
        allowed_registries=tuple(allowed_registries),
        pidfile=str(spec.exec_root / "policy.pid"),
        audit_dir=audit[0] if audit else None,
        audit_user=audit[1] if audit else None,
        net_id=audit[2] if audit else None,
    )


def drop_idle_for_daemon(spec) -> bool:
    """``drop_idle_connections`` for the policy socket of the daemon ``spec`` (a DaemonSpec),
    for the checkpointer to call right before a dump."""
    return drop_idle_connections(args_for(spec, workspace="", container_workspace=""))


class PolicySockets:
    """Runs a policy socket process beside every per-user daemon of a ``Hub``.

    The hub awaits ``ensure`` right after it starts or adopts a user's daemon and ``stop`` right
    before it stops one, so a user's environment never runs without its policy socket, and a
    stale stop can never hit the next start (lifecycle events arrive later, and out of the
    hub's lock). The hub must be built with ``env_socket_by_daemon=False``, so dockerd does not
    serve the environment's socket itself.
    """

    def __init__(self, hub, allowed_registries: Sequence[str] = ()) -> None:
        if getattr(hub, "env_socket_by_daemon", False):
            raise ValueError(
                "PolicySockets needs Hub(env_socket_by_daemon=False): dockerd would serve the "
                "environment's socket itself, without the policy"
            )
        self.hub = hub
        self.allowed_registries = tuple(allowed_registries)  # --allow-registry, settable

    def args(self, spec, rec: Mapping, template=None) -> ProxyArgs:
        """The policy socket of the daemon ``spec`` of the user of ``rec`` (a hub record)."""
        from hubcontrol import network, storage  # noqa: PLC0415 - only needed with a hub
        from hubcontrol.config import DEFAULT_WORKSPACE  # noqa: PLC0415

        config = self.hub.config
        if template is None:
            template = config.templates.get(rec.get("template") or config.default_template)
        ephemeral = rec.get("mode") == "ephemeral" or (template is not None and template.ephemeral)
        return args_for(
            spec,
            # an ephemeral environment's workspace is a tmpfs: nothing on the host to bind
            workspace=""
            if ephemeral
            else storage.UserPaths(Path(config.workspace_dir), rec["name"]).workspace,
            container_workspace=template.workspace if template else DEFAULT_WORKSPACE,
            net=network.user_network(rec["net_id"], config.user_subnet_pool),
            allowed_registries=self.allowed_registries,
            audit=(str(config.audit_dir), rec.get("user") or rec["name"], rec["net_id"]),
        )

    async def ensure(self, spec, rec: Mapping, template=None) -> None:
        """Start the user's policy socket unless it runs with these settings; never raises (the
        environment still starts, without a docker socket, and the failure is logged)."""
        daemon_unit = None
        if getattr(self.hub.supervisor, "name", "") == "systemd":
            # the unit really running the daemon (with the network ID in its name)
            daemon_unit = self.hub.supervisor.unit(spec)
        try:
            launch = functools.partial(
                start,
                self.args(spec, rec, template),
                log_path=None if daemon_unit else spec.daemon_dir / "policy.log",
                daemon_unit=daemon_unit,
            )
            await anyio.to_thread.run_sync(launch)
        except Exception:
            log.exception("the policy socket of %s did not start", rec.get("name"))

    async def stop(self, spec) -> None:
        await anyio.to_thread.run_sync(stop, args_for(spec, workspace="", container_workspace=""))


def _cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return []


def _serves(pid: int, listen: str) -> bool:
    """Whether ``pid`` is a policy socket process for ``listen`` (either flag spelling) in this
    process's mount namespace: the same path in another one (a hub in a container, seen in the
    host's /proc) is another file, and that process is not ours to replace or stop."""
    if not _same_mount_namespace(pid):
        return False
    cmdline = _cmdline(pid)
    if not any(b"hubcontrol" in part and b"socketproxy" in part for part in cmdline):
        return False
    flag = f"--listen={listen}".encode()
    pairs = zip(cmdline, cmdline[1:], strict=False)
    return flag in cmdline or (b"--listen", listen.encode()) in pairs


def _same_mount_namespace(pid: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
    except OSError:
        return False


def running_pid(args: ProxyArgs) -> int | None:
    """The PID of the policy socket process serving ``args.listen``, or None. Its pidfile is
    asked first; without one, the process table (a process whose pidfile was removed by a
    cleanup still holds the socket path, and must be found to be replaced)."""
    if args.pidfile:
        with contextlib.suppress(OSError, ValueError):
            pid = int(Path(args.pidfile).read_text().strip())
            if _serves(pid, args.listen):
                return pid
    with os.scandir("/proc") as entries:
        for entry in entries:
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                if _serves(int(entry.name), args.listen) and _alive(int(entry.name)):
                    return int(entry.name)
    return None


def start(
    args: ProxyArgs,
    *,
    log_path: Path | str | None = None,
    daemon_unit: str | None = None,
    timeout: float = 15.0,
) -> int:
    """Start the policy socket process unless one serves ``args.listen`` already; return its PID
    once the socket accepts connections. It outlives the hub, as the user's dockerd does: a
    detached process (``setsid --fork``), or with ``daemon_unit`` (systemd hosts) a transient
    unit bound to the daemon's (``systemd_run_argv``; its output goes to the journal)."""
    pid = running_pid(args)
    if pid is not None:
        if _accepts(args.listen, tries=3) and _cmdline(pid)[-len(command(args)) + 1 :] == [
            a.encode() for a in command(args)[1:]
        ]:
            return pid
        # Running, but its socket file is gone (a daemon restart's cleanup removed it) or it
        # serves other settings (a template switch moved the workspace): start over.
        stop(args)
    out = os.fdopen(_open_log(log_path), "ab") if log_path else subprocess.DEVNULL
    try:
        subprocess.run(
            systemd_run_argv(args, daemon_unit)
            if daemon_unit
            else ["setsid", "--fork", *command(args)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=True,
            close_fds=True,
            cwd="/",
        )
    finally:
        if log_path:
            out.close()
    deadline = time.monotonic() + timeout
    delay = 0.02
    while time.monotonic() < deadline:
        pid = running_pid(args)
        if pid is not None and _accepts(args.listen):
            return pid
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)
    from hubcontrol.errors import DaemonError  # noqa: PLC0415 - keeps the served process small

    raise DaemonError(
        "The hub could not open your environment's docker socket.",
        f"policy socket {args.listen} did not start within {timeout:.0f} s"
        + (f"; see {log_path}" if log_path else ""),
    )


def _open_log(path: str | Path) -> int:
    """The policy socket's log, opened by root without following a link (docs/security.md,
    "Paths root touches"); imported here only, so the policy process itself never loads it."""
    from hubcontrol import safefs

    return safefs.open_own_file(path, os.O_WRONLY | os.O_APPEND, 0o600)


def stop(args: ProxyArgs, timeout: float = 10.0) -> None:
    """Stop the policy socket process (SIGTERM, then SIGKILL) and remove what it leaves."""
    pid = running_pid(args)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    unmount_bind_root(args.bind_root or default_bind_root(args.listen))
    for path in (args.listen, args.pidfile):
        with contextlib.suppress(OSError, TypeError):
            if path and (path == args.pidfile or stat.S_ISSOCK(os.lstat(path).st_mode)):
                os.unlink(path)


def drop_idle_connections(args: ProxyArgs) -> bool:
    """Ask the policy socket to close idle client connections now (before a CRIU dump: an open
    docker.sock connection in the container makes the dump fail). False when none runs."""
    pid = running_pid(args)
    if pid is None:
        return False
    os.kill(pid, signal.SIGUSR1)
    return True


def systemd_run_argv(args: ProxyArgs, daemon_unit: str, python: str = sys.executable) -> list[str]:
    """Run the policy socket as a transient unit beside ``daemon_unit`` (hosts whose PID 1 is
    systemd): a child of the hub would sit in the hub's own unit and die with every hub restart;
    this unit survives it, and stops with the daemon's unit (``BindsTo=``)."""
    base = daemon_unit.removesuffix(".service")
    # only the prefix: a username may itself contain "-dockerd-" (a-dockerd-b vs a-policy-b)
    unit = base.replace("-dockerd-", "-policy-", 1) if "-dockerd-" in base else f"{base}-policy"
    return [
        "systemd-run",
        "--quiet",
        "--collect",
        f"--unit={unit}.service",
        "--slice=rediacc.slice",
        f"--property=BindsTo={daemon_unit}",
        f"--property=After={daemon_unit}",
        "--property=KillMode=mixed",
        "--property=Restart=on-failure",
        *command(args, python),
    ]


def _accepts(path: str, tries: int = 1) -> bool:
    """Whether ``path`` accepts a connection (``tries`` attempts, for a busy host: a needless
    restart would cut the user's open docker sessions)."""
    for attempt in range(tries):
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.settimeout(3)
            probe.connect(path)
            return True
        except OSError:
            if attempt + 1 < tries:
                time.sleep(0.2)
        finally:
            probe.close()
    return False


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def config_from_argv(argv: Sequence[str]) -> tuple[ProxyConfig, str | None]:
    p = argparse.ArgumentParser(
        prog="python -m hubcontrol.socketproxy", description=__doc__.split("\n")[0]
    )
    p.add_argument("--listen", required=True, help="policy socket path to create")
    p.add_argument("--upstream", required=True, help="the user's dockerd socket")
    p.add_argument(
        "--workspace", default="", help="host path of the user's workspace (none: ephemeral)"
    )
    p.add_argument("--container-workspace", default="/workspace")
    p.add_argument("--bind-root", help="nosymfollow view of the workspace (default: beside env/)")
    p.add_argument(
        "--user-network",
        action="append",
        default=[],
        help="CIDR the user's own networks may use (repeatable)",
    )
    p.add_argument(
        "--allow-registry",
        action="append",
        default=[],
        help="registry host[:port] allowed even on a local address (repeatable)",
    )
    p.add_argument("--publish-ip", help='address the daemon binds published ports to (its "ip")')
    p.add_argument("--idle-timeout", type=float, default=30.0)
    p.add_argument("--pidfile", help="write the process ID here while serving")
    p.add_argument("--audit-dir", help="also write refusals to <audit-dir>/<user>.log")
    p.add_argument("--audit-user", help="the username audit records name")
    p.add_argument("--net-id", type=int, help="the user's network ID, for audit records")
    a = p.parse_args(argv)
    listen = Path(a.listen)
    ctx = policy.PolicyContext(
        workspace=os.path.abspath(a.workspace) if a.workspace else "",
        bind_root=a.bind_root or default_bind_root(listen),
        container_workspace=a.container_workspace,
        policy_socket=str(listen),
        user_networks=tuple(a.user_network),
        allowed_registries=frozenset(a.allow_registry),
        publish_ip=a.publish_ip,
    )
    config = ProxyConfig(
        listen=listen,
        upstream=Path(a.upstream),
        context=ctx,
        idle_timeout=a.idle_timeout,
        audit_dir=Path(a.audit_dir) if a.audit_dir else None,
        audit_user=a.audit_user,
        net_id=a.net_id,
    )
    return config, a.pidfile


async def _run(config: ProxyConfig, pidfile: str | None) -> None:
    server = PolicySocket(config)
    async with anyio.create_task_group() as tg:
        await tg.start(_serve_then_stop, server, tg.cancel_scope)
        if pidfile:
            Path(pidfile).write_text(f"{os.getpid()}\n")
        try:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as sigs:
                async for signum in sigs:
                    if signum == signal.SIGUSR1:
                        log.info("dropped %d idle connections", server.drop_idle())
                        continue
                    tg.cancel_scope.cancel()
                    return
        finally:
            # only our own pidfile: a policy socket that replaced this one has written its own
            with contextlib.suppress(OSError, ValueError):
                if pidfile and int(Path(pidfile).read_text()) == os.getpid():
                    os.unlink(pidfile)


async def _serve_then_stop(server: PolicySocket, scope: anyio.CancelScope, *, task_status) -> None:
    """Serve; when serving ends on its own (the socket file went away), end the process."""
    await server.serve(task_status=task_status)
    scope.cancel()


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config, pidfile = config_from_argv(sys.argv[1:] if argv is None else argv)
    anyio.run(_run, config, pidfile)


if __name__ == "__main__":
    main()
