"""A proxy worker of ``hub start --workers N`` (workers 1..N-1; worker 0 spawns them).

    python -O -m hubproxy.workers --index=1 --link=<state-dir>/workers.sock -- <hub start flags>

A worker runs only the lean master (``hubproxy.server.master``) on the hub's port, shared with
``SO_REUSEPORT``, with the same addons as worker 0 and a ``RemoteControlPlane``: routes, progress
and sessions are local copies worker 0 keeps up to date over the link, activity stamps and metric
counters are local stores sent to worker 0 once a second. A routed request or WebSocket never
waits for worker 0; a stopped environment is started by asking worker 0 (one message).

Every ``/_hub/`` request (login, OAuth callback, logout, status API, dashboard, metrics, health,
admin API) but the progress poll goes to worker 0 (``forwarder.Forwarder``, the worker's first
addon), so sessions are created and ended in one process only.

A worker exits when its link to worker 0 closes (worker 0 stopped or died), on SIGTERM/SIGINT,
and when its parent dies (``PR_SET_PDEATHSIG``): no orphan keeps the port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from hubcontrol import (
    DEFAULT_LABELS_FILE,
    Counter,
    Histogram,
    HubError,
    Progress,
    Route,
    RouteTable,
    StatusView,
    install_log_formatter,
    load_config,
    parse_start_flags,
)
from hubproxy.auth.sessionstore import Session
from hubproxy.context import Action, ActionResult
from hubproxy.workers.forwarder import Forwarder
from hubproxy.workers.link import (
    BATCH_INTERVAL,
    MAX_MESSAGE,
    LinkError,
    decode,
    encode,
    routes_from_wire,
    samples_to_wire,
)

if TYPE_CHECKING:
    from hubcontrol import HubConfig
    from hubproxy.addons.metrics import ProxyMetrics

log = logging.getLogger("hubproxy.worker")


class RemoteControlPlane:
    """``hubproxy.context.ControlPlane`` of a worker: local copies fed by worker 0.

    A worker forwards every ``/_hub/`` request but the progress poll to worker 0, so what only
    those answer with is empty here: ``status_view()`` has no rows, ``metric_families()`` none,
    and ``act`` fails.
    """

    def __init__(
        self, send: Callable[[dict[str, Any]], None], clock: Callable[[], float] = time.time
    ) -> None:
        self._send = send
        self.clock = clock
        self.table = RouteTable()
        self.linked = True
        self._progress: dict[str, Progress] = {}
        self._stamps: dict[str, tuple[float, str]] = {}
        self._starts: dict[str, asyncio.Future] = {}
        self._templates: dict[str, str | None] = {}

    # -- the ControlPlane protocol (the request path calls these) ---------------------------------

    def route(self, user: str) -> Route | None:
        return self.table.get(user)

    def snapshot(self) -> RouteTable:
        return self.table

    def touch(self, user: str, kind: str) -> None:
        self._stamps[user] = (self.clock(), kind)

    def activity(self, user: str) -> tuple[float, str] | None:
        """This worker's own latest stamp not yet sent to worker 0."""
        return self._stamps.get(user)

    def progress(self, user: str) -> Progress:
        return self._progress.get(user) or Progress()

    def status_view(self) -> StatusView:
        return StatusView()

    def metric_families(self) -> list[Counter | Histogram]:
        return []

    def act(self, target: str, action: Action) -> asyncio.Future[ActionResult]:
        future = asyncio.get_running_loop().create_future()
        future.set_exception(
            HubError(
                "This request should have gone to the hub's first process; try again.",
                f"worker asked to {action} {target!r}: /_hub/ requests go to worker 0",
            )
        )
        return future

    def start(self, user: str, template: str | None) -> asyncio.Future:
        """Ask worker 0 to start ``user``'s environment; one request per user at a time."""
        pending = self._starts.get(user)
        if pending is not None and not pending.done():
            if template is None or template == self._templates.get(user):
                return pending
        future = asyncio.get_running_loop().create_future()
        self._starts[user] = future
        self._templates[user] = template
        self._send({"t": "start", "user": user, "template": template})
        return future

    def health(self) -> dict:
        return {
            "ok": self.linked,
            "control_plane": "worker 0" if self.linked else "unreachable",
            "starting": sorted(self._starts),
        }

    # -- fed by the link ---------------------------------------------------------------------------

    def set_routes(self, rows: Iterable[Mapping[str, Any]]) -> None:
        self.table = routes_from_wire(rows)  # a reference swap, as in the Hub

    def set_progress(self, user: str, data: dict) -> None:
        self._progress[user] = Progress.from_json(data)

    def started(self, user: str, template: str | None, error: str | None) -> None:
        future = self._starts.get(user)
        if future is None or self._templates.get(user) != template:
            return  # a later start with another template is still running
        del self._starts[user]
        if not future.done():
            future.set_result(error)
        if error:
            log.info("hub: starting %s's environment failed: %s", user, error)

    def take_stamps(self) -> list[list]:
        stamps, self._stamps = self._stamps, {}
        return [[user, at, kind] for user, (at, kind) in stamps.items()]

    def unlinked(self) -> None:
        self.linked = False
        for future in self._starts.values():
            if not future.done():
                future.cancel()
        self._starts.clear()


