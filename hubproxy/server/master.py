"""``hub start``'s proxy: a lean embedded mitmproxy ``Master`` with only the addons the hub needs.

mitmdump dispatches every hook to ~35 default addons; this master runs the proxy server, layer
detection and the hub's own addons only (about 2.4x the requests per second, see BRIEF).

``run_loop(..., port)`` gives it an event loop that listens on the hub's port with a deep
backlog (``LISTEN_BACKLOG``; mitmproxy has no option for it). ``hub start --workers N`` runs one
such master per process, all on the same port: ``reuse_port=True`` adds ``SO_REUSEPORT``, and
the kernel spreads new connections across the processes (hubproxy/workers/). WebSocket
upgrades there wait for a slot, so a storm of them does not hold up pages and probes
(``hubproxy.server.admission``), and the loop's thread runs ahead of the control plane's threads
on the CPU (``hubproxy.server.priority``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import signal
import socket
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from mitmproxy import options
from mitmproxy.addons import errorcheck, next_layer, proxyserver
from mitmproxy.master import Master

from hubproxy.addons import PROXY_OPTIONS, adminapi, hub_addons
from hubproxy.addons.metrics import Metrics, ProxyMetrics
from hubproxy.context import HubContext
from hubproxy.server import admission, priority
from hubproxy.server.dispatch import CachedAddonManager

log = logging.getLogger("hubproxy")

# The reverse target is a placeholder: the router sets every flow's upstream address itself.
PLACEHOLDER_TARGET = "http://127.0.0.1:1"

T = TypeVar("T")


# Connections the kernel queues for the hub's port before it accepts them (capped by
# net.core.somaxconn). asyncio's default is 100: when 1,000 browser tabs reconnect at once (a
# hub restart, a network blip) the queue overflows, the kernel drops their handshakes and every
# client waits out TCP's 1 s retransmission, load balancer probes among them
# (docs/performance.md, "Load held").
LISTEN_BACKLOG = 4096
# Connections accepted in one go when the port is readable (asyncio takes the listen backlog for
# it): 4,096 at once would make one loop iteration of setting up a thousand connections, which
# every request in flight then waits for. The rest stay queued in the kernel until the next
# iteration.
ACCEPT_BATCH = 64


class HubPortLoop(asyncio.SelectorEventLoop):
    """An event loop whose listening sockets on the hub's ``port`` get ``LISTEN_BACKLOG`` (and are
    accepted from ``ACCEPT_BATCH`` at a time),
    ``SO_REUSEPORT`` with ``reuse_port`` so several processes serve one port, and WebSocket
    upgrades taken a few at a time (``admission``); listeners on other ports are opened as
    usual."""

    def __init__(self, port: int, reuse_port: bool = False) -> None:
        super().__init__()
        self.port = port
        self.reuse_port = reuse_port
        self.admission = admission.Admission()

    async def create_server(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str | Sequence[str] | None = None,
        port: int | None = None,
        **kwargs: Any,
    ) -> asyncio.Server:
        if port != self.port:
            return await super().create_server(protocol_factory, host, port, **kwargs)
        kwargs.setdefault("backlog", ACCEPT_BATCH)
        if self.reuse_port:
            kwargs["reuse_port"] = True
        server = await super().create_server(
            self.admission.wrap(protocol_factory), host, port, **kwargs
        )
        for sock in server.sockets:  # the kernel's queue, now asyncio has listened with its batch
            with socket.socket(fileno=os.dup(sock.fileno())) as listening:
                listening.listen(LISTEN_BACKLOG)
        return server


def run_loop(main: Coroutine[Any, Any, T], port: int | None = None, reuse_port: bool = False) -> T:
    """``asyncio.run(main)``, on a ``HubPortLoop`` for the hub's ``port`` when given."""
    if port is None:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=lambda: HubPortLoop(port, reuse_port)) as runner:
        return runner.run(main)


