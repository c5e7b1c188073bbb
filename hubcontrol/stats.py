"""What the dashboard, the status API and ``/_hub/metrics`` show, gathered by the control plane.

Nothing here runs on the request path. ``StatsSampler`` is one of the Hub's services:

- every ``ROWS_INTERVAL`` seconds, and right after each lifecycle event, it refreshes the status
  rows (``Hub.status_rows()``) and each user's checkpoint record (failures, disabled);
- every ``STATS_INTERVAL`` (30) seconds, and soon after an environment starts or stops, it samples
  per-user disk usage (workspace + data-root dir, like ``du -sx``, walked in a child process at
  the lowest priority and bounded per tree: ``hubcontrol.du``; a bounded walk's bytes are a lower
  bound, ``disk_partial``), and from each running per-user daemon the running containers and
  images (docker-py, in worker threads behind a small limiter of its own so sampling never
  competes with starts for the engine's threads).

Readers on any thread call ``view()``: an immutable ``StatusView`` replaced by reference, so the
proxy's event loop reads it without locks or thread hops.

``Lifecycle`` counts spawns, restores and checkpoints with latency histograms, from the Hub's
lifecycle events (``environment-starting``, ``environment-running``, ``environment-failed``,
``environment-stopped``) and the checkpoint records. ``Counter`` and ``Histogram`` are the plain,
thread-safe primitives ``hubproxy.addons.metrics`` renders as Prometheus text.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import anyio
import docker
import docker.errors

from hubcontrol import du
from hubcontrol.storage import UserPaths
from hubcontrol.supervisor import ping

if TYPE_CHECKING:
    from hubcontrol.checkpoint import CheckpointHealth
    from hubcontrol.hub import EnvironmentStatus
    from hubcontrol.records import UserRecord
    from hubcontrol.services import HubServices

log = logging.getLogger(__name__)

STATS_INTERVAL = 30.0  # the seed: "Stats are sampled every 30 seconds"
ROWS_INTERVAL = 10.0
EVENT_SAMPLE_DELAY = 0.5  # after a start/stop, resample that user this soon (coalesced)
SAMPLE_THREADS = 2
QUIET_STATES = frozenset({"stopped", "checkpointed", "failed"})
DOCKER_TIMEOUT = 10
# seconds: a restore is ~1 s, a cold start seconds to minutes (image transfer)
LATENCY_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


# -- metric primitives --------------------------------------------------------------------------


class Counter:
    """A monotonically increasing count per label values (a tuple, in ``labels`` order)."""

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        self.name, self.help, self.labels = name, help, labels
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, *values: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[values] = self._values.get(values, 0.0) + amount

    def get(self, *values: str) -> float:
        return self._values.get(values, 0.0)

    def samples(self) -> list[tuple[tuple[str, ...], float]]:
        with self._lock:
            return sorted(self._values.items())


class Gauge(Counter):
    """A value that goes up and down (open WebSockets)."""

    def dec(self, *values: str, amount: float = 1.0) -> None:
        self.inc(*values, amount=-amount)


@dataclass
class _Buckets:
    counts: list[int]
    total: float = 0.0
    n: int = 0


class Histogram:
    """Observations counted in cumulative ``buckets`` (upper bounds, seconds) per label values."""

    def __init__(
        self,
        name: str,
        help: str,
        labels: tuple[str, ...] = (),
        buckets: tuple[float, ...] = LATENCY_BUCKETS,
    ) -> None:
        self.name, self.help, self.labels = name, help, labels
        self.buckets = tuple(sorted(buckets))
        self._values: dict[tuple[str, ...], _Buckets] = {}
        self._lock = threading.Lock()

    def observe(self, value: float, *values: str) -> None:
        with self._lock:
            b = self._values.get(values)
            if b is None:
                b = self._values[values] = _Buckets([0] * len(self.buckets))
            i = bisect.bisect_left(self.buckets, value)
            if i < len(self.buckets):
                b.counts[i] += 1
            b.total += value
            b.n += 1

    def samples(self) -> list[tuple[tuple[str, ...], list[tuple[float, int]], float, int]]:
        """Per label values: cumulative ``(le, count)`` pairs, the sum and the count."""
        out = []
        with self._lock:
            for values, b in sorted(self._values.items()):
                running, cumulative = 0, []
                for le, c in zip(self.buckets, b.counts, strict=True):
                    running += c
                    cumulative.append((le, running))
                out.append((values, cumulative, b.total, b.n))
        return out


class Lifecycle:
    """Spawn, restore and checkpoint counts and latencies, fed by the Hub's lifecycle events."""

    def __init__(self) -> None:
        self.spawns = Counter(
            "hub_spawns_total", "Environment starts without a checkpoint, by outcome", ("outcome",)
        )
        self.spawn_seconds = Histogram(
            "hub_spawn_seconds", "Seconds from start request to every route answering"
        )
        self.restores = Counter(
            "hub_restores_total",
            "Environment resumes from a CRIU checkpoint, by outcome",
            ("outcome",),
        )
        self.restore_seconds = Histogram(
            "hub_restore_seconds", "Seconds from start request to a restored environment answering"
        )
        self.checkpoints = Counter(
            "hub_checkpoints_total", "CRIU checkpoints of environments, by outcome", ("outcome",)
        )
        self.checkpoint_seconds = Histogram(
            "hub_checkpoint_seconds", "Seconds a successful CRIU dump took"
        )
        self.checkpoint_failures = Counter(
            "hub_checkpoint_failures_total",
            "CRIU failures (dump, restore or verification), as the three-strike rule counts them",
        )
        self.stops = Counter(
            "hub_stops_total", "Environments stopped or checkpointed, by result", ("state",)
        )
        self._starting: dict[str, tuple[float, str]] = {}
        self._restored_seen: dict[str, object] = {}

    def families(self) -> list[Counter | Histogram]:
        return [
            self.spawns,
            self.spawn_seconds,
            self.restores,
            self.restore_seconds,
            self.checkpoints,
            self.checkpoint_seconds,
            self.checkpoint_failures,
            self.stops,
        ]

    def on_event(self, event: str, rec: UserRecord, now: float) -> None:
        """Count one lifecycle event of the Hub (called on the Hub's loop; never blocks)."""
        name = rec.name
        if event == "environment-starting":
            self._starting[name] = (now, rec.state)
        elif event == "environment-running":
            started = self._starting.pop(name, None)
            restored = rec.restored
            if started is None:  # adopted at a hub restart: nothing was started
                if restored:
                    self._restored_seen[name] = restored
                return
            is_restore = bool(restored) and restored != self._restored_seen.get(name)
            if restored:
                self._restored_seen[name] = restored
            if is_restore:
                self.restores.inc("success")
                self.restore_seconds.observe(now - started[0])
            else:
                if started[1] == "checkpointed" and rec.restore_error:
                    self.restores.inc("failed")  # then started afresh on the same workspace
                self.spawns.inc("success")
                self.spawn_seconds.observe(now - started[0])
        elif event == "environment-failed":
            self._starting.pop(name, None)
            self.spawns.inc("failed")
        elif event == "environment-stopped":
            state = rec.state
            self.stops.inc(state)
            if state == "checkpointed":
                self.checkpoints.inc("success")

    def on_checkpoint_health(
        self, before: CheckpointHealth | None, after: CheckpointHealth
    ) -> None:
        """Count what changed in a user's checkpoint record since ``before`` (None: first look,
        which counts nothing): a new dump's duration, a new CRIU failure (dump, restore or
        verification: what the three-strike rule counts)."""
        if before is None:
            return
        if (
            after.checkpointed_at is not None
            and after.last_dump_seconds is not None
            and before.checkpointed_at != after.checkpointed_at
        ):
            self.checkpoint_seconds.observe(after.last_dump_seconds)
        if after.last_failure_at is not None and before.last_failure_at != after.last_failure_at:
            self.checkpoint_failures.inc()


