"""The policy socket server: one connection per client, each with its own upstream connection.

For every request it parses the HTTP head (``http1``), asks ``hubcontrol.dockerpolicy``, and either
answers with a Docker-style JSON error or forwards the request to the user's daemon and streams the
answer back. Only the small JSON bodies the policy inspects are read whole (capped); everything
else is streamed: build contexts, image loads, logs and events, and hijacked connections (attach,
exec) become a raw relay in both directions. Each client connection gets its own upstream
connection, closed with it, so the proxy never keeps anything open on the container side that the
client has not opened; idle keep-alive connections are closed after a timeout and at once on
``drop_idle`` (SIGUSR1: before a CRIU dump, an open docker.sock connection blocks it).

Allowed bind mounts are pinned (``pins``) and the pins collected when no container binds them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import anyio
from anyio.abc import SocketStream, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream

from hubcontrol import dockerpolicy as policy
from hubcontrol.policysocket import pins as binds
from hubcontrol.policysocket.bindroot import default_bind_root, mount_bind_root, unmount_bind_root
from hubcontrol.policysocket.http1 import (
    FORM_TYPES,
    HEAD_LIMIT,
    HOP_BY_HOP,
    ChunkScanner,
    Head,
    HttpError,
    parse_request_head,
    parse_response_head,
    refusal_response,
)

if TYPE_CHECKING:  # the audit log is imported at the first refusal, not at startup
    from hubcontrol.auditlog import AuditLog

log = logging.getLogger(__name__)

COPY_CHUNK = 256 * 1024
LINGER_SECONDS = 2.0
SOCKET_WATCH_SECONDS = 2.0
# The daemon is gone for good once its socket has refused connections (or been missing) this
# long: nothing is left to serve. A daemon the hub restarts answers again within a start, and the
# hub starts a policy socket after every daemon start anyway (PolicySockets.ensure).
DAEMON_GONE_SECONDS = 10.0
# ... or this long when it never answered since this process started (started ahead of its
# daemon, by hand or by a test): a daemon slow to come up is not gone.
DAEMON_NEVER_SECONDS = 300.0
LINGER_BYTES = 64 << 20
# Client connections served at once. Each holds an upstream connection to the daemon and up to
# one inspected body (dockerpolicy.MAX_JSON_BODY), so this bounds what one user's clients can make
# this process (which runs outside the user's cgroups) and their daemon hold. The docker CLI,
# compose and buildx use a handful; more are answered 503 and closed.
MAX_CONNECTIONS = 64
OVER_LIMIT_HEAD_SECONDS = 5.0  # how long a connection over the limit may take to send its head


@dataclass(frozen=True)
class ProxyConfig:
    """Where the policy socket listens, the daemon it forwards to, and the user's policy."""

    listen: Path
    upstream: Path
    context: policy.PolicyContext
    idle_timeout: float = 30.0
    # Where allowed binds are pinned (<exec-root>/binds, hubcontrol.pins); None refuses binds.
    binds_dir: Path | None = None
    # Refusals are also written to the user's audit log (<audit-dir>/<user>.log) when set.
    audit_dir: Path | None = None
    audit_user: str | None = None
    net_id: int | None = None


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
        self.over_limit = False  # opened while MAX_CONNECTIONS were served: answered 503

    async def run(self) -> None:
        while True:
            timeout = self.server.config.idle_timeout
            if self.over_limit:
                timeout = min(timeout, OVER_LIMIT_HEAD_SECONDS)
            with anyio.move_on_after(timeout) as scope:
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
        if self.over_limit:
            return await self.refuse(
                policy.Refusal(
                    f"hub policy refused a connection: {MAX_CONNECTIONS} connections to this "
                    "docker socket are open already; close some (or wait for them to finish) "
                    "and retry",
                    503,
                ),
                head,
            )
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
            read = await self.read_small_body(head)
            if isinstance(read, policy.Refusal):
                return await self.refuse(read, head)
            body_bytes = read
            parsed = policy.read_json(body_bytes)
            if isinstance(parsed, policy.Refusal):
                return await self.refuse(parsed, head)
            request = request.with_body(parsed)
        refs = policy.references(request)
        if not any(kind == "count" for kind, _ in refs):
            return await self.decide_and_forward(head, request, refs, body_bytes)
        # A count and the create it allows are one step: concurrent creates would each see
        # room for one more and together pass the cap.
        async with self.server.counted:
            return await self.decide_and_forward(head, request, refs, body_bytes)

    async def decide_and_forward(
        self,
        head: Head,
        request: policy.ApiRequest,
        refs: set[tuple[str, str]],
        body_bytes: bytes | None,
    ) -> bool:
        facts = await self.server.lookup(refs)
        if isinstance(facts, policy.Refusal):
            return await self.refuse(facts, head)
        server = self.server
        decision = policy.check(request, server.context, facts)
        made = server.pins.take_made() if server.pins else []  # pinned by this very check
        server.pins_pending.update(made)
        try:
            if isinstance(decision, policy.Refusal):
                return await self.refuse(decision, head)
            if request.endpoint.name in ("container start", "container restart"):
                refusal = await server.refresh_pins(request.params["id"])
                if refusal is not None:
                    return await self.refuse(refusal, head)
            if request.endpoint.body:
                body_bytes = policy.to_wire(decision) if decision is not None else body_bytes
            return await self.forward(head, request, body_bytes)
        finally:
            server.pins_pending.difference_update(made)
            server.pins_settled.update(dict.fromkeys(made, server.pins_epoch))
            if made or request.endpoint.name in PINS_GC_AFTER:
                await server.collect_pins()

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

    async def chunks(self, reader: BufferedByteReceiveStream, *, raw: bool) -> AsyncIterator[bytes]:
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
            status, resp = parse_response_head(raw)
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