class Worker:
    """One worker process: the link to worker 0 and the proxy."""

    def __init__(self, config: HubConfig, index: int, link_path: str, secret: str) -> None:
        self.config = config
        self.index = index
        self.link_path = link_path
        self.secret = secret
        self.master = None
        self.writer: asyncio.StreamWriter | None = None
        # the /_hub/health document worker 0 last published: this worker's port answers plain
        # probes with it (adminapi.probe_answer); None before the welcome and once unlinked
        self.health: tuple[int, dict] | None = None

    def send(self, message: dict) -> None:
        writer = self.writer
        if writer is not None and not writer.is_closing():
            writer.write(encode(message))

    async def run(self) -> int:
        from hubproxy.auth.sessionstore import SessionStore
        from hubproxy.context import HubContext
        from hubproxy.server.master import make_master, proxy_metrics, run_master

        reader, self.writer = await asyncio.open_unix_connection(self.link_path, limit=MAX_MESSAGE)
        self.send({"t": "hello", "index": self.index, "pid": os.getpid()})
        line = await reader.readline()
        if not line:
            log.error("hub: worker %d: worker 0 closed the link before welcoming it", self.index)
            return 1
        welcome = decode(line)
        if welcome["t"] != "welcome":
            raise LinkError(f"expected welcome, got {welcome['t']!r}")
        control = RemoteControlPlane(self.send)
        self.control = control
        control.set_routes(welcome["routes"])
        for user, data in welcome["progress"].items():
            control.set_progress(user, data)
        self.set_health(welcome.get("health"))
        context = HubContext()
        context.setup(self.config, control, self.secret)
        # worker 0 owns the session file; this process keeps a replica fed by its broadcasts
        context.sessions = SessionStore.replica(
            [Session.from_json(s) for s in welcome["sessions"]], clock=context.clock
        )
        self.context = context
        forwarder = Forwarder(
            int(welcome["private_port"]),
            welcome["token"],
            on_running=lambda: self.send({"t": "ready", "index": self.index}),
        )
        master = make_master(
            context, self.config.port, "", before=[forwarder], health=lambda: self.health
        )
        self.master = master
        metrics = proxy_metrics(master)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, master.shutdown)
        tasks = [
            asyncio.create_task(self._read(reader)),
            asyncio.create_task(self._batches(metrics)),
        ]
        try:
            await run_master(master)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self.writer.close()
        return 0

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                message = decode(line)
                try:
                    self.handle(message)
                except Exception:  # one bad message must not take the worker down
                    log.exception("hub: worker %d: handling %r failed", self.index, message["t"])
        except Exception as e:  # whatever broke the link, the worker stops
            log.error("hub: worker %d: link to worker 0 failed: %s", self.index, e)
        # the link ended (not cancelled by this worker's own stop): no worker 0, no worker
        self.health = None
        self.control.unlinked()
        if self.master is not None:
            log.info("hub: worker %d: worker 0 is gone; stopping", self.index)
            self.master.shutdown()

    def handle(self, message: dict) -> None:
        kind = message["t"]
        control = self.control
        if kind == "routes":
            control.set_routes(message["routes"])
        elif kind == "progress":
            control.set_progress(message["user"], message["progress"])
        elif kind == "health":
            self.set_health(message["health"])
        elif kind == "started":
            control.started(message["user"], message.get("template"), message.get("error"))
        elif kind == "sessions":
            from hubproxy.addons.oauthlogin import close_websockets

            added = [Session.from_json(s) for s in message.get("added", ())]
            removed = list(message.get("removed", ()))
            self.context.sessions.apply(added, removed)
            for sid in removed:
                close_websockets(self.context, sid)
        else:
            log.warning("hub: worker %d: unknown message %r from worker 0", self.index, kind)

    def set_health(self, wire: object) -> None:
        match wire:
            case [int() as status, dict() as body]:
                self.health = (status, body)
            case _:
                raise LinkError(f"a health document is [status, body], not {wire!r:.80}")

    async def _batches(self, metrics: ProxyMetrics) -> None:
        while True:
            await asyncio.sleep(BATCH_INTERVAL)
            families = {
                f.name: samples_to_wire(f.samples())
                for f in metrics.own_families()
                if hasattr(f, "inc")  # counters and gauges; histograms stay local
            }
            self.send({"t": "batch", "touch": self.control.take_stamps(), "families": families})


def _die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the parent (worker 0) dies, however it dies."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m hubproxy.workers")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--link", required=True)
    parser.add_argument("start_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.start_args and args.start_args[0] == "--":
        args.start_args = args.start_args[1:]
    return args


def main(argv: list[str] | None = None) -> int:
    from hubproxy.auth.sessionstore import load_session_secret
    from hubproxy.server.master import run_loop

    parent = os.getppid()
    _die_with_parent()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    log_format = f"%(asctime)s %(levelname)s %(name)s[worker {args.index}]: %(message)s"
    logging.basicConfig(level=logging.INFO, format=log_format)
    install_log_formatter(log_format)  # users' text in log lines stays one inert line
    for noisy in ("httpx", "httpcore", "mitmproxy.proxy.server"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if os.getppid() != parent:
        return 1  # worker 0 died before the death signal was armed
    # The same flags, files and environment as worker 0: the same configuration.
    flags = parse_start_flags(args.start_args)
    labels = flags.pop("labels", None) or str(DEFAULT_LABELS_FILE)
    env_file = flags.pop("env_file", None) or None
    config = load_config(labels, env_file=env_file, flags=flags)
    secret, _ = load_session_secret(config.session_secret, config.state_dir)
    worker = Worker(config, args.index, args.link, secret)
    return run_loop(worker.run(), port=config.port, reuse_port=True)