# -- per-user numbers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class UserStats:
    """One user's sampled numbers; None where unknown (never sampled, or no per-user daemon)."""

    workspace_bytes: int | None = None
    data_root_bytes: int | None = None
    containers_running: int | None = None
    images: int | None = None
    daemon_running: bool = False
    sampled_at: float | None = None
    docker_sampled_at: float | None = None
    quiet: bool = False  # sampled while nothing of the user's ran (see StatsSampler.sample)
    error: str | None = None
    # the walk stopped at its bound (hubcontrol.du): the bytes above are a lower bound
    workspace_partial: bool = False
    data_root_partial: bool = False

    @property
    def disk_bytes(self) -> int | None:
        if self.workspace_bytes is None and self.data_root_bytes is None:
            return None
        return (self.workspace_bytes or 0) + (self.data_root_bytes or 0)

    @property
    def disk_partial(self) -> bool:
        """``disk_bytes`` is a lower bound: a walk stopped at its bound."""
        return self.workspace_partial or self.data_root_partial

    def to_json(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "disk_bytes": self.disk_bytes,
            "disk_partial": self.disk_partial,
        }


@dataclass(frozen=True)
class StatusView:
    """Everything the proxy reads, as of ``refreshed_at`` (rows) and each user's ``sampled_at``."""

    rows: tuple[EnvironmentStatus, ...] = ()  # sorted by name
    stats: Mapping[str, UserStats] = field(default_factory=lambda: MappingProxyType({}))
    checkpoints: Mapping[str, CheckpointHealth] = field(
        default_factory=lambda: MappingProxyType({})
    )
    refreshed_at: float | None = None
    interval: float = STATS_INTERVAL