PINS_GC_AFTER = frozenset({"container create", "container remove", "container prune"})


class PolicySocket:
    """The policy socket server; ``serve()`` runs it in the current anyio event loop."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.connections: set[_Connection] = set()
        self.counted = anyio.Lock()  # held from a capped create's count to the daemon's answer
        self.refused = 0
        self.inode = 0
        self._audit_log: AuditLog | None = None  # created at the first refusal
        self.pins: binds.BindPins | None = None
        self.context = config.context
        if config.binds_dir is not None and config.context.workspace:
            self.pins = binds.BindPins(config.context.workspace, str(config.binds_dir))
            self.context = dataclasses.replace(config.context, pin=self.pins.pin)
        # Pins of requests still in flight are never collected; a pin settled at or after the
        # epoch at which a collection listed the containers is kept until the next one.
        self.pins_pending: set[str] = set()
        self.pins_settled: dict[str, int] = {}
        self.pins_epoch = 0
        self.pins_lock = anyio.Lock()

    async def collect_pins(self, *, startup: bool = False) -> None:
        """Remove pins no container binds; at ``startup`` also pin again (fresh check) every pin
        a container binds (a reboot emptied /run, or the workspace was made anew). Never raises:
        a pin left behind is collected the next time, and a missing one fails its container's
        start."""
        if self.pins is None:
            return
        async with self.pins_lock:
            epoch = self.pins_epoch
            self.pins_epoch += 1
            try:
                status, data = await self._get_json("/containers/json?all=1")
                if status != 200 or not isinstance(data, list):
                    raise ValueError(f"daemon said {status}")
            except (OSError, ValueError, TimeoutError, anyio.BrokenResourceError) as e:
                log.warning("could not list containers to collect bind pins: %s", e)
                return
            wanted = binds.wanted(data, self.pins.directory)
            for pid in self.pins.ids() - wanted.keys():
                if pid not in self.pins_pending and self.pins_settled.get(pid, -1) <= epoch:
                    self._unpin(pid)
            if startup:
                legacy = default_bind_root(self.config.listen)
                if any(
                    (m.get("Source") or "").startswith(legacy + "/")
                    for c in data
                    for m in c.get("Mounts") or []
                ):
                    # containers created before pins bind through the old nosymfollow view
                    mount_bind_root(self.config.context.workspace, legacy)
                else:
                    unmount_bind_root(legacy)
                # every pin again, with a fresh check, not only those whose mount is gone: a
                # workspace made anew (or remounted) since holds other directories by the same
                # paths, and a pin of the old one would bind deleted files
                for pid, entry in wanted.items():
                    if entry is not None:
                        self._repin(pid, *entry)

    def _unpin(self, pid: str) -> None:
        assert self.pins is not None
        try:
            self.pins.remove(pid)
            self.pins_settled.pop(pid, None)
        except OSError:
            log.exception("could not remove bind pin %s", pid)

    def _repin(self, pid: str, rel: str, readonly: bool) -> str | None:
        """Pin ``pid`` again with a fresh check; the reason when that fails (the pin is then
        gone, so its containers fail to start instead of binding something else)."""
        assert self.pins is not None
        try:
            self.pins.repin(pid, rel, readonly)
            return None
        except (OSError, ValueError) as e:
            log.warning("bind pin %s of %r removed: %s", pid, rel, e)
            return str(e.strerror if isinstance(e, OSError) else e)

    async def refresh_pins(self, ref: str) -> policy.Refusal | None:
        """Before a start through the socket: pin each bind of container ``ref`` again by its
        path, as the daemon would resolve a plain bind (a directory replaced since create is
        bound as it is now). A path that fails the check refuses the start."""
        if self.pins is None:
            return None
        try:
            status, data = await self._get_json(f"/containers/{quote(ref, safe='')}/json")
        except (OSError, ValueError, TimeoutError, anyio.BrokenResourceError) as e:
            return policy.Refusal(f"hub policy could not look up container {ref!r}: {e}", 502)
        if status != 200 or not isinstance(data, dict):
            return None  # the daemon answers the start itself (404)
        described = binds.parse_label(
            ((data.get("Config") or {}).get("Labels") or {}).get(policy.BINDS_LABEL)
        )
        cws = self.config.context.container_workspace.rstrip("/")
        async with self.pins_lock:
            for m in data.get("Mounts") or []:
                pid = binds.pin_id(m.get("Source") or "", self.pins.directory)
                if pid is None or pid not in described:
                    continue
                rel, readonly = described[pid]
                why = self._repin(pid, rel, readonly)
                if why is not None:
                    return policy.Refusal(
                        f"hub policy refused to start container {ref!r}: its bind mount of "
                        f"{cws}/{rel} is no longer a directory or file inside your workspace "
                        f"({why}); remove the container or restore the path"
                    )
        return None

    async def lookup(self, refs: set[tuple[str, str]]) -> policy.Facts | policy.Refusal:
        """Facts about the containers and networks a decision depends on (None: not found)."""
        facts: dict[tuple[str, str], object] = {}
        for kind, ref in refs:
            if kind == "count":
                counted = await self._count(ref)
                if isinstance(counted, policy.Refusal):
                    return counted
                facts[(kind, ref)] = counted
                continue
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

    async def _count(self, kind: str) -> int | policy.Refusal:
        """How many ``kind`` the user has, for the policy's caps (``policy.count_objects``); a
        daemon that cannot say is a refusal: the caps fail closed."""
        try:
            status, data = await self._get_json(
                policy.COUNT_QUERIES[kind], limit=policy.MAX_LISTING_BYTES
            )
            if status != 200:
                raise ValueError(f"daemon said {status}")
            return policy.count_objects(kind, data)
        except (OSError, ValueError, TimeoutError, anyio.BrokenResourceError) as e:
            return policy.Refusal(f"hub policy could not count your {kind}: {e}", 502)

    async def _get_json(self, path: str, limit: int = 8 << 20) -> tuple[int, object]:
        """GET ``path`` from the daemon (HTTP/1.0: one response, then close). A few lines instead
        of an HTTP client library keep the per-user process small and quick to start."""
        with anyio.fail_after(10):
            async with await anyio.connect_unix(str(self.config.upstream)) as stream:
                await stream.send(f"GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
                data = bytearray()
                with contextlib.suppress(anyio.EndOfStream):
                    while len(data) < limit:
                        data += await stream.receive()
        head, _, body = bytes(data).partition(b"\r\n\r\n")
        status, _ = parse_response_head(head)
        return status, (json.loads(body) if status == 200 else None)

    def audit(self, refusal: policy.Refusal, head: Head | None) -> None:
        """Append the refusal to the user's audit log: attempts to get around the policy are
        what an operator most wants to see there.

        This process's own budget (``AuditLog``'s, one per policy socket) bounds what a flood
        of refused requests writes; a flood of the user's other activity, written by the hub,
        spends the hub's budget and cannot crowd refusals out."""
        config = self.config
        if config.audit_dir is None or not config.audit_user:
            return
        from hubcontrol.auditlog import AuditLog, truncate  # only with a log

        if self._audit_log is None:
            self._audit_log = AuditLog(config.audit_dir)
        target = head.target.partition("?")[0] if head else ""
        record = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "user": config.audit_user,
            "net_id": config.net_id,
            "type": "policy",
            "action": "refused",
            "resource": truncate(f"{head.method} {target}", 300) if head else "",
            "attrs": {"status": str(refusal.status), "reason": truncate(refusal.message, 1000)},
        }
        try:
            self._audit_log.append(config.audit_user, [record])
        except Exception:  # the refusal stands even when its record cannot be written
            log.exception("could not write the refusal to the audit log")

    async def _report_dropped(self) -> None:
        """Say how many refusals the budget dropped once the report is due (auditlog.AuditLog)."""
        from hubcontrol.auditlog import DROPPED_REPORT_SECONDS

        while True:
            await anyio.sleep(DROPPED_REPORT_SECONDS)
            if self._audit_log is not None:
                try:
                    self._audit_log.flush_all(force=False)  # one small line, rarely: inline
                except OSError:
                    log.exception("could not write the dropped refusals' count to the audit log")

    def flush_audit(self) -> None:
        """Write the count of refusals the budget dropped (before the process exits)."""
        if self._audit_log is not None:
            try:
                self._audit_log.flush_all()
            except Exception:
                log.exception("could not write the dropped refusals' count to the audit log")

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
        conn.over_limit = len(self.connections) >= MAX_CONNECTIONS
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

    async def serve(
        self, *, task_status: TaskStatus[PolicySocket] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        listen = self.config.listen
        if self.pins is not None:
            self.pins.prepare()
            await self.collect_pins(startup=True)
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
                tg.start_soon(self._report_dropped)
                task_status.started(self)
                await listener.serve(self._handle)
        finally:
            self.flush_audit()
            # Clean up only what is still ours: another policy socket may have taken the path.
            if self.socket_state() in ("ours", "gone"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(listen)
                # Pins stay: the daemon starts containers with restart policies (at its own
                # restart, too) without asking the policy socket, and they must find them.
                if self.pins is not None:
                    unmount_bind_root(default_bind_root(listen))

    def socket_state(self) -> str:
        """``ours``, ``gone`` (someone removed the socket file) or ``replaced``."""
        try:
            st = os.lstat(self.config.listen)
        except FileNotFoundError:
            return "gone"
        return "ours" if stat.S_ISSOCK(st.st_mode) and st.st_ino == self.inode else "replaced"

    async def _watch_socket_file(self, scope: anyio.CancelScope) -> None:
        """Exit once the socket file is gone or replaced (nobody can reach this process any
        more: a daemon's cleanup removed it, or its user was destroyed), or once the daemon has
        been gone for ``DAEMON_GONE_SECONDS`` (killed, crashed, stopped without the hub): either
        way it would only linger, one process per user and network ID. A daemon that never
        answered gets ``DAEMON_NEVER_SECONDS``. Exiting removes the socket file and the
        workspace view (``serve``); the hub's next start of the daemon starts a policy socket
        again."""
        down_since: float | None = anyio.current_time()
        answered = False
        while (state := self.socket_state()) == "ours":
            # checked at once first: the hub starts this process right after the daemon answers,
            # and a daemon killed within the first interval must count as one that answered
            if await self._daemon_refuses():
                down_since = down_since if down_since is not None else anyio.current_time()
                grace = DAEMON_GONE_SECONDS if answered else DAEMON_NEVER_SECONDS
                if anyio.current_time() - down_since >= grace:
                    log.warning(
                        "the daemon at %s has refused connections for %.0f s: it is gone; "
                        "exiting (the hub starts a policy socket with the daemon's next start)",
                        self.config.upstream,
                        grace,
                    )
                    break
            else:
                down_since, answered = None, True
            await anyio.sleep(SOCKET_WATCH_SECONDS)
        else:
            log.info("socket file %s; exiting", state)
        scope.cancel()

    async def _daemon_refuses(self) -> bool:
        """Whether the daemon's socket is missing or refuses connections now. A slow answer is
        not a refusal: a busy daemon is alive."""
        try:
            with anyio.fail_after(5):
                stream = await anyio.connect_unix(str(self.config.upstream))
        except (FileNotFoundError, ConnectionRefusedError):
            return True
        except (OSError, TimeoutError):
            return False
        await stream.aclose()
        return False


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
