"""The services wired around a ``Hub``, and the contract they are written against.

A Hub owns users' records, routes and lifecycles; the services around it (the idle culler, the
stats sampler, the audit streams, the policy sockets) each need a small part of it. They are
constructed here, outside the Hub's constructor, against ``HubServices``: the Hub's surface for
services, typed, so a service never reaches into the Hub's internals and a test can hand it a
small fake. ``Hub(config)`` calls ``wire_default_services`` itself; ``Hub(config,
services=...)`` takes another wiring (``wire_no_services`` for a bare Hub).

Which way things call: a service registers itself (``add_service``, ``add_listener``) and reads
the Hub through this protocol; the Hub reads only the services' own read-only state (the culler's
latest decisions, the sampler's view) when it builds ``Hub.status()``. The sampler reads
``status_rows()``, which never reads the sampler back.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from hubcontrol.audit import AuditManager
from hubcontrol.idle import IdleCuller
from hubcontrol.policysockets import PolicySockets
from hubcontrol.seeds import Seeds
from hubcontrol.stats import StatsSampler

if TYPE_CHECKING:
    import anyio

    from hubcontrol.checkpoint import Checkpointer, HealthStore
    from hubcontrol.config import HubConfig, Template
    from hubcontrol.hub import EnvironmentStatus, Listener
    from hubcontrol.records import RecordStore, UserRecord
    from hubcontrol.supervisor import DaemonSpec, DaemonSupervisor


@runtime_checkable
class HubServices(Protocol):
    """What a service may use of the Hub it is wired to (``hubcontrol.hub.Hub`` implements it).

    Everything here runs on the Hub's event loop, except ``activity`` and ``clock`` (any thread).
    A service must not block the loop: docker and file work goes to worker threads.

    - ``config``, ``supervisor``, ``checkpointer`` (None: environments are never checkpointed),
      ``checkpoint_health`` (every user's ``CheckpointHealth``: the checkpointer's own store),
      ``env_socket_by_daemon`` (True: dockerd serves the environment's socket itself, no policy
      socket), ``clock`` (epoch seconds): the Hub's, read-only.
    - ``records``: every user's persisted record. Services read it; only the Hub writes it.
    - ``add_service(fn)``: run ``fn()`` in ``Hub.run``'s task group (from reconcile on, until the
      hub stops); an exception ends the hub, so a service catches its own failures.
    - ``add_listener(fn)``: ``fn(event, record_copy)`` after each lifecycle event (``Hub``'s
      ``add_listener`` names them); called synchronously, so it only records or queues work.
    - ``activity(user)``, ``lock(user)``, ``user_record(user)``, ``docker_url(user)`` take the raw
      username; ``daemon_spec(name)`` the safe name from a record.
    - ``stop(user, checkpoint)``: stop an environment as the culler does (takes the user's lock).
    - ``status_rows()``: one row per record from the records and the daemons (with the culler's
      latest reason), without sampled stats: what the stats sampler reads.
    """

    config: HubConfig
    supervisor: DaemonSupervisor
    checkpointer: Checkpointer | None
    checkpoint_health: HealthStore
    env_socket_by_daemon: bool
    records: RecordStore
    clock: Callable[[], float]

    def add_service(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None: ...

    def add_listener(self, fn: Listener) -> None: ...

    def activity(self, user: str) -> tuple[float, str] | None: ...

    def lock(self, user: str) -> anyio.Lock: ...

    def user_record(self, user: str) -> UserRecord | None: ...

    def docker_url(self, user: str) -> str | None: ...

    def daemon_spec(self, name: str, template: Template | None = None) -> DaemonSpec | None: ...

    async def stop(self, user: str, checkpoint: bool | None = None) -> None: ...

    async def status_rows(self) -> list[EnvironmentStatus]: ...


@dataclass(frozen=True)
class Services:
    """The services wired around one Hub; None where a service is not wired."""

    audit: AuditManager | None = None  # per-user docker event streams to the audit log
    policy_sockets: PolicySockets | None = None  # a policy socket beside each per-user daemon
    culler: IdleCuller | None = None  # None when --idle-timeout is 0
    stats: StatsSampler | None = None  # status rows, disk and docker numbers, lifecycle counts
    seeds: Seeds | None = None  # template images seeded once, cloned into new users' data-roots


Wiring = Callable[[HubServices], Services]


def wire_default_services(hub: HubServices) -> Services:
    """Every service a hub runs in production (what ``Hub(config)`` does)."""
    # Each per-user daemon's docker events go to the user's audit log: streams are armed on
    # the lifecycle events (daemon-started, ...) and run as one of the hub's services.
    audit = AuditManager(hub.config)
    audit.attach(hub)
    # A policy socket process beside each per-user daemon, started and stopped with it (unless
    # dockerd serves the environment's socket itself).
    policy_sockets = None if hub.env_socket_by_daemon else PolicySockets(hub)
    # Idle environments are checkpointed or stopped (--idle-timeout; None when it is 0).
    culler = IdleCuller.attach(hub)
    # Status rows, per-user disk/containers/images (every 30 s) and lifecycle counts for the
    # dashboard, the API and /_hub/metrics: ``stats.view()``, readable from any thread.
    stats = StatsSampler(hub)
    stats.attach(hub)
    # Template images seeded once and cloned into new users' data-roots (docs/architecture.md,
    # "Seed data-roots"); None when no template has a per-user daemon.
    # Seeds still reaches into the Hub itself (its engine, _step, _host_client, _reserved): it is
    # not yet written against HubServices, and only a real Hub is ever wired here.
    seeds = Seeds.attach(hub)  # type: ignore[arg-type]
    return Services(
        audit=audit, policy_sockets=policy_sockets, culler=culler, stats=stats, seeds=seeds
    )


def wire_no_services(hub: HubServices) -> Services:
    """A bare Hub: no audit streams, policy sockets, culler or sampler (scripts, tests)."""
    return Services()