def count_docker(url: str, timeout: int = DOCKER_TIMEOUT) -> tuple[int, int]:
    """(running containers, images) of the daemon at ``url``, as ``docker ps -q`` and
    ``docker images -q`` count them (images by distinct ID)."""
    client = docker.DockerClient(base_url=url, version="1.41", timeout=timeout)
    try:
        containers = len(client.api.containers(quiet=True))
        images = len({i["Id"] for i in client.api.images(quiet=False)})
        return containers, images
    finally:
        client.close()


def sample_user(
    paths: UserPaths,
    docker_url: str | None,
    socket_path: str | None,
    previous: UserStats | None,
    now: float,
    **walk_bounds: Any,
) -> UserStats:
    """Measure one user (blocking: runs in a worker thread). ``walk_bounds`` are ``du.measure``'s
    ``max_entries``/``max_seconds``.

    Disk usage is always measured, by a bounded walk in a child process (``hubcontrol.du``).
    Containers and images come from the user's own daemon when it answers; a stopped daemon
    runs no containers and keeps the images it had (they live in the data-root), so the last
    sampled image count stays.
    """
    workspace: du.Usage | None
    data_root: du.Usage | None
    error = None
    try:
        workspace, data_root = du.measure([paths.workspace, paths.data_root_dir], **walk_bounds)
    except (OSError, TimeoutError) as e:
        log.warning("disk usage of %s: %s", paths.user, e)
        error = f"disk usage not measured: {e}"
        workspace = data_root = None
    containers = images = None
    docker_at = previous.docker_sampled_at if previous else None
    alive = False
    if docker_url is not None:
        alive = socket_path is None or ping(socket_path)
        if alive:
            try:
                containers, images = count_docker(docker_url)
                docker_at = now
            except (docker.errors.DockerException, OSError) as e:
                error = "; ".join(filter(None, [error, f"daemon did not answer: {e}"]))
                alive = False
        if not alive:
            containers = 0
            images = previous.images if previous else None
    return UserStats(
        workspace_bytes=None if workspace is None else workspace.bytes,
        data_root_bytes=None if data_root is None else data_root.bytes,
        workspace_partial=workspace is not None and workspace.partial,
        data_root_partial=data_root is not None and data_root.partial,
        containers_running=containers,
        images=images,
        daemon_running=alive,
        sampled_at=now,
        docker_sampled_at=docker_at,
        error=error,
    )


