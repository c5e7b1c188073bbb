"""The idle arbiter: should a user's environment keep running, be checkpointed, or be stopped?

A pure function of the user's record, the clock and the configuration (``decide``), so the culler
that calls it is trivial and every rule is tested on its own. Anything uncertain (no activity
stamp, a clock that went backwards, an environment in transition) keeps the environment running:
culling an active user is the worst mistake an idle culler can make.

Rules, in order:

1. ``--idle-timeout=0`` (the default) never culls.
2. Only a ``running`` environment is culled; every other state is left alone.
3. Idle time is ``now - last_activity``; ``last_activity`` is the latest proxied HTTP request or
   WebSocket frame in either direction, or the moment the environment started if none came since,
   and never earlier than the moment this hub process began watching (activity stamps live in
   memory: after a hub restart nobody is culled before a full timeout). Below the timeout: keep.
4. Ephemeral environments are stopped (and removed), never checkpointed: their workspace is RAM
   the user was promised is thrown away, and a checkpoint would write it to disk instead.
5. Checkpointing is on when ``--checkpoint`` is given or the template sets
   ``rediacc.hub.checkpoint=true``; otherwise the environment is stopped.
6. After ``MAX_FAILURES`` consecutive CRIU failures the user is on stop-and-recreate.
7. Otherwise: checkpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, Protocol

import anyio

from hubcontrol.checkpoint import MAX_FAILURES
from hubcontrol.config import HubConfig, Template
from hubcontrol.durations import format_duration
from hubcontrol.records import UserRecord

if TYPE_CHECKING:
    from hubcontrol.services import HubServices

log = logging.getLogger(__name__)

KEEP: Final = "keep"
CHECKPOINT: Final = "checkpoint"
STOP: Final = "stop"

Action = Literal["keep", "checkpoint", "stop"]


class IdleRecord(Protocol):
    """What the arbiter reads from a user's record (``IdleFacts`` is the plain implementation)."""

    # properties: read-only, so a frozen dataclass (IdleFacts) implements them
    @property
    def state(self) -> str: ...
    @property
    def last_activity(self) -> float | None: ...
    @property
    def started_at(self) -> float | None: ...
    @property
    def template(self) -> Template | None: ...
    @property
    def checkpoint_disabled(self) -> bool: ...


@dataclass(frozen=True)
class IdleFacts:
    state: str
    last_activity: float | None = None  # epoch seconds of the latest request or frame
    started_at: float | None = None  # epoch seconds the environment (re)started
    template: Template | None = None
    checkpoint_disabled: bool = False  # three strikes
    # When this hub process began watching activity: stamps live in memory, so after a hub
    # restart a user active a second ago has none yet; nobody is culled before a full timeout.
    observed_since: float | None = None


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    idle_seconds: float | None = None


def checkpoint_wanted(config: HubConfig, template: Template | None) -> tuple[bool, str]:
    """Whether idle environments of ``template`` are checkpointed rather than stopped, and why."""
    if template is not None and template.ephemeral:
        return False, "ephemeral environments are stopped and removed, never checkpointed"
    # the template's own label wins over the flag either way (docs/configuration.md)
    if template is not None and template.checkpoint is False:
        return False, f"template {template.name!r} sets rediacc.hub.checkpoint=false"
    if template is not None and template.checkpoint:
        return True, f"template {template.name!r} sets rediacc.hub.checkpoint=true"
    if config.checkpoint:
        return True, "--checkpoint is set"
    return False, "checkpointing is off (no --checkpoint, no rediacc.hub.checkpoint=true)"


