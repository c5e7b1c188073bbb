"""Per-user audit trail: each per-user daemon's docker events, as JSON lines in the user's log.

Three parts, from pure to stateful:

- ``to_record(event, user=..., net_id=...)``: the pure filter and mapper. A docker event either
  becomes one record of the seed's shape or is dropped (``None``). ``AUDITED`` lists what belongs
  in an audit trail; ``docs/audit.md`` says why.
- ``AuditStream``: one per running per-user daemon. Reads ``GET /events`` over the daemon's unix
  socket with httpx (async: nothing blocks the event loop and cancellation is immediate), starting
  ``since`` the user's cursor, drops events already written (by identity), and appends each record
  in a worker thread. It ends normally when the daemon stops.
- ``AuditManager``: owns the streams of all users. The control plane calls ``arm()`` right after
  it (re)starts a user's daemon, before it does anything on the user's behalf, and at hub start for
  every daemon that kept running; ``disarm()`` when it is done with a daemon.

No gaps, no duplicates: a daemon keeps its last 256 events in memory (none across its restart) and
replays those newer than ``since``. After a hub restart the stream resumes from the cursor; after a
daemon (re)start the cursor is older than anything the new daemon has, so its whole history is
replayed. If more than the daemon's buffer happened while no stream was attached, the events in
between are gone from the daemon: the stream writes an ``audit``/``gap`` record saying so.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from anyio.abc import TaskGroup, TaskStatus

from hubcontrol.auditlog import AuditLog, Cursor, event_key, event_nano
from hubcontrol.errors import AuditError
from hubcontrol.records import UserRecord

if TYPE_CHECKING:
    from hubcontrol.config import HubConfig
    from hubcontrol.services import HubServices

log = logging.getLogger(__name__)

ENVIRONMENT_LABEL = "rediacc.hub.role"
ENVIRONMENT_ROLE = "environment"

# What belongs in the audit trail, by event type. Left out on purpose: attach/detach/resize/top
# (terminal plumbing), exec_create/exec_detach (exec_start says the command ran), health_status
# (periodic noise), archive-path/extract-to-dir (docker cp stats, noisy), network connect/disconnect
# (one per container start/stop), volume mount/unmount (likewise), daemon reload.
AUDITED: Mapping[str, frozenset[str]] = {
    "container": frozenset(
        {
            "create", "start", "restart", "stop", "kill", "die", "destroy", "pause", "unpause",
            "checkpoint", "oom", "rename", "update", "commit", "export", "exec_start", "exec_die",
        }
    ),
    "image": frozenset({"pull", "push", "tag", "untag", "delete", "import", "load", "save"}),
    "network": frozenset({"create", "destroy", "remove"}),
    "volume": frozenset({"create", "destroy"}),
}  # fmt: skip
EVENT_TYPES = tuple(AUDITED)

# Attributes copied into ``attrs`` (in this order; ``image`` and ``name`` first, as in the seed).
# Container labels are not copied: they are the user's free text, not an audit fact.
KEPT_ATTRS = ("image", "name", "exitCode", "signal", "oldName", "execID", "driver", "type")
ORIGIN_HUB = "hub"
EXEC_ACTIONS = frozenset({"exec_start", "exec_die"})
# What a user may still do to a container the hub manages (the policy refuses them everything
# else on it: stop, kill, pause, rename, update, remove, archive; "not-hub" in dockerpolicy). The
# hub itself never commits or exports an environment. Execs are judged by their own ID.
USER_ACTIONS_ON_HUB_CONTAINERS = frozenset({"commit", "export"})
# Events of a hub container after which the user's environment runs and can act.
ENVIRONMENT_RUNS = frozenset({"start", "restart"})

# dockerd's in-memory event buffer (moby daemon/events: eventsLimit).
DAEMON_EVENT_BUFFER = 256


def iso_ts(nano: int) -> str:
    """The record's ``ts``: UTC, whole seconds, ``Z`` suffix (``2026-04-16T05:53:12Z``)."""
    return datetime.fromtimestamp(nano // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def split_action(action: str) -> tuple[str, str | None]:
    """``"exec_start: ls -l"`` -> ``("exec_start", "ls -l")``; plain actions have no argument."""
    name, sep, arg = action.partition(":")
    return (name.strip(), arg.strip() if sep else None)


class HubActions:
    """The execs and containers this hub process created on users' daemons, by ID.

    Docker events do not say which client caused them. The hub tells its own apart by what only
    it can know: the IDs the daemon returned to *its* requests. They are 256-bit random values
    chosen by the daemon, so a user can neither predict nor reuse one, and the hub records an
    ID before the action that emits the event (an exec's ID before ``exec start``; a container's
    name before its ``create`` and its ID before its ``start``). Everything a user does goes
    through their policy socket and gets IDs the hub never recorded: it is the user's.

    Process-wide (``HUB_ACTIONS``) because IDs are unique across daemons and the code creating
    them (``hubcontrol.environment``) has no handle on the audit manager. Thread-safe; keeps the
    newest ``keep`` IDs of each kind. In memory only: after a hub restart, the IDs of environments
    it adopts are recorded again from its user records (``AuditManager.attach``).
    """

    def __init__(self, keep: int = 4096) -> None:
        self._lock = threading.Lock()
        self._execs: dict[str, None] = {}
        self._containers: dict[str, None] = {}
        self._creating: dict[str, int] = {}
        self._keep = keep

    def _add(self, ids: dict[str, None], value: str) -> None:
        with self._lock:
            ids[value] = None
            while len(ids) > self._keep:
                del ids[next(iter(ids))]

    def exec_created(self, exec_id: str) -> None:
        """Record an exec the hub created; call before starting it."""
        self._add(self._execs, exec_id)

    def container_created(self, container_id: str) -> None:
        """Record a container the hub created (an environment, a probe); call before starting it."""
        self._add(self._containers, container_id)

    @contextlib.contextmanager
    def creating(self, name: str) -> Iterator[None]:
        """Around the hub's create of a container named ``name``: its ``create`` event may be read
        before the daemon's answer gives the hub its ID. Record the ID inside the block."""
        with self._lock:
            self._creating[name] = self._creating.get(name, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._creating.pop(name) - 1
                if left:
                    self._creating[name] = left

    def is_exec(self, exec_id: str) -> bool:
        return exec_id in self._execs

    def is_container(self, container_id: str, *, action: str = "", name: str = "") -> bool:
        if container_id in self._containers:
            return True
        return action == "create" and bool(name) and name in self._creating


HUB_ACTIONS = HubActions()


def origin_of(
    event: Mapping[str, Any], *, hub_acting: bool = False, hub_actions: HubActions | None = None
) -> str | None:
    """Who caused a docker event: ``"hub"``, or None for the user.

    - An exec (``exec_start``, ``exec_die``) is the hub's exactly when the hub created that exec
      ID (its hooks); every other exec, in any container, the environment included, is the
      user's.
    - Any other event on a container the hub created (the environment, a probe) is the hub's,
      except a ``commit`` or ``export``, which only a user makes.
    - Anything else is the hub's while ``hub_acting``: the hub was working on the daemon while
      the user had no environment to act from (the template image transfer before the
      environment starts, the containers a daemon stop stops).

    Labels decide nothing: whoever creates a container chooses its labels (``docker build`` with
    ``LABEL rediacc.hub.role=environment`` is enough), so a user could mark their own work.
    """
    hub_actions = hub_actions if hub_actions is not None else HubActions()
    action, _ = split_action(str(event.get("Action") or ""))
    actor = event.get("Actor") or {}
    attributes = actor.get("Attributes") or {}
    if action in EXEC_ACTIONS:
        return ORIGIN_HUB if hub_actions.is_exec(str(attributes.get("execID", ""))) else None
    if event.get("Type") == "container" and hub_actions.is_container(
        str(actor.get("ID", "")), action=action, name=str(attributes.get("name", ""))
    ):
        return None if action in USER_ACTIONS_ON_HUB_CONTAINERS else ORIGIN_HUB
    return ORIGIN_HUB if hub_acting else None


def to_record(
    event: Mapping[str, Any],
    *,
    user: str,
    net_id: int,
    hub_acting: bool = False,
    hub_actions: HubActions | None = None,
) -> dict[str, Any] | None:
    """The audit record for one docker event (``events(decode=True)`` shape), or None to drop it.

    What the hub caused itself (``origin_of``: its execs and containers by ID, and anything while
    ``hub_acting``, for example loading the template image before the user's environment
    exists) is kept but marked ``attrs.origin = "hub"``; the user's records carry no origin.
    """
    etype = str(event.get("Type") or "")
    action, argument = split_action(str(event.get("Action") or ""))
    if action not in AUDITED.get(etype, ()):
        return None
    actor = event.get("Actor") or {}
    attributes = actor.get("Attributes") or {}
    attrs: dict[str, str] = {k: str(attributes[k]) for k in KEPT_ATTRS if k in attributes}
    if argument:
        attrs["command"] = argument
    if origin_of(event, hub_acting=hub_acting, hub_actions=hub_actions) == ORIGIN_HUB:
        attrs["origin"] = ORIGIN_HUB
    return {
        "ts": iso_ts(event_nano(event)),
        "user": user,
        "net_id": net_id,
        "type": etype,
        "action": action,
        "resource": str(actor.get("ID", "")),
        "attrs": attrs,
    }


def gap_record(*, user: str, net_id: int, after_nano: int, before_nano: int) -> dict[str, Any]:
    """A record saying events between two times may be missing (the daemon's buffer overflowed)."""
    return {
        "ts": iso_ts(before_nano),
        "user": user,
        "net_id": net_id,
        "type": "audit",
        "action": "gap",
        "resource": "",
        "attrs": {"after": iso_ts(after_nano), "before": iso_ts(before_nano)},
    }


def _transport_and_base(docker_url: str) -> tuple[httpx.AsyncHTTPTransport, str]:
    # Plain HTTP to the daemon (a unix socket, or tcp:// without TLS as docker means it): no
    # certificate store to load, which would cost ~30 ms of CPU per stream armed.
    if docker_url.startswith("unix://"):
        uds = docker_url.removeprefix("unix://")
        return httpx.AsyncHTTPTransport(uds=uds, verify=False), "http://docker"
    if docker_url.startswith("/"):
        return httpx.AsyncHTTPTransport(uds=docker_url, verify=False), "http://docker"
    if docker_url.startswith(("tcp://", "http://")):
        base = "http://" + docker_url.split("://", 1)[1]
        return httpx.AsyncHTTPTransport(verify=False), base
    raise AuditError(
        "audit: unsupported docker URL",
        f"docker URL {docker_url!r} for the audit stream: use unix:///path/docker.sock or tcp://host:port",
    )


@dataclass
class _Windows:
    """Times when the hub itself acted on a user's daemon (ns since the epoch; end None = open)."""

    spans: list[list[int | None]]

    def covers(self, nano: int) -> bool:
        return any(s is not None and s <= nano and (e is None or nano <= e) for s, e in self.spans)

    def open(self) -> list[int | None]:
        span: list[int | None] = [time.time_ns(), None]
        self.spans.append(span)
        return span

    def close(self, span: list[int | None] | None = None) -> None:
        # The daemon stamps events before publishing them: a small margin keeps an event stamped
        # just before the end of the hub's work inside it.
        end = time.time_ns() + 1_000_000
        for sp in self.spans if span is None else [span]:
            if sp[1] is None:
                sp[1] = end
        self._forget_old()

    def close_at(self, nano: int) -> None:
        """End the open spans at ``nano`` (an event's time): the user's environment runs again."""
        for sp in self.spans:
            if sp[1] is None and sp[0] <= nano:  # type: ignore[operator]
                sp[1] = nano
        self._forget_old()

    def _forget_old(self) -> None:
        floor = time.time_ns() - 600 * 1_000_000_000
        self.spans = [sp for sp in self.spans if sp[1] is None or sp[1] >= floor]


@dataclass
class AuditCounters:
    """Totals since the hub started, for ``/_hub/metrics`` (shared by all streams of a manager)."""

    records: int = 0  # records written (gap records not counted)
    gaps: int = 0  # gap records written: the daemon's buffer overflowed while no stream ran
    write_errors: int = 0  # failed appends (each retried from the daemon's buffer)
    arm_failures: int = 0  # daemons that did not answer when their stream was armed


class AuditStream:
    """One per-user daemon's event stream, written to the user's audit log.

    ``run()`` reports readiness (``task_status.started()``) once the daemon has accepted the
    events request, so every later event is captured; it returns when the daemon stops (the
    stream ends and the daemon no longer answers ``/_ping``), reconnecting with ``since`` if only
    the connection dropped. Raises ``AuditError`` if the daemon cannot be reached at the start.
    """

    RECONNECT_DELAY = 1.0
    WRITE_RETRY_DELAY = 5.0

    def __init__(
        self,
        user: str,
        net_id: int,
        docker_url: str,
        audit_log: AuditLog,
        *,
        hub_windows: _Windows | None = None,
        limiter: anyio.CapacityLimiter | None = None,
        counters: AuditCounters | None = None,
        hub_actions: HubActions | None = None,
    ) -> None:
        self.user = user
        self.net_id = net_id
        self.docker_url = docker_url
        self.audit_log = audit_log
        self.started = False
        self.counters = counters or AuditCounters()
        self._windows = hub_windows or _Windows([])
        self._hub_actions = hub_actions if hub_actions is not None else HUB_ACTIONS
        self._limiter = limiter
        self._cursor: Cursor | None = None

    async def run(
        self, *, task_status: TaskStatus[AuditStream] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        transport, base = _transport_and_base(self.docker_url)
        self._cursor = await anyio.to_thread.run_sync(
            self.audit_log.load_cursor, self.user, limiter=self._limiter
        )
        timeout = httpx.Timeout(10.0, read=None)  # an idle event stream is not a timeout
        async with httpx.AsyncClient(
            transport=transport, base_url=base, timeout=timeout, trust_env=False
        ) as client:
            while True:
                # No type filter: the daemon's replay is then exactly its buffer, which is what
                # tells a full (overflowed) buffer apart from a short one.
                params = {"since": self._cursor.since()}
                requested = time.time_ns()
                try:
                    async with client.stream("GET", "/events", params=params) as response:
                        if response.status_code != 200:
                            body = (await response.aread()).decode(errors="replace")[:300]
                            raise AuditError(
                                "audit: the user's docker daemon refused the event stream",
                                f"GET /events on {self.docker_url} for {self.user}: "
                                f"{response.status_code} {body}",
                            )
                        if not self.started:
                            self.started = True
                            task_status.started(self)
                        await self._consume(response, requested)
                except httpx.TransportError as exc:
                    if not self.started:
                        raise AuditError(
                            "audit: the user's docker daemon did not answer",
                            f"events stream for {self.user} at {self.docker_url}: {exc!r}",
                        ) from exc
                    log.debug("audit stream for %s ended: %r", self.user, exc)
                except OSError as exc:
                    # The log could not be written (full disk, permissions): the cursor did not
                    # move, so a later attempt replays the events from the daemon's buffer.
                    self.counters.write_errors += 1
                    log.error("audit log for %s not written: %r; retrying", self.user, exc)
                    await anyio.sleep(self.WRITE_RETRY_DELAY)
                    continue
                if not await self._daemon_alive(client):
                    log.info("audit stream for %s ended: its daemon stopped", self.user)
                    return
                log.warning("audit stream for %s dropped, daemon alive: resuming", self.user)
                await anyio.sleep(self.RECONNECT_DELAY)

    async def _consume(self, response: httpx.Response, requested: int) -> None:
        cursor = self._cursor
        assert cursor is not None
        resumed_from = cursor.nano
        replayed = 0
        oldest_replayed: int | None = None
        replaying = True
        async for line in response.aiter_lines():
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                log.warning("audit stream for %s: not JSON, skipped: %.200s", self.user, line)
                continue
            nano = event_nano(event)
            batch: list[dict[str, Any]] = []
            if replaying:
                if nano <= requested:
                    replayed += 1
                    if oldest_replayed is None:
                        oldest_replayed = nano
                    # The daemon's buffer was full and starts after our cursor: events between
                    # were dropped by the daemon before we could read them.
                    if (
                        replayed == DAEMON_EVENT_BUFFER
                        and resumed_from
                        and oldest_replayed > resumed_from
                    ):
                        batch.append(
                            gap_record(
                                user=self.user,
                                net_id=self.net_id,
                                after_nano=resumed_from,
                                before_nano=oldest_replayed,
                            )
                        )
                else:
                    replaying = False
            key = event_key(event)
            if cursor.seen(key, nano):
                if batch:
                    await self._write(batch, None, nano)
                continue
            record = to_record(
                event,
                user=self.user,
                net_id=self.net_id,
                hub_acting=self._windows.covers(nano),
                hub_actions=self._hub_actions,
            )
            if record is not None and self._environment_runs(event):
                # From here the user's environment runs, and what its processes do through the
                # policy socket is theirs, even while the hub still waits for it to be ready.
                self._windows.close_at(nano)
            if record is not None:
                batch.append(record)
            elif not batch:
                continue  # not audited: a replay drops it again, no need to remember it
            await self._write(batch, key, nano)

    def _environment_runs(self, event: Mapping[str, Any]) -> bool:
        actor = event.get("Actor") or {}
        return (
            event.get("Type") == "container"
            and split_action(str(event.get("Action") or ""))[0] in ENVIRONMENT_RUNS
            and self._hub_actions.is_container(str(actor.get("ID", "")))
            and (actor.get("Attributes") or {}).get(ENVIRONMENT_LABEL) == ENVIRONMENT_ROLE
        )

    async def _write(self, records: list[dict[str, Any]], key: str | None, nano: int) -> None:
        cursor = self._cursor
        assert cursor is not None

        def write() -> None:
            self.audit_log.append(self.user, records)
            # Only a written line moves the cursor: if the append failed, the retry replays it.
            if key is not None:
                cursor.advance(key, nano)
            self.audit_log.save_cursor(self.user, cursor)

        # The log and the cursor are written in a worker thread: a slow disk stalls this stream,
        # never the control loop (and never the proxy, which runs in another thread entirely).
        await anyio.to_thread.run_sync(write, limiter=self._limiter)
        gaps = sum(1 for r in records if r.get("type") == "audit")
        self.counters.gaps += gaps
        self.counters.records += len(records) - gaps

    async def _daemon_alive(self, client: httpx.AsyncClient) -> bool:
        try:
            with anyio.fail_after(3):
                return (await client.get("/_ping")).status_code == 200
        except (httpx.HTTPError, TimeoutError):
            return False


class AuditManager:
    """All users' audit streams, in one task group.

    Use as ``async with AuditManager(config) as audit:`` or start it under the hub's task group
    with ``await tg.start(audit.run)``. ``arm`` is idempotent: it replaces a user's stream (the
    cursor carries over, so nothing is written twice).
    """

    def __init__(
        self,
        config: HubConfig | None = None,
        *,
        audit_dir: Path | str | None = None,
        limiter: anyio.CapacityLimiter | None = None,
    ) -> None:
        directory = audit_dir if audit_dir is not None else getattr(config, "audit_dir", None)
        if directory is None:
            from hubcontrol.config import DEFAULT_AUDIT_DIR

            directory = DEFAULT_AUDIT_DIR
        self.log = AuditLog(directory)
        self.counters = AuditCounters()
        self._limiter = limiter
        self._tg: TaskGroup | None = None
        self._streams: dict[str, tuple[AuditStream, anyio.CancelScope, anyio.Event]] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self._windows: dict[str, _Windows] = {}
        self._hub: HubServices | None = None
        # (coroutine function, args) queued by the listener
        self._pending: deque[tuple[Any, ...]] = deque()
        self._wakeup: anyio.Event | None = None

    async def __aenter__(self) -> AuditManager:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._report_dropped)
        return self

    async def _report_dropped(self) -> None:
        """Say what the budget dropped once its report is due, even if the user went quiet."""
        budget = self.log.budget
        while budget is not None:
            await anyio.sleep(budget.report_seconds)
            try:
                await anyio.to_thread.run_sync(
                    functools.partial(self.log.flush_all, force=False), limiter=self._limiter
                )
            except OSError as exc:
                log.error("audit: could not write a dropped record: %r", exc)
            budget = self.log.budget

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        try:
            return await self._tg.__aexit__(exc_type, exc, tb)
        finally:
            self._tg = None
            self._streams.clear()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled (for ``tg.start``), performing what ``attach()``'s listener queued."""
        async with self:
            task_status.started()
            while True:
                while self._pending:
                    op, args = self._pending.popleft()
                    try:
                        await op(*args)
                    except AuditError as exc:
                        # The daemon went away between its start and the arm: nothing to record.
                        log.warning("%s", exc.log_message)
                self._wakeup = anyio.Event()
                await self._wakeup.wait()

    def armed(self, user: str) -> bool:
        """Whether ``user``'s stream is running (it ends by itself when the daemon stops)."""
        return user in self._streams

    def armed_users(self) -> list[str]:
        return sorted(self._streams)

    def stream(self, user: str) -> AuditStream | None:
        entry = self._streams.get(user)
        return entry[0] if entry else None

    async def arm(self, user: str, net_id: int, docker_url: str) -> AuditStream:
        """Start (or restart) ``user``'s stream; returns once the daemon streams events to it.

        Call right after the daemon (re)started and before acting on the user's behalf, and at hub
        start for daemons that kept running. Raises ``AuditError`` if the daemon does not answer.
        """
        if self._tg is None:
            raise RuntimeError("AuditManager is not running: use 'async with' or tg.start(run)")
        lock = self._locks.setdefault(user, anyio.Lock())
        async with lock:
            await self._stop(user)
            stream = AuditStream(
                user,
                net_id,
                docker_url,
                self.log,
                hub_windows=self._windows.setdefault(user, _Windows([])),
                limiter=self._limiter,
                counters=self.counters,
            )
            scope = anyio.CancelScope()
            done = anyio.Event()

            async def supervise(*, task_status: TaskStatus[AuditStream]) -> None:
                try:
                    with scope:
                        await stream.run(task_status=task_status)
                except Exception as exc:
                    if not stream.started:
                        self.counters.arm_failures += 1
                        raise  # to arm()'s caller
                    # A running stream must not take the other users' streams down with it.
                    log.exception("audit stream for %s failed: %r", user, exc)
                finally:
                    # what the budget dropped since the last report: said before the stream ends
                    with anyio.CancelScope(shield=True), contextlib.suppress(OSError):
                        await anyio.to_thread.run_sync(self.log.flush, user, limiter=self._limiter)
                    done.set()
                    if self._streams.get(user, (None,))[0] is stream:
                        del self._streams[user]

            self._streams[user] = (stream, scope, done)
            try:
                await self._tg.start(supervise)
            except BaseException:
                self._streams.pop(user, None)
                raise
            log.info("audit stream armed for %s (net %s) on %s", user, net_id, docker_url)
            return stream

    async def disarm(self, user: str) -> None:
        """Stop ``user``'s stream (its cursor stays, so a later ``arm`` resumes without gaps)."""
        lock = self._locks.setdefault(user, anyio.Lock())
        async with lock:
            await self._stop(user)

    async def _stop(self, user: str) -> None:
        entry = self._streams.pop(user, None)
        if entry is not None:
            _, scope, done = entry
            scope.cancel()
            await done.wait()

    @contextlib.contextmanager
    def hub_operation(self, user: str) -> Iterator[None]:
        """Mark the user's events during this block as the hub's (``attrs.origin = "hub"``).

        For work the hub does on a user's daemon while the user has no environment to act from,
        such as transferring the template image. ``attach()`` does this for a Hub by itself.
        """
        windows = self._windows.setdefault(user, _Windows([]))
        span = windows.open()
        try:
            yield
        finally:
            windows.close(span)

    # -- following a Hub ------------------------------------------------------------------------

    def attach(self, hub: HubServices) -> None:
        """Follow ``hub``'s lifecycle: arm a stream whenever one of its per-user daemons starts.

        Registers ``run`` as one of the hub's services and a listener for its lifecycle events:

        - ``daemon-started`` (a start, a restart before a restore, or adoption of a daemon that
          kept running across a hub restart): arm the user's stream, resuming from its cursor.
          Unless the environment was already running (an adoption), the user has no environment
          to act from until it starts, so what happens on the daemon until then (template image
          transfer, environment network) is the hub's and is marked ``origin: hub``. The stream
          ends that window at the environment's own ``start`` event.
        - ``daemon-stopping``: the environment is stopped and the hub is stopping the daemon; the
          stream ends by itself once the daemon is gone, after recording the containers the
          shutdown stops (marked as the hub's).
        - ``environment-running``: the user can act again; stop marking.
        - ``environment-destroyed``: disarm.

        Every event's record names the environment container (``container_id``) the hub manages:
        it goes into ``HUB_ACTIONS``, so its lifecycle stays the hub's across hub restarts.

        The listener only queues work (the Hub calls listeners synchronously and requires them
        not to block); ``run`` performs it in order.
        """
        self._hub = hub
        hub.add_listener(self._on_hub_event)
        hub.add_service(self.run)

    def _on_hub_event(self, event: str, rec: UserRecord) -> None:
        if not rec.per_user_docker or rec.net_id is None:
            return  # a shared daemon has no per-user event stream
        user = rec.username
        windows = self._windows.setdefault(user, _Windows([]))
        if rec.container_id:
            # the environment the hub manages, also one adopted after a hub restart
            HUB_ACTIONS.container_created(rec.container_id)
        if event == "daemon-started":
            if rec.state != "running":
                # not an adoption of a running environment, whose user may be acting right now
                windows.open()
            url = self._hub.docker_url(user) if self._hub is not None else rec.docker_url
            if url:
                self._queue(self.arm, user, rec.net_id, url)
        elif event == "daemon-stopping":
            windows.open()
        elif event == "environment-running":
            windows.close()
        elif event == "environment-destroyed":
            windows.close()
            self._queue(self.disarm, user)

    def _queue(self, op: Callable[..., Awaitable[object]], *args: Any) -> None:
        # Listeners run on the Hub's event loop, so the Event may be set from here directly.
        self._pending.append((op, args))
        if self._wakeup is not None:
            self._wakeup.set()