class StatsSampler:
    """The Hub's stats service (see the module docstring). ``attach(hub)`` registers it."""

    def __init__(
        self,
        hub: HubServices,
        *,
        interval: float = STATS_INTERVAL,
        rows_interval: float = ROWS_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.hub = hub
        self.interval = interval
        self.rows_interval = rows_interval
        self.clock = clock
        self.lifecycle = Lifecycle()
        self._view = StatusView(interval=interval)
        self._limiter: anyio.CapacityLimiter | None = None
        self._wake: anyio.Event | None = None
        self._resample: set[str] = set()

    def attach(self, hub: HubServices) -> None:
        hub.add_listener(self._on_event)
        hub.add_service(self.run)

    def view(self) -> StatusView:
        """The latest view (any thread; immutable)."""
        return self._view

    # -- events (on the Hub's loop; must not block) ------------------------------------------

    def _on_event(self, event: str, rec: UserRecord) -> None:
        self.lifecycle.on_event(event, rec, self.clock())
        if event in ("environment-running", "environment-stopped", "environment-destroyed"):
            self._resample.add(rec.name)
        if self._wake is not None:
            self._wake.set()

    # -- work ---------------------------------------------------------------------------------

    async def refresh(self) -> StatusView:
        """Re-read the status rows (``status_rows()``) and checkpoint records (cheap; no disk walk,
        no docker)."""
        rows = tuple(await self.hub.status_rows())
        names = [r.name for r in rows]
        before = self._view.checkpoints
        health = await anyio.to_thread.run_sync(self._read_health, names, limiter=self._lim())
        for name, h in health.items():
            self.lifecycle.on_checkpoint_health(before.get(name), h)
        self._view = StatusView(
            rows=rows,
            stats=self._view.stats,
            checkpoints=MappingProxyType(health),
            refreshed_at=self.clock(),
            interval=self.interval,
        )
        return self._view

    def _read_health(self, names: Iterable[str]) -> dict[str, CheckpointHealth]:
        out = {}
        for name in names:
            try:
                out[name] = self.hub.checkpoint_health.get(name)
            except ValueError:
                continue
        return out

    async def sample(self, names: Iterable[str] | None = None) -> StatusView:
        """Sample disk and docker numbers of ``names`` (default: every known user)."""
        if not self._view.rows:
            await self.refresh()
        rows = {r.name: r for r in self._view.rows}
        wanted = sorted(rows if names is None else (n for n in names if n in rows))
        for name in wanted:
            row = rows[name]
            previous = self._view.stats.get(name)
            quiet = row.state in QUIET_STATES
            if names is None and quiet and previous is not None and previous.quiet:
                # Nothing of the user's has run since the last sample: the disk and images are
                # as they were, and walking every stopped user's data-root each time would make
                # the sampler's cost grow with users on record instead of users running.
                continue
            paths = UserPaths(self.hub.config.workspace_dir, name)
            docker_url = socket_path = None
            if row.per_user_docker:
                spec = self.hub.daemon_spec(name)  # by safe name (a record's name)
                if spec is not None:
                    docker_url, socket_path = spec.url, str(spec.socket)
            try:
                stats = await anyio.to_thread.run_sync(
                    sample_user,
                    paths,
                    docker_url,
                    socket_path,
                    previous,
                    self.clock(),
                    limiter=self._lim(),
                )
            except Exception as e:  # a bad user must not stop sampling the others
                log.warning("sampling %s failed: %s", name, e)
                continue
            merged = dict(self._view.stats)
            merged[name] = dataclasses.replace(stats, quiet=quiet)
            self._view = StatusView(
                rows=self._view.rows,
                stats=MappingProxyType(merged),
                checkpoints=self._view.checkpoints,
                refreshed_at=self._view.refreshed_at,
                interval=self.interval,
            )
        return self._view

    def _lim(self) -> anyio.CapacityLimiter:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(SAMPLE_THREADS)
        return self._limiter

    async def run(self) -> None:
        """Refresh rows on events and every ``rows_interval``; sample every ``interval``."""
        self._wake = anyio.Event()
        next_sample = 0.0
        while True:
            try:
                await self.refresh()
                now = anyio.current_time()
                if now >= next_sample:
                    self._resample.clear()
                    await self.sample()
                    next_sample = anyio.current_time() + self.interval
                elif self._resample:
                    await anyio.sleep(EVENT_SAMPLE_DELAY)  # coalesce a burst of events
                    names, self._resample = set(self._resample), set()
                    await self.refresh()
                    await self.sample(names)
            except anyio.get_cancelled_exc_class():
                raise
            except Exception:
                log.exception("stats: sampling failed; retrying in %.0f s", self.rows_interval)
            wait = min(self.rows_interval, max(0.0, next_sample - anyio.current_time()))
            with anyio.move_on_after(wait):
                await self._wake.wait()
            self._wake = anyio.Event()