def decide(record: IdleRecord, now: float, config: HubConfig) -> Decision:
    """Keep, checkpoint or stop the environment described by ``record`` at time ``now``."""
    timeout = config.idle_timeout
    if not timeout or timeout <= 0:
        return Decision(KEEP, "idle timeout disabled (--idle-timeout=0)")
    if record.state != "running":
        return Decision(KEEP, f"environment is {record.state}, not running")
    observed = getattr(record, "observed_since", None)
    stamps = [t for t in (record.last_activity, record.started_at, observed) if t is not None]
    if not stamps:
        return Decision(KEEP, "no activity or start time recorded yet")
    last = max(stamps)
    if observed is not None and last == observed and now - observed < timeout:
        return Decision(
            KEEP,
            f"no activity seen since the hub started {format_duration(now - observed, parts=2)} ago "
            f"(idle timeout {format_duration(timeout, parts=2)})",
            now - observed,
        )
    idle = now - last
    if idle < 0:
        return Decision(KEEP, "last activity is in the future (clock changed); not culling")
    if idle < timeout:
        return Decision(
            KEEP,
            f"active {format_duration(idle, parts=2)} ago (idle timeout {format_duration(timeout, parts=2)})",
            idle,
        )
    over = f"idle {format_duration(idle, parts=2)} (timeout {format_duration(timeout, parts=2)})"
    wanted, why = checkpoint_wanted(config, record.template)
    if not wanted:
        return Decision(STOP, f"{over}; {why}", idle)
    if record.checkpoint_disabled:
        return Decision(
            STOP,
            f"{over}; checkpointing disabled after {MAX_FAILURES} consecutive failures "
            "(stop-and-recreate)",
            idle,
        )
    return Decision(CHECKPOINT, f"{over}; {why}", idle)


# --- the culler: the arbiter applied to a Hub -----------------------------------------------------


def sweep_interval(timeout: float) -> float:
    """How often the culler looks: a tenth of the timeout, between 0.5 s and 30 s."""
    return min(30.0, max(0.5, timeout / 10))


class IdleCuller:
    """Applies ``decide`` to every environment of a ``Hub`` every ``sweep_interval`` seconds.

    Uses only the Hub's surface for services (``services.HubServices``: records, activity stamps,
    per-user locks, ``stop``); ``IdleCuller.attach(hub)`` registers ``run`` as a service. An
    environment whose lock is held (starting, restoring, stopping) is skipped this round: its
    record is about to change. ``decisions`` keeps the latest decision per user for status pages
    ("active 3m ago", "idle 31m; --checkpoint is set").
    """

    def __init__(self, hub: HubServices, interval: float | None = None) -> None:
        self.hub = hub
        self.interval = interval or sweep_interval(hub.config.idle_timeout)
        self.decisions: dict[str, Decision] = {}
        self.observed_since = hub.clock()

    @classmethod
    def attach(cls, hub: HubServices, interval: float | None = None) -> IdleCuller | None:
        """Register a culler as a service of ``hub``; None when ``--idle-timeout`` is 0."""
        if not hub.config.idle_timeout or hub.config.idle_timeout <= 0:
            return None
        culler = cls(hub, interval)
        hub.add_service(culler.run)
        return culler

    def facts(self, rec: UserRecord) -> IdleFacts:
        seen = self.hub.activity(rec.username)
        try:
            template = self.hub.config.template(rec.template)
        except Exception:  # a template removed from the configuration: decide without it
            template = None
        checkpointer = self.hub.checkpointer
        disabled = bool(checkpointer and checkpointer.health(rec.name).disabled)
        return IdleFacts(
            state=rec.state,
            last_activity=seen[0] if seen else None,
            started_at=rec.started_at,
            template=template,
            checkpoint_disabled=disabled,
            observed_since=self.observed_since,
        )

    def users(self) -> list[str]:
        """The raw usernames of every persisted record (records are keyed by safe name)."""
        return [rec.user for rec in self.hub.records.all() if rec.user]

    async def sweep(self) -> dict[str, Decision]:
        """One pass over every user; returns the decisions taken, by username."""
        taken: dict[str, Decision] = {}
        for user in self.users():
            rec = self.hub.user_record(user)
            if rec is None or self.hub.lock(user).locked():
                continue
            decision = decide(self.facts(rec), self.hub.clock(), self.hub.config)
            self.decisions[user] = decision
            taken[user] = decision
            if decision.action == KEEP:
                continue
            log.info("idle culler: %s: %s: %s", user, decision.action, decision.reason)
            try:
                await self.hub.stop(user, checkpoint=decision.action == CHECKPOINT)
            except Exception:  # one user's failure must not stop the culler for everyone
                log.exception("idle culler: stopping %s failed", user)
        return taken

    async def run(self) -> None:
        while True:
            await anyio.sleep(self.interval)
            await self.sweep()
