"""The Hub: owns every user's record, route and activity stamp, and starts and stops environments.

Threading model: a Hub lives on one anyio event loop (the control thread). ``snapshot()``,
``touch()`` and ``progress()`` are safe to call from any thread: the route table is immutable and
replaced by reference, activity is a plain dict store. Everything else is async and runs on the
Hub's loop; blocking docker and OS work runs in worker threads through ``Engine.call``.

Per user, one operation at a time: ``ensure_running``, ``stop`` and ``destroy`` hold the user's
lock, so concurrent logins share a single start.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import stat
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import anyio
import docker
import docker.errors
from docker.models.containers import Container

from hubcontrol import checkpoint as ckpt
from hubcontrol import environment as envs
from hubcontrol import images, mounts, netids, network, procs, safefs, storage, timings, userns
from hubcontrol.config import HubConfig, Template
from hubcontrol.engine import Engine, id_of
from hubcontrol.environment import Environment
from hubcontrol.errors import (
    CheckpointError,
    EnvironmentError_,
    HookError,
    HubError,
    UsernameError,
)
from hubcontrol.idle import checkpoint_wanted
from hubcontrol.names import is_safe_name, safe_name
from hubcontrol.netids import DEFAULT_REGISTRY, NetIdRegistry
from hubcontrol.placement import Placed, placement_for
from hubcontrol.records import RecordStore, UserRecord
from hubcontrol.services import Services, Wiring, wire_default_services
from hubcontrol.supervisor import (
    RUN_DIR,
    DaemonSpec,
    DaemonSupervisor,
    Limits,
    choose,
    containerd_serves,
    remapped_exec_roots,
)

if TYPE_CHECKING:  # the services' types; hub.py never constructs them (services.py does)
    from hubcontrol.audit import AuditManager
    from hubcontrol.idle import IdleCuller
    from hubcontrol.policysockets import PolicySockets
    from hubcontrol.seeds import Seeds
    from hubcontrol.stats import StatsSampler

log = logging.getLogger(__name__)
# a CRIU restore takes seconds at most: 120 tries 0.25 s apart outlast any (userns.cgroup_yard_race)
CGROUP_YARD_RETRIES = 120

STATES = (
    "stopped",
    "starting",
    "running",
    "checkpointing",
    "checkpointed",
    "restoring",
    "stopping",
    "failed",
)
DEFAULT_READY_TIMEOUT = 120.0
DEFAULT_PIDS_LIMIT = 8192
# After one route port answers, how long to wait for the others before calling it ready.
PARTIAL_READY_GRACE = 5.0
# A new environment's service listens some 50-150 ms after its container starts: its ports are
# tried every READY_POLL_FIRST seconds for READY_POLL_BURST seconds (a refused local connect
# costs microseconds), then ever less often; whether the container still runs is asked at most
# every READY_INSPECT_EVERY seconds (a daemon round trip).
READY_POLL_FIRST = 0.02
READY_POLL_BURST = 0.5
READY_INSPECT_EVERY = 0.25


DAEMON_WATCH_SECONDS = 5.0  # how often running users' daemons are checked (Hub._watch_daemons)


@dataclass(frozen=True)
class Route:
    """Where a user's requests go: ``service_ip`` and a port per route prefix."""

    user: str
    name: str
    state: str
    service_ip: str
    ports: Mapping[str, int] = field(default_factory=dict)
    template: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "ports", MappingProxyType(dict(self.ports)))

    def target(self, prefix: str) -> tuple[str, int] | None:
        """(host, port) for a route prefix, or None when the prefix is not routed."""
        port = self.ports.get(prefix)
        return None if port is None else (self.service_ip, port)

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"ports": dict(self.ports)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Route:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class RouteTable:
    """An immutable table of running environments' routes, replaced by reference on change.

    ``get(user)`` takes the username exactly as the OAuth provider gave it and maps it with
    ``safe_name``; it never treats its argument as a safe name, so a user who registers another
    user's hashed safe name as their username (``alice--3bc5...``) cannot reach that user's route.
    Code that holds a safe name uses ``by_name``.
    """

    __slots__ = ("_routes",)

    def __init__(self, routes: Mapping[str, Route] | None = None) -> None:
        self._routes = dict(routes or {})

    def get(self, user: str) -> Route | None:
        """The route of the (raw) username ``user``, or None."""
        try:
            return self._routes.get(safe_name(user))
        except UsernameError:
            return None

    def by_name(self, name: str) -> Route | None:
        """The route of the safe name ``name``, or None."""
        return self._routes.get(name)

    def __contains__(self, user: object) -> bool:
        return isinstance(user, str) and self.get(user) is not None

    def __iter__(self) -> Iterator[Route]:
        return iter(self._routes.values())

    def __len__(self) -> int:
        return len(self._routes)

    def replace(self, name: str, route: Route | None) -> RouteTable:
        """A new table with safe name ``name``'s route set (or removed when ``route`` is None)."""
        routes = dict(self._routes)
        if route is None:
            routes.pop(name, None)
        else:
            routes[name] = route
        return RouteTable(routes)


@dataclass(frozen=True)
class Progress:
    """What a progress page shows while an environment starts (or why it failed)."""

    state: str = "stopped"
    step: str = ""
    message: str = ""
    error: str | None = None
    updated: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Progress:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class EnvironmentStatus:
    """One row of ``Hub.status()``."""

    user: str
    name: str
    template: str
    state: str
    net_id: int | None
    service_ip: str | None
    per_user_docker: bool
    mode: str
    container_id: str | None
    daemon: Mapping[str, Any]
    last_activity: float | None
    activity_kind: str | None
    ports: Mapping[str, int]
    error: str | None = None
    # CheckpointHealth.to_json(): failures, disabled (three strikes), last_error, checkpoint, ...
    checkpoint: Mapping[str, Any] = field(default_factory=dict)
    idle: str | None = None  # the idle culler's latest reason ("active 3m ago (idle timeout 30m)")
    # hubcontrol.stats.UserStats.to_json(): disk_bytes, containers_running, images, sampled_at
    stats: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (for the API and the CLI)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["daemon"] = dict(self.daemon)
        out["ports"] = dict(self.ports)
        out["checkpoint"] = dict(self.checkpoint)
        out["stats"] = dict(self.stats)
        return out


# Called with the event's name and a copy of the user's record (changing it changes nothing).
Listener = Callable[[str, UserRecord], None]


