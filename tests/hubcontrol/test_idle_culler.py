"""The idle culler inside a real Hub: per-user dockerd (LocalSupervisor), real CRIU, short timeouts.

A user whose activity stamps stop is checkpointed and their daemon stopped; a user the proxy keeps
touching is left alone; an ephemeral user is stopped and removed; a user on three strikes is
stopped, not checkpointed. Status shows the culler's reason and the checkpoint record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from pathlib import Path

import pytest

from hubcontrol.checkpoint import CheckpointHealth
from hubcontrol.embed import embedded
from tests.support.hubcore import host_test_image, make_config, unique_user

pytestmark = [pytest.mark.docker, pytest.mark.criu, pytest.mark.timeout(240)]

IDLE_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def image():
    with host_test_image() as ref:
        yield ref


@contextlib.contextmanager
def culling_hub(tmp_path: Path, image: str):
    # root: this host's root lacks CAP_SYS_RESOURCE, so CRIU cannot dump other users' processes
    config = dataclasses.replace(
        make_config(tmp_path, image, user="root"), idle_timeout=IDLE_TIMEOUT, checkpoint=True
    )
    with embedded(config, ready_timeout=30) as hub:
        try:
            yield hub
        finally:
            for row in hub.status():
                with contextlib.suppress(Exception):
                    hub.destroy(row.user, remove_data=True)


@contextlib.contextmanager
def touching(hub, user: str, every: float = 0.2):
    """Stamp ``user``'s activity as the proxy does for WebSocket frames, from another thread."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every):
            hub.touch(user, "ws-in")

    thread = threading.Thread(target=run, daemon=True)
    hub.touch(user, "ws-in")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def wait_state(hub, user: str, state: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        rec = hub.hub.record(user)
        if rec and rec.get("state") == state:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{user} is {rec and rec.get('state')}, not {state}")
        time.sleep(0.2)


def test_idle_user_is_checkpointed_active_user_kept(tmp_path, image):
    idle, busy, eph = unique_user("idle"), unique_user("busy"), unique_user("eph")
    with culling_hub(tmp_path, image) as hub, touching(hub, busy):
        assert hub.hub.culler is not None and hub.hub.culler.interval == 0.5
        env = hub.ensure_running(idle)
        (Path(tmp_path) / "workspaces" / env.name / "notes.txt").write_text("mine")
        hub.ensure_running(busy)
        hub.ensure_running(eph, "eph")

        # the proxy stamps busy's WebSocket frames all along; idle and eph go quiet
        wait_state(hub, idle, "checkpointed")
        wait_state(hub, eph, "stopped")
        rows = {row.user: row for row in hub.status()}
        assert rows[busy].state == "running"
        assert "active" in rows[busy].idle
        assert not hub.hub.supervisor.is_running(hub.hub.daemon_spec(idle))  # memory freed
        assert rows[idle].checkpoint["checkpoint"]  # a checkpoint waits to be restored
        assert rows[idle].checkpoint["failures"] == 0
        # ephemeral: stopped and its container removed, never checkpointed
        assert not rows[eph].checkpoint.get("checkpoint")
        assert not hub.hub.supervisor.is_running(hub.hub.daemon_spec(eph))

        # the next request restores it, verified
        again = hub.ensure_running(idle)
        assert again.container_id == env.container_id
        record = hub.hub.record(idle)
        assert "processes restored with their memory" in record["restored"]["detail"]
        assert (Path(tmp_path) / "workspaces" / env.name / "notes.txt").read_text() == "mine"
        hub.touch(idle)
        assert hub.status() and hub.hub.record(idle)["state"] == "running"


def test_three_strikes_stop_instead_of_checkpoint(tmp_path, image):
    user = unique_user("strike")
    with culling_hub(tmp_path, image) as hub:
        env = hub.ensure_running(user)
        hub.hub.checkpointer.store.put(
            env.name, CheckpointHealth(failures=3, disabled=True, last_error="CRIU dump failed")
        )
        wait_state(hub, user, "stopped")
        row = next(r for r in hub.status() if r.user == user)
        assert row.checkpoint["disabled"] is True
        assert "disabled after 3 consecutive failures" in hub.hub.culler.decisions[user].reason
        # stop-and-recreate: the next login starts the same container afresh
        again = hub.ensure_running(user)
        assert again.container_id == env.container_id
        assert "restored" not in (hub.hub.record(user) or {})
