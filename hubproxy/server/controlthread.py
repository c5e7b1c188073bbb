"""The control plane embedded in the proxy process: ``hubcontrol.Hub`` in a thread of its own.

The thread runs an anyio event loop (``anyio.from_thread.start_blocking_portal``) with
``Hub.run()`` as its main task. The proxy's event loop talks to it in two ways only:

- cheap synchronous calls that never wait for the other thread (``snapshot()``, ``touch()``,
  ``progress()``: a reference read and dict stores, documented thread-safe by ``Hub``);
- slow work (starting an environment) handed over with ``portal.start_task_soon`` and awaited as
  an ``asyncio`` future, never ``portal.call()`` from an async hook.

Stopping the thread cancels ``Hub.run()``, which leaves every user environment running (the next
hub process rebuilds its routes from the daemons).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import Callable, Sequence

from anyio.from_thread import BlockingPortal, start_blocking_portal

from hubcontrol import (
    Counter,
    Histogram,
    Hub,
    HubError,
    Progress,
    Route,
    RouteTable,
    StatusView,
    UsernameError,
)
from hubproxy.context import Action, ActionResult, UnknownUser

# Logger names are what operators filter the journal by: they stayed when the modules moved.
log = logging.getLogger("hubproxy.runtime")


class EmbeddedControlPlane:
    """``hubproxy.context.ControlPlane`` over a ``Hub`` living in another thread's event loop.

    Uses the Hub's public API only (docs/architecture.md): ``snapshot``, ``touch``, ``activity``,
    ``progress``, ``stats``, ``ensure_running``, ``record``, ``stop``.
    """

    def __init__(
        self, hub: Hub, portal: BlockingPortal, running: Callable[[], bool] = lambda: True
    ) -> None:
        self.hub = hub
        self.portal = portal
        self._running = running
        self._starts: dict[str, asyncio.Future] = {}
        self._templates: dict[str, str | None] = {}
        # more of the health document (hub start --workers: how many workers serve)
        self.extra_health: Callable[[], dict] | None = None

    def route(self, user: str) -> Route | None:
        return self.hub.snapshot().get(user)

    def snapshot(self) -> RouteTable:
        return self.hub.snapshot()

    def touch(self, user: str, kind: str) -> None:
        self.hub.touch(user, kind)

    def activity(self, user: str) -> tuple[float, str] | None:
        return self.hub.activity(user)

    def progress(self, user: str) -> Progress:
        return self.hub.progress(user)

    def status_view(self) -> StatusView:
        return self.hub.stats.view()

    def metric_families(self) -> Sequence[Counter | Histogram]:
        return self.hub.stats.lifecycle.families()

    def start(self, user: str, template: str | None) -> asyncio.Future:
        """Start ``user``'s environment; concurrent calls share one start (one per user)."""
        pending = self._starts.get(user)
        if pending is not None and not pending.done():
            if template is None or template == self._templates.get(user):
                return pending
            # A different template picked at login while a start runs: start again with it
            # (the Hub's per-user lock runs the two one after the other).
        future = asyncio.wrap_future(
            self.portal.start_task_soon(self.hub.ensure_running, user, template)
        )
        self._starts[user] = future
        self._templates[user] = template

        def finished(f: asyncio.Future, user: str = user) -> None:
            if self._starts.get(user) is f:
                del self._starts[user]
            if f.cancelled():
                return
            if (e := f.exception()) is not None:
                why = e.log_message if isinstance(e, HubError) else e
                log.warning("hub: starting %s's environment failed: %s", user, why)

        future.add_done_callback(finished)
        return future

    def act(self, target: str, action: Action) -> asyncio.Future[ActionResult]:
        return asyncio.wrap_future(self.portal.start_task_soon(self._act, target, action))

    async def _act(self, target: str, action: Action) -> ActionResult:
        """Runs on the Hub's loop: resolve ``target`` (a username, else a safe name of a status
        row) and stop or checkpoint it."""
        hub = self.hub
        try:
            rec = hub.record(target)
        except UsernameError:
            rec = None
        if rec is None:
            for row in hub.stats.view().rows:
                if target in (row.user, row.name):
                    rec = hub.record(row.user)  # record() maps a username to its safe name
                    break
        if rec is None:
            raise UnknownUser(target)
        user = rec.get("user") or rec["name"]
        if action == "checkpoint-reset":
            await hub.reset_checkpointing(user)
        elif action == "checkpoint":
            await hub.stop(user, checkpoint=True)
        elif action == "stop" or rec.get("state") not in ("stopped", "checkpointed", None):
            await hub.stop(user, checkpoint=False)
        rec = hub.record(user) or rec
        return ActionResult(rec.get("user") or user, rec.get("state"), rec.get("template"))

    def health(self) -> dict:
        ok = self._running()
        health = {
            "ok": ok,
            "control_plane": "running" if ok else "stopped",
            "starting": sorted(self._starts),
        }
        if self.extra_health is not None:
            health.update(self.extra_health())
        return health


class ControlThread:
    """Runs ``Hub.run()`` in a thread; ``start()`` returns once the hub reported it is ready."""

    def __init__(self, hub: Hub | None = None, factory: Callable[[], Hub] | None = None) -> None:
        """``hub`` is used as given; else ``factory()`` makes it inside the control thread's loop
        (so anything it creates belongs to that loop)."""
        self.hub = hub
        self._factory = factory
        self._stack = contextlib.ExitStack()
        self.portal = None
        self._run = None

    def start(self, timeout: float | None = None) -> EmbeddedControlPlane:
        self.portal = self._stack.enter_context(start_blocking_portal())
        try:
            if self.hub is None:
                self.hub = self.portal.call(self._factory)
            self._run, _ = self.portal.start_task(self.hub.run, name="hub.run")
        except BaseException:
            self._stack.close()
            raise
        return EmbeddedControlPlane(self.hub, self.portal, self.running)

    @property
    def run_future(self) -> concurrent.futures.Future[None]:
        """The ``concurrent.futures.Future`` of ``Hub.run()``: done when the control plane ends."""
        return self._run

    def running(self) -> bool:
        return self._run is not None and not self._run.done()

    def failure(self) -> BaseException | None:
        if self._run is None or not self._run.done() or self._run.cancelled():
            return None
        return self._run.exception()

    def stop(self) -> None:
        """Cancel ``Hub.run()`` (environments keep running) and end the thread."""
        if self._run is not None and not self._run.done():
            self._run.cancel()
        engine = self.hub.engine if self.hub is not None else None
        with contextlib.suppress(Exception):
            self._stack.close()
        if engine is not None:
            with contextlib.suppress(Exception):
                engine.close()
        log.info("hub: control plane stopped (user environments keep running)")