class Hub:
    """The control plane's single owner of mutable state (see docs/architecture.md)."""

    def __init__(
        self,
        config: HubConfig,
        supervisor: DaemonSupervisor | None = None,
        clock: Callable[[], float] = time.time,
        *,
        engine: Engine | None = None,
        netids: NetIdRegistry | None = None,
        run_dir: Path = RUN_DIR,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        pids_limit: int | None = DEFAULT_PIDS_LIMIT,
        env_socket_by_daemon: bool = False,
        checkpointer: ckpt.Checkpointer | str | None = "auto",
        services: Wiring = wire_default_services,
    ) -> None:
        self.config = config
        self.supervisor = supervisor or choose(config.supervisor)
        self.supervisor.set_users_cpu_weight(config.users_cpu_weight)
        self.clock = clock
        self.engine = engine or Engine()
        self._image_facts = envs.ImageFactsCache()  # template images probed, by image ID
        self.netids = netids or NetIdRegistry(DEFAULT_REGISTRY)
        self.run_dir = Path(run_dir)
        self.ready_timeout = ready_timeout
        self.pids_limit = pids_limit
        # False (default): the policy socket (hubcontrol.policysocket, docs/security.md) serves
        # <exec-root>/env/docker.sock; True: dockerd itself listens there, without the policy.
        self.env_socket_by_daemon = env_socket_by_daemon
        # "auto": CRIU when --checkpoint or any template asks for it; None: never checkpoint.
        if checkpointer == "auto":
            wanted = config.checkpoint or any(t.checkpoint for t in config.templates.values())
            checkpointer = "criu" if wanted else None
        if isinstance(checkpointer, str):
            checkpointer = ckpt.make_checkpointer(checkpointer, Path(config.state_dir), self.engine)
        self.checkpointer: ckpt.Checkpointer | None = checkpointer
        # The one reader and writer of the checkpoint health files: the checkpointer's own store
        # (the stats sampler reads it too), or one over the same directory when there is none.
        self.checkpoint_health: ckpt.HealthStore = (
            checkpointer.store if checkpointer is not None else ckpt.HealthStore(config.state_dir)
        )
        self._routes = RouteTable()
        self._activity: dict[str, tuple[float, str]] = {}
        self._progress: dict[str, Progress] = {}
        # The step marks of each start in progress (hubcontrol.timings), by safe name.
        self._laps: dict[str, timings.Laps] = {}
        # Every user's persisted record (<state-dir>/users/<name>.json), typed and cached.
        self.records = RecordStore(Path(config.state_dir) / "users", lambda: self.clock())
        self._locks: dict[str, anyio.Lock] = {}
        self._services: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self._listeners: list[Listener] = []
        self.users_dir = self.records.directory
        # The audit streams, policy sockets, idle culler and stats sampler, wired from outside
        # against the Hub's surface for services (hubcontrol.services.HubServices); last, since
        # they read the configuration and register themselves.
        self.services: Services = services(self)

    @property
    def audit(self) -> AuditManager | None:
        """The audit streams' manager (``services.audit``), or None."""
        return self.services.audit

    @property
    def policy_sockets(self) -> PolicySockets | None:
        """The policy sockets beside per-user daemons (``services.policy_sockets``), or None."""
        return self.services.policy_sockets

    @property
    def culler(self) -> IdleCuller | None:
        """The idle culler (``services.culler``); None when ``--idle-timeout`` is 0."""
        return self.services.culler

    @property
    def stats(self) -> StatsSampler | None:
        """The stats sampler (``services.stats``): ``stats.view()`` from any thread; or None."""
        return self.services.stats

    @property
    def seeds(self) -> Seeds | None:
        """Seed data-roots (``services.seeds``, hubcontrol/seeds.py), or None."""
        return self.services.seeds

    # -- hot path (any thread) -------------------------------------------------------------------

    def snapshot(self) -> RouteTable:
        """The current route table (immutable; a new object after every change)."""
        return self._routes

    def touch(self, user: str, kind: str = "http") -> None:
        """Stamp activity for ``user`` (raw username): O(1), thread-safe."""
        self._activity[user] = (self.clock(), kind)

    def activity(self, user: str) -> tuple[float, str] | None:
        return self._activity.get(user)

    def progress(self, user: str) -> Progress:
        try:
            return self._progress.get(safe_name(user), Progress())
        except UsernameError as e:
            return Progress(state="failed", error=e.user_message)

    # -- extension points for other control-plane modules ----------------------------------------

    def add_service(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``fn()`` in ``run()``'s task group (idle culler, stats, audit streams)."""
        self._services.append(fn)

    def add_listener(self, fn: Listener) -> None:
        """Call ``fn(event, record)`` on the Hub's loop for lifecycle events; must not block.
        ``record`` is a copy of the user's ``UserRecord``: changing it changes nothing.

        Events: ``daemon-started``, ``daemon-stopping``, ``environment-starting`` (before a start;
        the record still has the previous state), ``environment-running``, ``environment-failed``,
        ``environment-stopped``, ``environment-destroyed``.
        """
        self._listeners.append(fn)

    def _emit(self, event: str, record: UserRecord) -> None:
        for fn in self._listeners:
            try:
                fn(event, record.copy())
            except Exception:  # a listener must not break the lifecycle
                log.exception("listener %r failed on %s", fn, event)

    def lock(self, user: str) -> anyio.Lock:
        """The per-user lock held by ensure_running/stop/destroy (for checkpoint work too)."""
        name = safe_name(user)
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = anyio.Lock()
        return lock

    def user_record(self, user: str) -> UserRecord | None:
        """A copy of the record of the (raw) username ``user``, or None."""
        rec = self.records.get(safe_name(user))
        return rec.copy() if rec is not None else None

    def record(self, user: str) -> dict[str, Any] | None:
        """The record of the (raw) username ``user`` in its JSON form (``UserRecord.to_json``),
        or None: for readers that want the file's view (the status API, scripts)."""
        rec = self.records.get(safe_name(user))
        return rec.to_json() if rec is not None else None

    def update_record(self, user: str, /, **fields: Any) -> dict[str, Any]:
        """Set ``fields`` of the user's record and persist it; returns its JSON form. Names this
        version does not know are kept as they are (``UserRecord.unknown``)."""
        name = safe_name(user)
        rec = self.records.get(name) or UserRecord(name=name)
        rec.update(**fields)
        self.records.save(rec)
        return rec.to_json()

    def paths(self, user: str) -> storage.UserPaths:
        return storage.UserPaths(Path(self.config.workspace_dir), safe_name(user))

    def daemon_spec(self, name: str, template: Template | None = None) -> DaemonSpec | None:
        """The dockerd spec of the user whose SAFE name is ``name`` (a record's ``name``).

        None before the user has a network ID. Unlike the other methods, this takes the safe
        name, since its callers (stats, policy sockets) work from records.
        """
        if not is_safe_name(name or ""):
            return None
        rec = self.records.get(name)
        if rec is None or rec.net_id is None:
            return None
        tpl = template or self._template_or_none(rec.template)
        return self._spec(name, rec.net_id, tpl)

    def docker_url(self, user: str) -> str | None:
        """The socket URL of the daemon the (raw) username ``user``'s environment runs on."""
        rec = self.records.get(safe_name(user))
        if rec is None:
            return None
        if rec.per_user_docker:
            spec = self.daemon_spec(rec.name)
            return spec.url if spec else None
        return self._host_url()

    # -- records ----------------------------------------------------------------------------------

    def _set_state(
        self,
        rec: UserRecord,
        state: str,
        *,
        step: str = "",
        message: str = "",
        error: str | None = None,
    ) -> None:
        rec.state = state
        if error is not None:
            rec.error = error
        elif state == "running":
            rec.error = None
        self.records.save(rec)
        self._progress[rec.name] = Progress(state, step, message, error, self.clock())
        self._lap(rec, step)

    def _step(self, rec: UserRecord, step: str, message: str) -> None:
        self._progress[rec.name] = Progress(rec.state, step, message, None, self.clock())
        self._lap(rec, step)

    def _lap(self, rec: UserRecord, step: str) -> None:
        laps = self._laps.get(rec.name)
        if laps is not None and step and laps.current != step:
            laps.step(step)

    def _part(self, rec: UserRecord, part: str) -> None:
        """A named part of the current step of ``rec``'s start begins (``last_start``)."""
        laps = self._laps.get(rec.name)
        if laps is not None:
            laps.part(part)

    def _finish_laps(self, rec: UserRecord, outcome: str) -> None:
        """Keep where this start's time went in the record (``last_start``) and the log."""
        laps = self._laps.pop(rec.name, None)
        if laps is None:
            return
        rec.last_start = laps.finish(outcome=outcome, at=round(self.clock(), 3))
        log.info("start of %s (%s) took %s", rec.name, outcome, timings.describe(rec.last_start))

    def _publish(self, rec: UserRecord) -> None:
        name = rec.name
        if rec.state == "running" and rec.service_ip:
            route = Route(
                rec.username,
                name,
                "running",
                rec.service_ip,
                dict(self.config.routes),
                rec.template or "",
            )
        else:
            route = None
        self._routes = self._routes.replace(name, route)

    # -- helpers -----------------------------------------------------------------------------------

    def _template_or_none(self, name: str | None) -> Template | None:
        try:
            return self.config.template(name)
        except HubError:
            return None

    def _host_url(self) -> str:
        sock = self.config.docker_socket
        return sock if "://" in sock else f"unix://{sock}"

    def _host_client(self) -> docker.DockerClient | None:
        url = self._host_url()
        if url.startswith("unix://") and not Path(url[len("unix://") :]).exists():
            return None
        return self.engine.client(url)

    def _limits(self, tpl: Template | None) -> Limits:
        return Limits(
            cpu=tpl.cpu if tpl else None, memory=tpl.memory if tpl else None, pids=self.pids_limit
        )

    def _spec(self, name: str, net_id: int, tpl: Template | None) -> DaemonSpec:
        paths = storage.UserPaths(Path(self.config.workspace_dir), name)
        net = network.user_network(net_id, self.config.user_subnet_pool)
        remap = self.config.userns_remap
        return DaemonSpec(
            user=name,
            net_id=net_id,
            data_root=paths.data_root,
            daemon_dir=paths.daemon_dir,
            network_config=network.daemon_network_config(net),
            limits=self._limits(tpl),
            env_socket=self.env_socket_by_daemon,
            run_dir=self.run_dir,
            userns_remap=userns.account_name(net_id) if remap else None,
            userns_root=userns.id_range(net_id).start if remap else None,
        )

    def checkpoint_target(self, rec: UserRecord, container: str = "") -> ckpt.CheckpointTarget:
        """What the checkpointer needs to suspend or resume the environment of ``rec``."""
        name = rec.name
        tpl = self._template_or_none(rec.template)
        paths = storage.UserPaths(Path(self.config.workspace_dir), name)
        tmpdir = None
        if rec.per_user_docker and rec.net_id is not None:
            tmpdir = self._spec(name, rec.net_id, tpl).tmpdir
        return ckpt.CheckpointTarget(
            user=name,
            docker_url=rec.docker_url or self._host_url(),
            container=container or rec.container_id or envs.container_name(name),
            checkpoint_dir=paths.checkpoints,
            daemon_tmpdir=tmpdir,
            pages_aside=tmpdir is not None,  # both supervisors' CRIU wrappers take them
            container_user=tpl.user if tpl else "root",
            workdir=tpl.workspace if tpl else "/",
            service_ip=rec.service_ip or "",
            pre_dump=tpl.pre_dump if tpl else None,
            post_restore=tpl.post_restore if tpl else None,
        )

    def daemon_registries(self) -> list[str]:
        """Registries a per-user daemon may reach even on a host or user-pool address: those
        the operator allows users (``--allow-registry``) and those of the templates' images."""
        found = list(self.policy_sockets.allowed_registries) if self.policy_sockets else []
        for tpl in self.config.templates.values():
            registry = network.image_registry(tpl.image) if tpl.image else None
            if registry and registry not in found:
                found.append(registry)
        return found

    def _isolate_daemon(self, spec: DaemonSpec, net: network.UserNetwork) -> None:
        """The OUTPUT rules for the daemon's own traffic (its group exists once it runs)."""
        allow = network.daemon_allowances(self.daemon_registries())
        network.apply_daemon_isolation(net, self.supervisor.daemon_cgroup(spec), allow)

    def _reserved(self) -> frozenset[int]:
        return frozenset({self.config.network_id} if self.config.network_id is not None else ())

    # -- lifecycle ---------------------------------------------------------------------------------

    async def ensure_running(
        self, user: str, template: str | None = None, *, route: str | None = None
    ) -> Environment:
        """Start ``user``'s environment (daemon, network, image, container) if needed.

        Returns once the environment answers at SERVICE_IP: on ``route``'s port when a route
        prefix is given (what the proxy is about to forward), else on every route port, or, as
        templates need not serve every route (a "lite" template without a desktop), on at least
        one of them after ``PARTIAL_READY_GRACE`` seconds without the rest. ``template`` None
        keeps the user's current template (or the default); a different one rebuilds the
        container and keeps the persistent workspace. Raises a HubError subclass on failure,
        which ``progress(user)`` also shows.
        """
        name = safe_name(user)
        laps = timings.Laps()  # from here: the time waiting for the user's lock counts
        async with self.lock(user):
            rec = self.records.get(name) or UserRecord(name=name)
            rec.user = user
            self._emit("environment-starting", rec)
            self._laps[name] = laps
            try:
                return await self._ensure_running(rec, template, route)
            except HubError as e:
                log.error("starting %s failed: %s", name, e.log_message)
                self._finish_laps(rec, "failed")
                self._set_state(
                    rec, "failed", step="failed", message=e.user_message, error=e.user_message
                )
                self._publish(rec)
                self._emit("environment-failed", rec)
                raise
            except Exception as e:
                log.exception("starting %s failed", name)
                self._finish_laps(rec, "failed")
                self._set_state(rec, "failed", step="failed", message=str(e), error=str(e))
                self._publish(rec)
                self._emit("environment-failed", rec)
                raise EnvironmentError_("Your environment failed to start.", repr(e)) from e
            except BaseException:
                # cancelled (hub shutdown, a caller's deadline): nothing is half-published; the
                # next start or the next hub's reconcile picks up from what really runs
                message = "The start of your environment was interrupted; please retry."
                self._finish_laps(rec, "interrupted")
                self._set_state(rec, "failed", step="failed", message=message, error=message)
                self._publish(rec)
                raise
            finally:
                self._laps.pop(name, None)  # a start that returned early (already running)

    async def _ensure_running(
        self, rec: UserRecord, template: str | None, route: str | None = None
    ) -> Environment:
        """The start path, one named step each (each sets its own progress)."""
        tpl = self._pick_template(rec, template)
        if (env := await self._still_running(rec, tpl)) is not None:
            self._laps.pop(rec.name, None)  # nothing was started: the last start's record stays
            return env
        await self._leave_other_placement(rec, tpl)
        paths, net = await self._prepare_storage(rec, tpl)
        placed = await placement_for(self, tpl).prepare(rec, tpl, net)
        rec.docker_url = placed.docker_url
        client = self.engine.client(placed.docker_url)
        network_name = await self._prepare_network(rec, client, net)
        await self._provide_image(rec, tpl, client, placed)
        container_id, created, restored = await self._ensure_container(
            rec, tpl, client, paths, net, network_name, placed
        )
        if created and tpl.on_create:
            await self._run_on_create(rec, tpl, client, container_id, net)
        self._step(rec, "ready", "Waiting for your services to answer")
        await self._wait_ready(client, container_id, str(net.service_ip), rec.name, route)
        return self._mark_running(rec, restored)

    def _pick_template(self, rec: UserRecord, template: str | None) -> Template:
        """The asked-for template, else the user's current one, else the default."""
        current = rec.template
        if not template and current is not None and current not in self.config.templates:
            log.warning(
                "%s: template %r is no longer configured; using the default", rec.name, current
            )
            current = None
        return self.config.template(template or current)

    async def _still_running(self, rec: UserRecord, tpl: Template) -> Environment | None:
        """A second login or a retry: one inspect instead of the whole path."""
        if not (
            rec.state == "running"
            and self._routes.by_name(rec.name) is not None
            and tpl.name == rec.template
            and rec.container_id
            and rec.docker_url
        ):
            return None
        client = self.engine.client(rec.docker_url)
        with contextlib.suppress(docker.errors.DockerException, OSError):
            info = await self.engine.call(client.api.inspect_container, rec.container_id)
            if info["State"]["Running"]:
                return self._environment(rec)
        return None

    async def _leave_other_placement(self, rec: UserRecord, tpl: Template) -> None:
        """A switch between a per-user daemon and the shared one: the old environment holds
        SERVICE_IP and the bridge name the new one needs, so it goes first."""
        if (
            rec.net_id is not None
            and rec.per_user_docker is not None
            and rec.per_user_docker != tpl.per_user_docker
        ):
            self._step(rec, "container", f"Switching to the {tpl.name} environment")
            await self._retire_environment(rec)

    async def _prepare_storage(
        self, rec: UserRecord, tpl: Template
    ) -> tuple[storage.UserPaths, network.UserNetwork]:
        """The user's tree (checked, never through a link) and their network ID."""
        rec.template, rec.mode, rec.per_user_docker = tpl.name, tpl.mode, tpl.per_user_docker
        self._set_state(rec, "starting", step="storage", message="Preparing your storage")
        paths = storage.UserPaths(Path(self.config.workspace_dir), rec.name)
        remap = self.config.userns_remap
        # a returning user's namespace group is known from their recorded network ID: their
        # daemon may be running, so its directories must keep it throughout
        known = await self.engine.call(netids.read_marker, paths.data_root_dir) if remap else None
        rec.subvolume = await self.engine.call(
            storage.prepare_user_tree,
            paths,
            workspace=not tpl.ephemeral,
            records_dir=self.users_dir,
            remap=remap,
            userns_root=_userns_root(known),
        )
        net_id = await self.engine.call(
            self.netids.allocate, paths.data_root_dir, reserved=self._reserved()
        )
        if remap and net_id != known:
            await self.engine.call(storage.set_daemon_dirs_group, paths, _userns_root(net_id))
        if not tpl.ephemeral:
            # nosuid,nodev: what a root template plants there gives nothing on the host
            await self.engine.call(mounts.make_inert, str(paths.workspace))
        net = network.user_network(net_id, self.config.user_subnet_pool)
        rec.net_id, rec.service_ip = net_id, str(net.service_ip)
        self.records.save(rec)
        return paths, net

    async def _prepare_network(
        self, rec: UserRecord, client: docker.DockerClient, net: network.UserNetwork
    ) -> str:
        self._step(rec, "network", "Setting up your network")
        return await self.engine.call(envs.ensure_env_network, client, net)

    async def _provide_image(
        self, rec: UserRecord, tpl: Template, client: docker.DockerClient, placed: Placed
    ) -> None:
        self._step(rec, "image", f"Making the image {tpl.image} available")
        call = self.engine.call
        how = await call(
            images.ensure_image, client, tpl.image, placed.image_source, placed.image_layers
        )
        if how != "present":
            log.info("image %s for %s: %s", tpl.image, rec.name, how)
        # in the user's own daemon, an image the template no longer uses goes once nothing uses
        # it (images.remove_unused); the host's daemon and its images are the operator's
        previous = [*(rec.stale_images or []), rec.image_id]
        rec.image_id = await call(images.image_id, client, tpl.image)
        old = [i for i in previous if i and i != rec.image_id]
        if old and placed.image_source is not None:
            old = await call(images.remove_unused, client, old)
        rec.stale_images = old if placed.image_source is not None else []

    async def _ensure_container(
        self,
        rec: UserRecord,
        tpl: Template,
        client: docker.DockerClient,
        paths: storage.UserPaths,
        net: network.UserNetwork,
        network_name: str,
        placed: Placed,
    ) -> tuple[str, bool, bool]:
        """The environment container, running: kept, restored from a checkpoint, or created.
        Returns (container ID, created, restored)."""
        call = self.engine.call
        name = rec.name
        self._step(rec, "container", "Starting your environment")
        container = await call(envs.find, client, name)
        if container is not None and self._must_recreate(container, tpl, rec.image_id):
            current = container.labels.get(envs.LABEL_TEMPLATE)
            self._step(
                rec,
                "container",
                f"Switching to the {tpl.name} environment"
                if current != tpl.name
                else "Recreating your environment",
            )
            if self.checkpointer is not None:
                await self.checkpointer.discard(self.checkpoint_target(rec, id_of(container)))
            await call(container.remove, force=True)
            container = None
        restored = False
        if (
            container is not None
            and container.status != "running"
            and self.checkpointer is not None
            and self.checkpointer.has_checkpoint(name)
        ):
            # the policy socket is still starting (placement): CRIU restores meanwhile, as no
            # restored process holds a docker connection (CRIU cannot dump one); post_restore
            # waits for the socket, and so does everything after this
            restored = await self._restore(rec, client, id_of(container), placed.socket_ready)
            if not restored:
                # a failed restore leaves a stopped container: start afresh, same workspace
                with contextlib.suppress(docker.errors.NotFound):
                    await call(client.api.remove_container, id_of(container), force=True)
                container = None
        created = container is None
        if container is None:
            # while the policy socket may still be starting: a created container runs nothing
            self._part(rec, "create")
            container_id = await self._create_container(rec, tpl, client, paths, net,
                                                        network_name, placed)  # fmt: skip
        else:
            container_id = id_of(container)
        rec.container_id = container_id
        self.records.save(rec)
        await self._socket_ready(rec, placed)  # before any process may use the socket
        info = await call(client.api.inspect_container, container_id)
        if not info["State"]["Running"]:
            self._part(rec, "start")
            await self._start_container(client, container_id, name)
        return container_id, created, restored

    async def _start_container(
        self, client: docker.DockerClient, container_id: str, name: str
    ) -> None:
        # Under --userns-remap a start can fail while CRIU works on another container of the
        # host (userns.cgroup_yard_race): retried until that CRIU is done, 0.25 s apart.
        for attempt in range(CGROUP_YARD_RETRIES + 1):
            try:
                await self.engine.call(client.api.start, container_id)
                return
            except docker.errors.APIError as e:
                if attempt < CGROUP_YARD_RETRIES and userns.cgroup_yard_race(str(e)):
                    log.info("start %s: another CRIU's cgroup yard was in the way; retrying", name)
                    await anyio.sleep(0.25)
                    continue
                raise EnvironmentError_(
                    "Your environment could not start.", f"start {name}: {e}"
                ) from None

    @staticmethod
    def _must_recreate(container: Container, tpl: Template, image_id: str | None = None) -> bool:
        """Another template's container, a stopped one of an older image (another name, or
        the template's image updated to ``image_id``), or a stopped ephemeral one is replaced
        rather than started."""
        current = container.labels.get(envs.LABEL_TEMPLATE)
        stale_image = (
            current == tpl.name
            and container.status != "running"
            and (
                container.attrs.get("Config", {}).get("Image") != tpl.image
                or (image_id is not None and container.attrs.get("Image") != image_id)
            )
        )
        return (
            current != tpl.name or stale_image or (tpl.ephemeral and container.status != "running")
        )

    async def _create_container(
        self,
        rec: UserRecord,
        tpl: Template,
        client: docker.DockerClient,
        paths: storage.UserPaths,
        net: network.UserNetwork,
        network_name: str,
        placed: Placed,
    ) -> str:
        call = self.engine.call
        facts = await call(envs.template_facts, client, tpl, self._image_facts)  # user ids, shell
        owner = facts.owner
        if owner is not None and not tpl.ephemeral:
            net_id = rec.net_id
            remapped = self.config.userns_remap and tpl.per_user_docker and net_id is not None
            if remapped and net_id is not None:
                # the container's uid u is host uid start+u: the user sees their own ids
                ids = userns.id_range(net_id)
                owner = (ids.host_id(owner[0]), ids.host_id(owner[1]))
            await call(_chown_top, paths.workspace, *owner, remapped)
        limits = self._limits(tpl)
        options = envs.create_options(
            username=rec.username,
            safe=rec.name,
            template=tpl,
            net=net,
            network_name=network_name,
            workspace=None if tpl.ephemeral else paths.workspace,
            env_dir=placed.env_dir,
            cgroup_parent=placed.cgroup_parent,
            cpus=envs.container_cpus(limits.cpus, len(os.sched_getaffinity(0))),
            memory=limits.memory_bytes,
            owner=owner,
            shell=facts.shell,
        )
        container_id = await call(envs.create, client, options)
        if placed.env_dir is not None:
            await call(envs.install_socket_link, client, container_id)
        rec.on_create = None
        return container_id

    async def _run_on_create(
        self,
        rec: UserRecord,
        tpl: Template,
        client: docker.DockerClient,
        container_id: str,
        net: network.UserNetwork,
    ) -> None:
        self._step(rec, "hook", "Running the on_create hook")
        code, output = await self.engine.call(
            envs.run_hook,
            client,
            container_id,
            tpl.on_create,
            tpl.user,
            tpl.workspace,
            str(net.service_ip),
        )
        rec.on_create = {"exit_code": code, "output": output[-2000:]}
        self.records.save(rec)
        if code != 0:
            raise HookError(
                f"The on_create hook failed (exit {code}): {output.strip()[-300:]}",
                f"on_create for {rec.name} exited {code}: {output[-2000:]}",
            )

    def _mark_running(self, rec: UserRecord, restored: bool) -> Environment:
        if not restored:
            rec.started_at = self.clock()
        self._finish_laps(rec, "restored" if restored else "started")
        self._set_state(rec, "running", step="running", message="Your environment is running")
        self._publish(rec)
        self._emit("environment-running", rec)
        return self._environment(rec)

    async def _socket_ready(self, rec: UserRecord, placed: Placed) -> None:
        """Wait until the environment's docker socket (the policy socket placement started)
        accepts, or its failure is logged."""
        if placed.socket_ready is None or placed.socket_ready.done():
            return
        self._part(rec, "docker socket")
        await anyio.to_thread.run_sync(placed.socket_ready.result)

    async def _restore(
        self,
        rec: UserRecord,
        client: docker.DockerClient,
        container_id: str,
        socket_ready: concurrent.futures.Future[None] | None = None,
    ) -> bool:
        """Resume a checkpointed environment; False (after reporting why) to start afresh.
        ``socket_ready``: the docker socket's start (``Placed.socket_ready``), which the
        post_restore hook waits for."""
        if self.checkpointer is None:  # (the caller checked) no checkpointing: start afresh
            return False
        self._set_state(rec, "restoring", step="restore", message="Resuming your environment")
        target = self.checkpoint_target(rec, container_id)
        if socket_ready is not None:
            target = dataclasses.replace(target, before_hooks=socket_ready.result)
        try:
            result = await self.checkpointer.restore(target)
        except CheckpointError as e:
            log.error("restore of %s failed: %s", rec.name, e.log_message)
            rec.restore_error = e.user_message
            self._step(rec, "restore", e.user_message)
            return False
        if result is None:
            return False
        rec.restore_error = None
        rec.started_at = self.clock()
        laps = self._laps.get(rec.name)
        if laps is not None:
            laps.add_parts(result.phases)
        rec.restored = {
            "checkpoint": result.checkpoint,
            "seconds": result.seconds,
            "detail": result.detail,
            "hook_error": result.hook_error,
        }
        return True

    def _environment(self, rec: UserRecord) -> Environment:
        assert rec.net_id is not None and rec.service_ip is not None  # set before any start
        return Environment(
            user=rec.username,
            name=rec.name,
            template=rec.template or "",
            net_id=rec.net_id,
            service_ip=rec.service_ip,
            ports=dict(self.config.routes),
            state=rec.state,
            container_id=rec.container_id or "",
            docker_url=rec.docker_url or "",
            per_user_docker=bool(rec.per_user_docker),
        )

    async def _wait_ready(
        self,
        client: docker.DockerClient,
        container_id: str,
        ip: str,
        name: str,
        route: str | None = None,
    ) -> None:
        ports = set(self.config.routes.values())
        if route is not None and route in self.config.routes:
            ports = {self.config.routes[route]}
        pending = set(ports)
        began = anyio.current_time()
        deadline = began + self.ready_timeout
        first_answer = None
        inspected = began
        delay = READY_POLL_FIRST
        while pending:
            for port in sorted(pending):
                with anyio.move_on_after(1):
                    try:
                        stream = await anyio.connect_tcp(ip, port)
                    except OSError:
                        continue
                    await stream.aclose()
                    pending.discard(port)
            if not pending:
                return
            now = anyio.current_time()
            if len(pending) < len(ports):
                first_answer = first_answer if first_answer is not None else now
                if now - first_answer >= PARTIAL_READY_GRACE:
                    log.info("%s: ports %s do not answer; the template may not serve them",
                             name, sorted(pending))  # fmt: skip
                    return
            if now - inspected < READY_INSPECT_EVERY:
                await anyio.sleep(delay)
                continue
            inspected = now
            info = await self.engine.call(client.api.inspect_container, container_id)
            if not info["State"]["Running"]:
                tail = await self.engine.call(envs.logs_tail, client, container_id)
                raise EnvironmentError_(
                    "Your environment stopped while starting; its command failed.",
                    f"{name} exited with {info['State'].get('ExitCode')} before ports "
                    f"{sorted(pending)} answered; logs:\n{tail}",
                )
            if anyio.current_time() > deadline:
                raise EnvironmentError_(
                    f"Your environment did not answer on port(s) "
                    f"{', '.join(map(str, sorted(pending)))} within {self.ready_timeout:.0f} s.",
                    f"{name}: {ip} ports {sorted(pending)} refused connections for "
                    f"{self.ready_timeout:.0f} s; check the template command listens on "
                    "__SERVICE_IP__ or 0.0.0.0",
                )
            await anyio.sleep(delay)
            if now - began >= READY_POLL_BURST:
                delay = min(delay * 1.5, 0.5)

    async def reset_checkpointing(self, user: str) -> ckpt.CheckpointHealth:
        """Turn ``user``'s checkpointing back on after three failures in a row turned it off
        (``hub checkpoint reset``; the operator has fixed what made CRIU fail). Raises
        ``CheckpointError`` when this hub does not checkpoint at all."""
        if self.checkpointer is None:
            raise CheckpointError(
                "This hub does not checkpoint environments.",
                "checkpoint reset: the hub runs without a checkpointer (no --checkpoint and no "
                "template with rediacc.hub.checkpoint=true)",
            )
        name = safe_name(user)
        async with self.lock(user):
            before = self.checkpointer.health(name)
            health = self.checkpointer.reset(name)
        if self.stats is not None:
            await self.stats.refresh()  # the dashboard and `hub status` show it at once
        log.info(
            "%s: checkpointing reset by an operator (was %s after %d failures)",
            name,
            "disabled" if before.disabled else "enabled",
            before.failures,
        )
        return health

    async def stop(self, user: str, checkpoint: bool | None = None) -> None:
        """Stop ``user``'s environment and (per-user docker) daemon; ephemeral ones are removed.

        ``checkpoint``: None decides by configuration (``--checkpoint`` or the template's
        ``rediacc.hub.checkpoint``; never for ephemeral environments), True/False force it. A
        failed checkpoint is reported (``record()["checkpoint_error"]``) and the environment is
        stopped instead: the workspace is never lost. The final state is ``checkpointed`` or
        ``stopped``.
        """
        name = safe_name(user)
        async with self.lock(user):
            rec = self.records.get(name)
            if rec is None:
                return
            await self._stop(rec, remove_container=False, checkpoint=checkpoint)

    async def _stop(
        self, rec: UserRecord, *, remove_container: bool, checkpoint: bool | None = False
    ) -> None:
        call = self.engine.call
        name = rec.name
        checkpointed = False
        self._set_state(rec, "stopping", step="stopping", message="Stopping your environment")
        self._routes = self._routes.replace(name, None)
        tpl = self._template_or_none(rec.template)
        spec = self._spec(name, rec.net_id, tpl) if rec.net_id is not None else None
        per_user = bool(rec.per_user_docker) and spec is not None
        alive = (await call(self.supervisor.is_running, spec)) if per_user else True
        if alive and rec.docker_url:
            client = self.engine.client(rec.docker_url)
            container = await call(envs.find, client, name)
            if checkpoint is None:
                checkpoint = checkpoint_wanted(self.config, tpl)[0]
            if (
                container is not None
                and checkpoint
                and not remove_container
                and rec.mode != "ephemeral"
                and self.checkpointer is not None
                and container.status == "running"
            ):
                self._set_state(rec, "checkpointing", step="checkpoint", message="Suspending")
                try:
                    await self.checkpointer.checkpoint(
                        self.checkpoint_target(rec, id_of(container))
                    )
                    checkpointed = True
                    rec.checkpoint_error = None
                except CheckpointError as e:
                    log.error("checkpoint of %s failed: %s", name, e.log_message)
                    rec.checkpoint_error = e.user_message
            if container is not None and not checkpointed:
                with contextlib.suppress(docker.errors.APIError):
                    if remove_container or rec.mode == "ephemeral":
                        await call(container.remove, force=True)
                    else:
                        await call(container.stop, timeout=10)
        if per_user and spec is not None:
            # before the user's own containers are stopped: the audit trail marks those stops,
            # made with the environment already down, as the hub's
            self._emit("daemon-stopping", rec)
            if alive:
                # dockerd runs with live-restore (see supervisor.daemon_config): it would leave
                # the user's own containers running, so stop them first, all at once.
                await self._stop_all_containers(self.engine.client(spec.url))
            if self.policy_sockets is not None:
                await self.policy_sockets.stop(spec)
            await call(self.supervisor.stop, spec)
            self.engine.forget(spec.url)
        if rec.mode != "ephemeral":
            # the workspace's nosuid,nodev self-mount is needed only while something runs on
            # it; the next start (or restore) makes it again before anything does
            with contextlib.suppress(OSError):
                await call(mounts.release_inert, str(self.paths(rec.username).workspace))
        if checkpointed:
            self._set_state(
                rec, "checkpointed", step="checkpointed", message="Your environment is suspended"
            )
        else:
            self._set_state(rec, "stopped", step="stopped", message="Your environment is stopped")
        self._emit("environment-stopped", rec)

    async def _stop_all_containers(self, client: docker.DockerClient, grace: int = 10) -> None:
        """Stop every running container of ``client``'s daemon at once, each given ``grace``
        seconds before docker kills it."""
        try:
            running = await self.engine.call(client.containers.list)
        except (docker.errors.DockerException, OSError):
            return
        async with anyio.create_task_group() as tg:
            for container in running:
                tg.start_soon(self._quiet_stop, container, grace)

    async def _quiet_stop(self, container: Container, grace: int) -> None:
        with contextlib.suppress(docker.errors.DockerException, OSError):
            await self.engine.call(container.stop, timeout=grace)

    async def _retire_environment(self, rec: UserRecord) -> None:
        """Remove the environment of ``rec`` where it runs now (container, env network, daemon)."""
        assert rec.net_id is not None
        if self.checkpointer is not None:
            await self.checkpointer.discard(self.checkpoint_target(rec))
        await self._stop(rec, remove_container=True)
        net = network.user_network(rec.net_id, self.config.user_subnet_pool)
        if not rec.per_user_docker and rec.docker_url:
            client = self.engine.client(rec.docker_url)
            with contextlib.suppress(docker.errors.DockerException):
                await self.engine.call(envs.remove_env_network, client, net)
        await self.engine.call(network.delete_link, net.env_bridge)

    async def destroy(self, user: str, remove_data: bool = False) -> None:
        """Remove ``user``'s container, network, bridges, rules and daemon.

        The workspace and data-root (with its network-ID marker) stay unless ``remove_data``.
        """
        name = safe_name(user)
        async with self.lock(user):
            rec = self.records.get(name)
            if rec is not None and rec.net_id is not None:
                await self._retire_environment(rec)
                net = network.user_network(rec.net_id, self.config.user_subnet_pool)
                await self.engine.call(network.remove_isolation, net.net_id)
                await self.engine.call(network.delete_link, net.bridge)
                spec = self._spec(name, rec.net_id, None)
                if not await self.engine.call(self.supervisor.is_running, spec):
                    await self.engine.call(storage.remove_tree, spec.exec_root)
                    for left in remapped_exec_roots(spec.run_dir, rec.net_id):
                        await self.engine.call(storage.remove_tree, left)
            paths = storage.UserPaths(Path(self.config.workspace_dir), name)
            if remove_data:
                if rec is not None and rec.net_id is not None:
                    await self.engine.call(self.netids.release, rec.net_id, paths.data_root_dir)
                    # --userns-remap's account and id ranges (none: nothing to do)
                    await self.engine.call(userns.remove_account, rec.net_id)
                await self.engine.call(storage.remove_tree, paths.data_root_dir)
                await self.engine.call(storage.remove_tree, paths.workspace)
            self._routes = self._routes.replace(name, None)
            self._progress.pop(name, None)
            self.records.delete(name)
            if rec is not None:
                self._emit("environment-destroyed", rec)

    async def status(self) -> list[EnvironmentStatus]:
        """Every known user's environment, from records and live daemon checks, with the stats
        sampler's latest numbers (``EnvironmentStatus.stats``)."""
        view = self.stats.view() if self.stats is not None else None
        return [
            dataclasses.replace(row, stats=MappingProxyType(sampled.to_json()))
            if view is not None and (sampled := view.stats.get(row.name))
            else row
            for row in await self.status_rows()
        ]

    async def status_rows(self) -> list[EnvironmentStatus]:
        """``status()`` without the sampled stats: what the stats sampler itself reads."""
        rows = []
        for rec in list(self.records.all()):
            name = rec.name
            daemon: dict[str, Any] = {}
            if rec.per_user_docker and rec.net_id is not None:
                spec = self._spec(name, rec.net_id, self._template_or_none(rec.template))
                daemon = await self.engine.call(self.supervisor.describe, spec)
            seen = self._activity.get(rec.user or "")
            rows.append(
                EnvironmentStatus(
                    user=rec.username,
                    name=name,
                    template=rec.template or "",
                    state=rec.state,
                    net_id=rec.net_id,
                    service_ip=rec.service_ip,
                    per_user_docker=bool(rec.per_user_docker),
                    mode=rec.mode or "",
                    container_id=rec.container_id,
                    daemon=MappingProxyType(daemon),
                    last_activity=seen[0] if seen else None,
                    activity_kind=seen[1] if seen else None,
                    ports=MappingProxyType(dict(self.config.routes)),
                    error=rec.error,
                    checkpoint=MappingProxyType(
                        self.checkpointer.health(name).to_json() if self.checkpointer else {}
                    ),
                    idle=(
                        self.culler.decisions[rec.user].reason
                        if self.culler and rec.user in self.culler.decisions
                        else None
                    ),
                )
            )
        return rows

    # -- the control loop --------------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Adopt what is running (never restart or duplicate it); mark the rest stopped."""
        for name in sorted(self.records.names()):
            rec = self.records.load(name)
            if rec is None or rec.net_id is None:
                continue
            try:
                await self._reconcile_one(rec)
            except (HubError, docker.errors.DockerException, OSError) as e:
                log.warning("reconciling %s: %s", name, e)
                self._set_state(rec, "failed", step="failed", message=str(e), error=str(e))

    async def _reconcile_one(self, rec: UserRecord) -> None:
        assert rec.net_id is not None
        call = self.engine.call
        name = rec.name
        tpl = self._template_or_none(rec.template)
        net = network.user_network(rec.net_id, self.config.user_subnet_pool)
        if rec.per_user_docker:
            spec = self._spec(name, rec.net_id, tpl)
            if not await call(self.supervisor.adopt, spec):
                if rec.state not in ("checkpointed", "stopped"):
                    self._set_state(
                        rec, "stopped", step="stopped", message="Your environment is stopped"
                    )
                return
            await call(network.apply_isolation, net)
            await call(self._isolate_daemon, spec, net)
            if self.policy_sockets is not None:
                await self.policy_sockets.ensure(spec, rec, tpl)
            self._emit("daemon-started", rec)
            url = spec.url
        else:
            url = self._host_url()
        client = self.engine.client(url)
        container = await call(envs.find, client, name)
        if container is not None and container.status == "paused":
            # Only a dump pauses an environment, and a hub killed during one left it frozen (the
            # dump itself did not finish: a finished one stops the container).
            log.warning("%s: environment left paused by an interrupted checkpoint; resuming", name)
            await call(container.unpause)
            await call(container.reload)
        if container is not None and container.status == "running":
            await self._current_workspace(rec, tpl, client, container)
            rec.container_id, rec.docker_url = container.id, url
            self._set_state(rec, "running", step="running", message="Your environment is running")
            self._publish(rec)
            self._emit("environment-running", rec)
        elif rec.state != "checkpointed":
            self._set_state(rec, "stopped", step="stopped", message="Your environment is stopped")

    async def _watch_daemons(self) -> None:
        """Start again the environment of a running user whose dockerd died without the hub
        stopping it (killed, crashed): its container may live on under its shim and still serve
        pages, but the user's docker socket, audit stream and policy socket are gone with it, and
        nothing else would bring them back. A policy socket that died alone is started again
        beside its daemon. A user whose lock is held (a start, stop or
        checkpoint in progress) is left to that."""
        while True:
            await anyio.sleep(DAEMON_WATCH_SECONDS)
            for rec in list(self.records.all()):
                if (
                    rec.state != "running"
                    or not rec.per_user_docker
                    or rec.net_id is None
                    or self.lock(rec.name).locked()
                    or self._routes.by_name(rec.name) is None
                ):
                    continue
                tpl = self._template_or_none(rec.template)
                spec = self._spec(rec.name, rec.net_id, tpl)
                # the pidfile first (no systemctl every 5 s per user); the supervisor decides
                pid = _daemon_pid(spec)
                what = "the docker daemon"
                if pid is not None and not containerd_serves(spec, pid):
                    # its own containerd (beside a system one) is gone: nothing restarts it
                    what = "the docker daemon's own containerd"
                elif pid is not None or await self.engine.call(self.supervisor.is_running, spec):
                    sockets = self.policy_sockets
                    if sockets is not None and not await self.engine.call(sockets.running, spec):
                        log.warning("%s: the policy socket died; starting it again", rec.name)
                        async with self.lock(rec.name):
                            await sockets.ensure(spec, rec, tpl)
                    continue
                log.warning(
                    "%s: %s died without the hub stopping it; starting the environment again "
                    "(workspace kept)",
                    rec.name,
                    what,
                )
                try:
                    if pid is not None:
                        # dockerd still answers (and says the container runs): take it down as
                        # if it had died too, so the start below replaces both
                        async with self.lock(rec.name):
                            await self.engine.call(self.supervisor.stop, spec)
                    await self.ensure_running(rec.user or rec.name)
                except Exception:
                    log.warning("%s: restart after the daemon died failed", rec.name)

    async def _current_workspace(
        self,
        rec: UserRecord,
        tpl: Template | None,
        client: docker.DockerClient,
        container: Container,
    ) -> None:
        """Adopting a running environment: when its workspace bind shows another directory than
        the one now at the workspace path (removed and made again, or its filesystem unmounted
        and mounted anew, while the hub was down), make the current one inert and restart the
        environment onto it, so the user sees, and can bind-mount, their real files. Compared by
        device and inode (``environment.shows_workspace``), never by path."""
        if rec.mode == "ephemeral" or (tpl is not None and tpl.ephemeral):
            return
        call = self.engine.call
        workspace = self.paths(rec.name).workspace
        info = await call(client.api.inspect_container, id_of(container))
        if await call(envs.shows_workspace, info, workspace) is not False:
            return
        log.warning(
            "%s: the environment shows a workspace directory that is no longer at %s (removed "
            "and made again, or its filesystem remounted, while the hub was down); restarting it "
            "onto the current directory",
            rec.name,
            workspace,
        )
        await call(mounts.make_inert, str(workspace))
        if rec.per_user_docker and self.policy_sockets is not None and rec.net_id is not None:
            # its bind pins were made in the old directory: a fresh process pins them again
            spec = self._spec(rec.name, rec.net_id, tpl)
            await self.policy_sockets.stop(spec)
            await self.policy_sockets.ensure(spec, rec, tpl)
        await call(client.api.restart, id_of(container), timeout=10)
        await call(container.reload)

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[Hub] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Reconcile, report ready, then run the registered services until cancelled."""
        await self.engine.call(network.check_pool, self.config.user_subnet_pool)
        await self.reconcile()
        async with anyio.create_task_group() as tg:
            for service in self._services:
                tg.start_soon(service)
            tg.start_soon(self._watch_daemons)
            task_status.started(self)
            await anyio.sleep_forever()


def _daemon_pid(spec: DaemonSpec) -> int | None:
    """The PID of the dockerd of ``spec``, by its pidfile and command line alone (as
    ``LocalSupervisor.pid``; every supervisor starts dockerd with ``--pidfile``)."""
    try:
        pid = int(spec.pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    argv = procs.cmdline(pid)
    return pid if argv and argv[0].endswith("dockerd") and str(spec.pidfile) in argv else None


def _chown_top(path: Path, uid: int, gid: int, private: bool = False) -> None:
    """Give the workspace directory itself to the container user (contents are left alone),
    through a descriptor opened without following a link (``safefs``). ``private`` (under
    ``--userns-remap``, where ``<workspace-dir>`` is traversable) takes away its "other" bits."""
    with safefs.open_dir(path.parent, path.name) as fd:
        st = os.fstat(fd)
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.fchown(fd, uid, gid)
        if private and st.st_mode & 0o007:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~0o007)


def _userns_root(net_id: int | None) -> int | None:
    """The host id of the namespace root of the user with ``net_id`` (None: not known yet)."""
    if net_id is None:
        return None
    try:
        return userns.id_range(net_id).start
    except ValueError:
        return None  # a marker from outside the user range: allocation replaces it