def make_master(
    context: HubContext,
    port: int,
    listen_host: str = "",
    *,
    before: Sequence = (),
    modes: Sequence[str] = (),
    health: adminapi.HealthSource | None = None,
) -> Master:
    """A master listening on ``listen_host:port``; call inside a running event loop.

    ``before``: addons that run ahead of the hub's (the workers' forwarding and trust checks);
    ``modes``: further mitmproxy listen modes (worker 0's private listener);
    ``health``: the ``/_hub/health`` document the hub's port answers plain probes with, before
    mitmproxy (``admission``); by default this process's own (``adminapi.health_document``).
    Workers 1..N-1, which send ``/_hub/`` on to worker 0, pass the one worker 0 publishes.
    """
    opts = options.Options()
    master = Master(opts)
    # handlers looked up once per hook name, not per event (bench: see docs/performance.md)
    master.addons = CachedAddonManager(master)
    master.addons.add(
        errorcheck.ErrorCheck(repeat_errors_on_stderr=True),
        proxyserver.Proxyserver(),
        next_layer.NextLayer(),
        *before,
        *hub_addons(context),
    )
    opts.update(
        mode=[f"reverse:{PLACEHOLDER_TARGET}@{port}", *modes],
        listen_host=listen_host,
        **PROXY_OPTIONS,
    )
    loop = asyncio.get_running_loop()
    if isinstance(loop, HubPortLoop):  # upgrades waiting for a slot, in /_hub/metrics
        metrics = proxy_metrics(master)
        loop.admission.count_in(
            metrics.upgrades_waiting, metrics.upgrades_queued, metrics.probes_answered
        )
        if health is None:
            health = functools.partial(adminapi.health_document, context)
        loop.admission.answer = functools.partial(adminapi.probe_answer, health)
    return master


def proxy_metrics(master: Master) -> ProxyMetrics:
    """The request path's counters of ``master`` (shared by its hub addons)."""
    for addon in master.addons.chain:
        if isinstance(addon, Metrics):
            return addon.metrics
    raise LookupError("the master has no hub Metrics addon")


async def run_master(master: Master) -> None:
    """Run ``master`` until shutdown, then close its listening sockets (mitmproxy leaves them to
    process exit, which an embedded master cannot rely on)."""
    try:
        await master.run()
    finally:
        # Connections still open are cancelled with their server; asyncio would log each
        # cancelled handler as an error ("Exception in callback ...") during a normal stop.
        loop = asyncio.get_running_loop()
        previous = loop.get_exception_handler()

        def quiet_cancellations(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            if isinstance(context.get("exception"), asyncio.CancelledError):
                return
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(quiet_cancellations)
        if ps := master.addons.get("proxyserver"):
            await ps.servers.update([])


class FreezeStartup:
    """The last addon: once the proxy runs, everything made while starting (mitmproxy, the
    control plane, docker-py, the addons; hundreds of thousands of objects that live as long as
    the process) leaves the collector's view (``gc.freeze``). A full collection walked all of
    them, 80-130 ms with the loop stopped, and the bursts that make most garbage (a thousand
    WebSockets reconnecting at once) made one every second or so: every request in flight
    waited (docs/performance.md, "Load held"). ``serve`` gives them back when it ends."""

    def running(self) -> None:
        gc.collect()
        gc.freeze()


async def serve(
    context: HubContext,
    port: int,
    listen_host: str = "",
    stop_when: Future | None = None,
    *,
    before: Sequence = (),
    modes: Sequence[str] = (),
) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop_when`` completes, e.g. the control plane died);
    stopping the proxy leaves user environments alone. ``before`` and ``modes``: see
    ``make_master``."""
    handlers = list(logging.getLogger().handlers)
    master = make_master(context, port, listen_host, before=before, modes=modes)
    master.addons.add(FreezeStartup())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, master.shutdown)
    if stop_when is not None:
        # Runs in the control thread; shutdown() is thread-safe. After serve() returns the loop is
        # closed, and a late callback (the hub's own stop cancelling Hub.run) has nothing to do.
        def control_plane_ended(_: Future[object]) -> None:
            with contextlib.suppress(RuntimeError):
                master.shutdown()

        stop_when.add_done_callback(control_plane_ended)
    try:
        log.info("hub: listening on %s:%d", listen_host or "*", port)
        with priority.loop_thread_first():
            await run_master(master)
    finally:
        gc.unfreeze()  # a process that goes on (a test, a restart in-process) collects them again
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        # mitmproxy's log handlers post to this loop, which is about to close: later log lines
        # (the control plane stopping) must not go through them.
        root = logging.getLogger()
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
