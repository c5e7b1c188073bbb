"""The idle arbiter: one parametrized table of records, clocks and configurations."""

from __future__ import annotations

import pytest

from hubcontrol.config import HubConfig, Template
from hubcontrol.idle import (
    CHECKPOINT,
    KEEP,
    STOP,
    IdleFacts,
    checkpoint_wanted,
    decide,
)

NOW = 1_800_000_000.0
MIN = 60.0
PLAIN = Template(name="default", image="img")
LABELLED = Template(name="cp", image="img", checkpoint=True)
OPTED_OUT = Template(name="nocp", image="img", checkpoint=False)
EPHEMERAL = Template(name="demo", image="img", mode="ephemeral", checkpoint=True)


def cfg(timeout: float = 30 * MIN, checkpoint: bool = True) -> HubConfig:
    return HubConfig(idle_timeout=timeout, checkpoint=checkpoint)


@pytest.mark.parametrize(
    ("facts", "config", "action", "reason"),
    [
        # 1. --idle-timeout=0 never culls, however old the activity
        (IdleFacts("running", NOW - 1e6, template=PLAIN), cfg(0), KEEP, "idle timeout disabled"),
        # 2. only running environments are culled
        (IdleFacts("starting", NOW - 1e6, template=PLAIN), cfg(), KEEP, "starting, not running"),
        (IdleFacts("checkpointed", NOW - 1e6), cfg(), KEEP, "checkpointed, not running"),
        (IdleFacts("restoring", NOW - 1e6), cfg(), KEEP, "restoring, not running"),
        (IdleFacts("stopped", None), cfg(), KEEP, "stopped, not running"),
        # 3. uncertain stamps keep the environment
        (IdleFacts("running", None, None, PLAIN), cfg(), KEEP, "no activity or start time"),
        (IdleFacts("running", NOW + 300, template=PLAIN), cfg(), KEEP, "in the future"),
        # below the timeout
        (IdleFacts("running", NOW - 29 * MIN, template=PLAIN), cfg(), KEEP, "active 29m ago"),
        (IdleFacts("running", NOW, template=PLAIN), cfg(), KEEP, "active 0s ago"),
        # activity counts from the later of last request and start (a restore counts as a start)
        (IdleFacts("running", NOW - 99 * MIN, NOW - 5 * MIN, PLAIN), cfg(), KEEP, "active 5m"),
        (IdleFacts("running", None, NOW - 31 * MIN, PLAIN), cfg(), CHECKPOINT, "idle 31m"),
        # a hub restarted 1m ago has no stamps yet: a full timeout before anyone is culled
        (
            IdleFacts("running", None, NOW - 99 * MIN, PLAIN, observed_since=NOW - MIN),
            cfg(),
            KEEP,
            "no activity seen since the hub started 1m ago",
        ),
        (
            IdleFacts("running", None, NOW - 99 * MIN, PLAIN, observed_since=NOW - 31 * MIN),
            cfg(),
            CHECKPOINT,
            "idle 31m",
        ),
        (
            IdleFacts("running", NOW - 5, NOW - 99 * MIN, PLAIN, observed_since=NOW - 31 * MIN),
            cfg(),
            KEEP,
            "active 5s ago",
        ),
        # exactly at the timeout: culled
        (IdleFacts("running", NOW - 30 * MIN, template=PLAIN), cfg(), CHECKPOINT, "idle 30m"),
        # 4. ephemeral: stop and remove, even when checkpointing is on everywhere
        (IdleFacts("running", NOW - 31 * MIN, template=EPHEMERAL), cfg(), STOP, "ephemeral"),
        # 5. checkpointing off: stop; on by flag or by template label
        (
            IdleFacts("running", NOW - 31 * MIN, template=PLAIN),
            cfg(checkpoint=False),
            STOP,
            "checkpointing is off",
        ),
        (
            IdleFacts("running", NOW - 31 * MIN, template=LABELLED),
            cfg(checkpoint=False),
            CHECKPOINT,
            "rediacc.hub.checkpoint=true",
        ),
        (IdleFacts("running", NOW - 31 * MIN, template=PLAIN), cfg(), CHECKPOINT, "--checkpoint"),
        # a template's rediacc.hub.checkpoint=false wins over --checkpoint (the docs' promise)
        (
            IdleFacts("running", NOW - 31 * MIN, template=OPTED_OUT),
            cfg(),
            STOP,
            "rediacc.hub.checkpoint=false",
        ),
        (IdleFacts("running", NOW - 31 * MIN, template=None), cfg(), CHECKPOINT, "--checkpoint"),
        # 6. three strikes: stop-and-recreate
        (
            IdleFacts("running", NOW - 31 * MIN, template=PLAIN, checkpoint_disabled=True),
            cfg(),
            STOP,
            "disabled after 3 consecutive failures",
        ),
        # long idle times read well (hubcontrol.durations.format_duration, parts=2)
        (
            IdleFacts("running", NOW - 3 * 3600 - 120, template=PLAIN),
            cfg(),
            CHECKPOINT,
            "idle 3h2m",
        ),
    ],
)
def test_decide(facts: IdleFacts, config: HubConfig, action: str, reason: str) -> None:
    decision = decide(facts, NOW, config)
    assert decision.action == action
    assert reason in decision.reason


def test_idle_seconds_reported_when_known() -> None:
    decision = decide(IdleFacts("running", NOW - 100, template=PLAIN), NOW, cfg(timeout=60))
    assert decision.idle_seconds == pytest.approx(100)
    assert decide(IdleFacts("stopped"), NOW, cfg()).idle_seconds is None


def test_decide_accepts_any_record_with_the_fields() -> None:
    class Record:  # e.g. the hub's own user record
        state = "running"
        last_activity = NOW - 3600
        started_at = NOW - 7200
        template = PLAIN
        checkpoint_disabled = False
        username = "alice"

    assert decide(Record(), NOW, cfg()).action == CHECKPOINT


@pytest.mark.parametrize(
    ("template", "flag", "wanted"),
    [
        (PLAIN, False, False),
        (PLAIN, True, True),
        (LABELLED, False, True),
        (EPHEMERAL, True, False),
        (None, False, False),
        (None, True, True),
    ],
)
def test_checkpoint_wanted(template: Template | None, flag: bool, wanted: bool) -> None:
    assert checkpoint_wanted(HubConfig(checkpoint=flag), template)[0] is wanted
