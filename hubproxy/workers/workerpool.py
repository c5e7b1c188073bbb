"""Worker 0 of ``hub start --workers N``: the control plane's process, and the other workers' keeper.

Worker 0 is the ``hub start`` process itself: it runs the ``Hub`` thread and proxies like a
single-process hub, on the port opened with ``SO_REUSEPORT``. After its control plane is ready
and its listeners are up, ``WorkerPool`` (an addon of worker 0's master):

- listens on ``<state-dir>/workers.sock`` (0600) and spawns workers 1..N-1 as
  ``python -O -m hubproxy.workers`` (``worker.py``), each in its own process group;
- accepts a link only from the process it spawned for that index (``SO_PEERCRED``);
- sends each worker the route table whenever the Hub swaps it (looked at every 100 ms), the
  progress of environments workers asked to start, and every session added or removed;
- starts environments workers ask for (through the embedded control plane: one start per user);
- merges the workers' activity stamps into ``Hub.touch`` (newest wins) and keeps their metric
  samples, so ``/_hub/metrics`` reports the sum over all workers plus ``hub_workers`` and
  ``hub_worker_requests_total{worker}``;
- restarts a worker that dies (with backoff), and on shutdown stops every worker by PID
  (SIGTERM, then SIGKILL after a timeout) and removes the socket.

``WorkerIngress`` (``workeringress.py``) is worker 0's first addon: it trusts the browser address
a worker forwards only on the private listener and with the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import struct
import sys
import time
from collections.abc import Coroutine, Iterable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mitmproxy import ctx

from hubcontrol import Counter, Gauge, Histogram, HubError
from hubproxy.addons.adminapi import health_document
from hubproxy.server.controlthread import EmbeddedControlPlane
from hubproxy.workers.link import (
    MAX_MESSAGE,
    PRIVATE_MODE,
    PUBLISH_INTERVAL,
    LinkError,
    backoff,
    decode,
    encode,
    link_path,
    newer,
    routes_to_wire,
    samples_from_wire,
    sum_samples,
    worker_command,
)
from hubproxy.workers.workeringress import WorkerIngress

if TYPE_CHECKING:
    from hubcontrol import HubConfig
    from hubproxy.auth.sessionstore import Session
    from hubproxy.context import HubContext

log = logging.getLogger("hubproxy.workers")

STOP_TIMEOUT = 10.0  # seconds a worker gets to exit after SIGTERM before SIGKILL
HEALTHY_RUN = 30.0  # a worker that ran this long before dying is restarted without backoff
MAX_BUFFERED = 64 << 20  # a worker that lets this much pile up on its link is cut off
REQUESTS = "hub_proxy_requests_total"


def peer_pid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    return struct.unpack("3i", creds)[0]


class FleetMetrics:
    """Worker 0's view of every worker's metric samples (``ProxyMetrics.fleet``)."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    def families(self, own: list) -> list:
        pool = self.pool
        live = dict(pool.samples)
        out = []
        for family in own:
            if isinstance(family, Histogram) or not isinstance(family, Counter):
                out.append(family)
                continue
            parts = [family.samples(), *(s.get(family.name, []) for s in live.values())]
            if not isinstance(family, Gauge):  # a dead worker's counts still count
                parts += [s.get(family.name, []) for s in pool.retired.values()]
            merged = type(family)(family.name, family.help, family.labels)
            for values, value in sum_samples(parts):
                merged.inc(*values, amount=value)
            out.append(merged)
        workers = Gauge(
            "hub_workers", "Proxy processes listening on the port, worker 0 included (--workers)"
        )
        workers.inc(amount=1 + len(pool.ready))
        per_worker = Counter(
            "hub_worker_requests_total",
            "Requests proxied to user environments, by the worker process that proxied them",
            ("worker",),
        )
        own_requests = next((f for f in own if f.name == REQUESTS), None)
        counts = {0: sum(v for _, v in own_requests.samples()) if own_requests else 0.0}
        for index in range(1, pool.count):
            total = 0.0
            for source in (live.get(index, {}), pool.retired.get(index, {})):
                total += sum(v for _, v in source.get(REQUESTS, []))
            counts[index] = total
        for index, total in counts.items():
            per_worker.inc(str(index), amount=total)
        return [*out, workers, per_worker]


