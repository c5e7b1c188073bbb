"""Synchronous use of the Hub from plain scripts: ``with hubcontrol.embedded(config) as hub:``.

The Hub runs on an anyio event loop in a background thread (a ``BlockingPortal``, as Starlette's
test client does); ``SyncHub`` forwards each call to it and blocks until it is done.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

from anyio.from_thread import BlockingPortal, start_blocking_portal

from hubcontrol.config import HubConfig
from hubcontrol.environment import Environment
from hubcontrol.hub import EnvironmentStatus, Hub, Progress, RouteTable


class SyncHub:
    """Blocking wrappers around a running ``Hub`` (``.hub``) on its portal (``.portal``)."""

    def __init__(self, hub: Hub, portal: BlockingPortal) -> None:
        self.hub = hub
        self.portal = portal

    def ensure_running(
        self, user: str, template: str | None = None, *, route: str | None = None
    ) -> Environment:
        return self.portal.call(
            functools.partial(self.hub.ensure_running, route=route), user, template
        )

    def stop(self, user: str, checkpoint: bool | None = None) -> None:
        self.portal.call(self.hub.stop, user, checkpoint)

    def destroy(self, user: str, remove_data: bool = False) -> None:
        self.portal.call(self.hub.destroy, user, remove_data)

    def status(self) -> list[EnvironmentStatus]:
        return self.portal.call(self.hub.status)

    def snapshot(self) -> RouteTable:
        return self.hub.snapshot()

    def touch(self, user: str, kind: str = "http") -> None:
        self.hub.touch(user, kind)

    def progress(self, user: str) -> Progress:
        return self.hub.progress(user)


@contextlib.contextmanager
def embedded(config: HubConfig, **hub_options: Any) -> Iterator[SyncHub]:
    """Run a Hub (reconciled, services started) in a background thread for the block's duration.

    Environments keep running after the block ends; stop them explicitly if that is wanted.
    """
    hub = None
    try:
        with start_blocking_portal() as portal:
            hub = portal.call(lambda: Hub(config, **hub_options))
            future, _ = portal.start_task(hub.run)
            try:
                yield SyncHub(hub, portal)
            finally:
                future.cancel()  # leaving the portal then waits for run() to wind down
    finally:
        # after the loop and its worker threads are done, nothing can open a connection again
        if hub is not None:
            hub.engine.close()
