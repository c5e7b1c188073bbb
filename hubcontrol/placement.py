"""Where an environment runs: the variable part of a start, as a small strategy.

A start (``Hub._ensure_running``) is a list of named steps: pick the template, prepare storage,
**place**, network, image, container, hooks, readiness. Placing is the one step whose work
differs with where the environment runs, so it is a strategy with this contract (in the spirit
of JupyterHub's ``Spawner``: documented on the base class, chosen per template):

``prepare(rec, template, net) -> Placed``
    Make a Docker engine ready for the user's environment and say how to reach it: the engine's
    URL, the environment socket directory to mount (None: no docker inside), the cgroup parent
    for the environment container, and the engine an image may be copied from. Called under the
    user's lock with the network ID already allocated and the user's tree prepared. Idempotent:
    an engine already running is adopted, not restarted. Sets its own progress step. Raises a
    ``HubError`` subclass on failure.

Two placements exist on this host:

* ``PerUserDaemon`` (``rediacc.hub.docker=per-user``): the user's own dockerd under the daemon
  supervisor, its isolation rules and its policy socket;
* ``HostDaemon`` (``rediacc.hub.docker`` empty): the host's daemon (``--docker-socket``), with
  the user's network isolation only.

A placement on a cluster engine (docs/scaling.md) implements the same contract: it returns the
URL of an engine it started elsewhere. Seeded data-roots (``hubcontrol.seeds``) plug into
``PerUserDaemon.prepare``: an empty data-root is cloned from its template's seed before the
daemon's first start, so the image step finds the image there.
"""

from __future__ import annotations

import abc
import concurrent.futures
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import docker

from hubcontrol import images, network, userns

if TYPE_CHECKING:
    from hubcontrol.config import Template
    from hubcontrol.hub import Hub
    from hubcontrol.records import UserRecord


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placed:
    """What the rest of a start needs from a placement."""

    docker_url: str  # the engine the environment container is created on
    env_dir: Path | None = None  # mounted into the environment: its docker socket directory
    cgroup_parent: str | None = None  # the cgroup the environment container goes under
    image_source: docker.DockerClient | None = None  # where a missing image is copied from
    image_layers: images.LayerIndex | None = None  # what the source's save streams hold
    # done once the environment's docker socket (the policy socket) accepts; None: nothing to
    # wait for. The start waits for it before anything in the environment may use the socket.
    socket_ready: concurrent.futures.Future[None] | None = None


class Placement(abc.ABC):
    """Where a user's environment runs (see the module docstring for the contract)."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    @abc.abstractmethod
    async def prepare(
        self, rec: UserRecord, template: Template, net: network.UserNetwork
    ) -> Placed: ...


class PerUserDaemon(Placement):
    """The user's own dockerd: bridge, isolation, daemon, limits, daemon rules, policy socket."""

    async def prepare(
        self, rec: UserRecord, template: Template, net: network.UserNetwork
    ) -> Placed:
        hub, call = self.hub, self.hub.engine.call
        hub._step(rec, "daemon", "Starting your Docker daemon")
        spec = hub._spec(rec.name, net.net_id, template)
        hub._part(rec, "bridge")  # the parts' seconds: the user's record, last_start
        await call(network.ensure_bridge, net.bridge, net.bridge_address)
        await call(network.apply_isolation, net)
        was_running = await call(hub.supervisor.is_running, spec)
        if spec.userns_remap:
            # the account and /etc/subuid ranges dockerd's --userns-remap names (hubcontrol.userns)
            await call(userns.ensure_account, spec.net_id)
        seeds = getattr(hub, "seeds", None)
        # a remapped daemon keeps its images in <data-root>/<id>.<id>, owned by the user's ids:
        # a seed (images owned by host root) would only take space there
        if not was_running and seeds is not None and not spec.userns_remap:
            hub._part(rec, "seed")
            if cloned := await seeds.provide(rec, template, spec):
                rec.seeded = cloned
        if not was_running:
            # bridges of networks a dead or destroyed daemon of this block made take the routes
            # of this daemon's own (dockerd makes those again as it starts)
            if stale := await call(network.remove_stale_bridges, net.block):
                log.info("%s: removed stale network bridges %s", rec.name, ", ".join(stale))
        # the daemon rules go in while dockerd starts, once its group exists, and before the
        # policy socket: the user reaches the daemon only through it
        hub._part(rec, "dockerd")
        await call(
            hub.supervisor.start, spec, while_starting=lambda: hub._isolate_daemon(spec, net)
        )
        hub._part(rec, "limits")
        await call(hub.supervisor.apply_limits, spec)
        socket_ready = None
        if hub.policy_sockets is not None:
            # started now, after the daemon rules, and waited for by the start before anything
            # in the environment can use it; a restore goes on meanwhile (Hub._ensure_container)
            socket_ready = hub.policy_sockets.launch(spec, rec, template)
        if not was_running:
            hub.engine.forget(spec.url)
            hub._emit("daemon-started", rec)
        return Placed(
            docker_url=spec.url,
            env_dir=spec.env_dir,
            cgroup_parent=hub.supervisor.container_cgroup_parent(spec),
            image_source=hub._host_client(),
            image_layers=seeds.layers if seeds is not None else None,
            socket_ready=socket_ready,
        )


class HostDaemon(Placement):
    """The host's daemon, shared by every such user; isolation rules only."""

    async def prepare(
        self, rec: UserRecord, template: Template, net: network.UserNetwork
    ) -> Placed:
        await self.hub.engine.call(network.apply_isolation, net)
        return Placed(docker_url=self.hub._host_url())


def placement_for(hub: Hub, template: Template) -> Placement:
    """The placement a template asks for (``rediacc.hub.docker``)."""
    return PerUserDaemon(hub) if template.per_user_docker else HostDaemon(hub)