class WorkerPool:
    """Spawns, feeds and restarts workers 1..N-1 (an addon of worker 0's master)."""

    def __init__(
        self,
        context: HubContext,
        count: int,
        start_args: Sequence[str],
        *,
        python: str = sys.executable,
        optimize: int | None = None,
    ) -> None:
        self.context = context
        self.count = count
        self.start_args = list(start_args)
        self.python = python
        self.optimize = sys.flags.optimize if optimize is None else optimize
        self.token = secrets.token_urlsafe(32)
        self.link_path = Path(link_path(context.config.state_dir))
        self.private_port: int | None = None
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.links: dict[int, asyncio.StreamWriter] = {}
        self.ready: set[int] = set()
        # latest samples per live worker, and counters of workers that have died, by family
        self.samples: dict[int, dict[str, list]] = {}
        self.retired: dict[int, dict[str, list]] = {}
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False
        self._table = None
        self._watch: set[str] = set()
        self._progress_sent: dict[str, object] = {}
        self._health_sent: list[object] | None = None
        self._pending: dict[str, asyncio.Future] = {}
        self.all_ready = asyncio.Event()

    # -- mitmproxy hooks ---------------------------------------------------------------------------

    async def running(self) -> None:
        proxyserver = ctx.master.addons.get("proxyserver")
        for server in proxyserver.servers:
            if server.mode.full_spec == PRIVATE_MODE and server.listen_addrs:
                self.private_port = server.listen_addrs[0][1]
        if self.private_port is None:
            log.error("hub: the workers' private listener is not up; running without workers")
            return
        from hubproxy.server.master import proxy_metrics

        proxy_metrics(ctx.master).fleet = FleetMetrics(self)
        if isinstance(self.context.control, EmbeddedControlPlane):  # worker 0's: always
            self.context.control.extra_health = self.health
        self.context.sessions.listeners.append(self._sessions_changed)
        self._server = await asyncio.start_unix_server(
            self._on_link, sock=self._bind_link(), limit=MAX_MESSAGE
        )
        self._spawn_task(self._publish(), "publish")
        for index in range(1, self.count):
            self._spawn_task(self._keep_running(index), f"worker {index}")
        log.info(
            "hub: starting %d more proxy workers on port %d",
            self.count - 1,
            self.context.config.port,
        )

    def _bind_link(self) -> socket.socket:
        """The link's listening socket, mode 0600 before it appears under its name (bound to a
        short temporary name, chmod, renamed over any stale socket; no process-wide umask)."""
        tmp = self.link_path.with_name(f".w{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(tmp))
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.link_path)
        except BaseException:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return sock

    async def done(self) -> None:
        await self.stop()

    def health(self) -> dict:
        """For ``/_hub/health``: workers listening (worker 0 included) out of ``--workers``."""
        return {"workers": {"ready": 1 + len(self.ready), "configured": self.count}}

    # -- lifecycle ---------------------------------------------------------------------------------

    def _spawn_task(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _keep_running(self, index: int) -> None:
        failures = 0
        command = worker_command(
            self.python, self.optimize, index, str(self.link_path), self.start_args
        )
        while not self._stopping:
            started = time.monotonic()
            try:
                proc = await asyncio.create_subprocess_exec(
                    *command, stdin=asyncio.subprocess.DEVNULL, process_group=0
                )
            except Exception as e:  # e.g. out of memory or PIDs: try again later
                log.error("hub: cannot start worker %d: %s", index, e)
                proc = None
            if proc is not None:
                self.procs[index] = proc
                log.info("hub: worker %d started (pid %d)", index, proc.pid)
                code = await proc.wait()
                if self._stopping:
                    return
                failures = 0 if time.monotonic() - started >= HEALTHY_RUN else failures + 1
                log.warning(
                    "hub: worker %d (pid %d) exited with %s; restarting it in %.1fs",
                    index,
                    proc.pid,
                    code if code >= 0 else signal.Signals(-code).name,
                    backoff(failures),
                )
            else:
                failures += 1
            await asyncio.sleep(backoff(failures))

    async def stop(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL after ``STOP_TIMEOUT``) and the link."""
        if self._stopping:
            return
        self._stopping = True
        procs = [p for p in self.procs.values() if p.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        if procs:
            _, late = await asyncio.wait(
                [asyncio.create_task(p.wait()) for p in procs], timeout=STOP_TIMEOUT
            )
            for proc in procs:
                if proc.returncode is None:
                    log.warning("hub: worker pid %d did not stop; killing it", proc.pid)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            if late:
                await asyncio.wait(late, timeout=5)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        for writer in list(self.links.values()):
            writer.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(FileNotFoundError):
                self.link_path.unlink()
        with contextlib.suppress(ValueError):
            self.context.sessions.listeners.remove(self._sessions_changed)
        log.info("hub: proxy workers stopped")

    # -- the link ----------------------------------------------------------------------------------

    async def _on_link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = None
        try:
            hello = decode(await reader.readline())
            index = int(hello.get("index", -1))
            proc = self.procs.get(index)
            pid = peer_pid(writer)
            if hello["t"] != "hello" or proc is None or pid != proc.pid or index in self.links:
                log.warning("hub: refused a worker link (index %s, pid %s)", index, pid)
                index = None
                return
            writer.write(encode(self._welcome()))
            self.links[index] = writer
            while line := await reader.readline():
                self._handle(index, decode(line))
        except (ConnectionError, LinkError, ValueError, KeyError, TypeError) as e:
            log.warning("hub: link to worker %s failed: %s", index, e)
        finally:
            if index is not None and self.links.get(index) is writer:
                del self.links[index]
                self.ready.discard(index)
                self.all_ready.clear()
                self._retire(index)
            writer.close()

    def _welcome(self) -> dict:
        control = self.context.control
        self._table = control.snapshot()
        return {
            "t": "welcome",
            "token": self.token,
            "private_port": self.private_port,
            "routes": routes_to_wire(self._table),
            "sessions": [s.to_json() for s in self.context.sessions.sessions()],
            "progress": {user: control.progress(user).to_json() for user in sorted(self._watch)},
            "health": list(health_document(self.context)),
        }

    def _handle(self, index: int, message: dict) -> None:
        kind = message["t"]
        if kind == "batch":
            self._merge_activity(message.get("touch") or [])
            families = message.get("families") or {}
            self.samples[index] = {
                str(name): samples_from_wire(rows) for name, rows in families.items()
            }
        elif kind == "start":
            self._start(str(message["user"]), message.get("template"))
        elif kind == "ready":
            self.ready.add(index)
            if len(self.ready) == self.count - 1:
                self.all_ready.set()
                log.info(
                    "hub: all %d proxy workers listen on port %d",
                    self.count,
                    self.context.config.port,
                )
        else:
            log.warning("hub: unknown message %r from worker %d", kind, index)

    def _retire(self, index: int) -> None:
        """Keep a gone worker's counters (not its gauges) so sums never go down."""
        last = self.samples.pop(index, {})
        kept = self.retired.setdefault(index, {})
        for name, samples in last.items():
            kept[name] = sum_samples([kept.get(name, []), samples])

    def _broadcast(self, message: dict) -> None:
        data = encode(message)
        for index, writer in list(self.links.items()):
            if writer.is_closing():
                continue
            if writer.transport.get_write_buffer_size() > MAX_BUFFERED:
                log.error("hub: worker %d does not read its link; cutting it off", index)
                writer.close()
                continue
            writer.write(data)

    # -- what workers ask for and report -----------------------------------------------------------

    def _start(self, user: str, template: str | None) -> None:
        future = self.context.control.start(user, template)
        self._watch.add(user)
        if self._pending.get(user) is future:
            return
        self._pending[user] = future

        def finished(f: asyncio.Future) -> None:
            if self._pending.get(user) is f:
                del self._pending[user]
            error = None
            if f.cancelled():
                error = "the start was cancelled"
            elif (e := f.exception()) is not None:
                error = e.user_message if isinstance(e, HubError) else str(e)
            self._publish_progress(user)
            self._broadcast({"t": "started", "user": user, "template": template, "error": error})

        future.add_done_callback(finished)

    def _merge_activity(self, stamps: Iterable[Sequence[Any]]) -> None:  # from the wire (JSON)
        control = self.context.control
        for user, at, kind in stamps:
            if newer(float(at), control.activity(user)):
                control.touch(str(user), str(kind))

    def _sessions_changed(self, added: Iterable[Session], removed: Iterable[str]) -> None:
        self._broadcast(
            {
                "t": "sessions",
                "added": [s.to_json() for s in added],
                "removed": list(removed),
            }
        )

    # -- what worker 0 publishes -------------------------------------------------------------------

    def _publish_health(self) -> None:
        """The ``/_hub/health`` document, when it changed: each worker's port answers a load
        balancer's probe with it (``adminapi.probe_answer``), as worker 0's answers with its
        own, instead of sending it through two mitmproxies."""
        health = list(health_document(self.context))  # as JSON carries it
        if health != self._health_sent:
            self._health_sent = health
            self._broadcast({"t": "health", "health": health})

    def _publish_progress(self, user: str) -> None:
        wire = self.context.control.progress(user).to_json()
        if self._progress_sent.get(user) != wire:
            self._progress_sent[user] = wire
            self._broadcast({"t": "progress", "user": user, "progress": wire})

    async def _publish(self) -> None:
        while True:
            try:
                self._publish_once()
            except Exception:  # keep publishing: a stale table would misroute every worker
                log.exception("hub: publishing to the workers failed")
            await asyncio.sleep(PUBLISH_INTERVAL)

    def _publish_once(self) -> None:
        table = self.context.control.snapshot()
        if table is not self._table:
            self._table = table
            self._broadcast({"t": "routes", "routes": routes_to_wire(table)})
        self._publish_health()
        for user in list(self._watch):
            self._publish_progress(user)
            if user not in self._pending:
                self._watch.discard(user)
                self._progress_sent.pop(user, None)


async def serve_with_workers(
    context: HubContext,
    config: HubConfig,
    start_args: Sequence[str],
    stop_when: Future[object] | None = None,
    listen_host: str = "",
) -> None:
    """Worker 0: proxy on ``config.port`` and keep ``config.workers - 1`` workers running."""
    from hubproxy.server.master import serve

    pool = WorkerPool(context, config.workers, start_args)
    await serve(
        context,
        config.port,
        listen_host,
        stop_when,
        before=[WorkerIngress(pool.token), pool],
        modes=[PRIVATE_MODE],
    )
