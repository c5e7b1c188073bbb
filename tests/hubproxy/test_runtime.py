"""The control-plane thread and its adapter, with a Hub stand-in that records what it is asked
(the real Hub runs in tests/e2e and tests/hubproxy/test_mitmdump.py)."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from hubcontrol import Progress, RouteTable
from hubcontrol.engine import Engine
from hubproxy.server.controlthread import ControlThread

pytestmark = pytest.mark.anyio


class SlowHub:
    def __init__(self) -> None:
        self.calls: list = []
        self.running = False
        self.release = None
        self.engine = Engine()

    def snapshot(self):
        return RouteTable()

    def touch(self, user, kind="http"):
        pass

    def progress(self, user):
        return Progress()

    async def ensure_running(self, user, template=None):
        self.calls.append((user, template))
        await anyio.sleep(0.2)
        return template

    async def run(self, *, task_status=anyio.TASK_STATUS_IGNORED):
        self.running = True
        task_status.started()
        try:
            await anyio.sleep_forever()
        finally:
            self.running = False


async def test_one_start_per_user_and_a_new_template_starts_again():
    hub = SlowHub()
    thread = ControlThread(hub)
    control = thread.start()
    try:
        futures = [control.start("alice", None) for _ in range(10)]
        assert len({id(f) for f in futures}) == 1
        other = control.start("bob", None)
        switched = control.start("alice", "python")
        assert switched is not futures[0]
        await asyncio.gather(*futures, other, switched)
        assert sorted(hub.calls, key=str) == sorted(
            [("alice", None), ("alice", "python"), ("bob", None)], key=str
        )
        assert control.health() == {"ok": True, "control_plane": "running", "starting": []}
    finally:
        thread.stop()
    assert not hub.running and thread.failure() is None
    assert control.health()["ok"] is False


async def test_a_failed_control_plane_is_reported():
    class Broken(SlowHub):
        async def run(self, *, task_status=anyio.TASK_STATUS_IGNORED):
            task_status.started()
            raise RuntimeError("daemon pool exploded")

    thread = ControlThread(Broken())
    control = thread.start()
    try:
        await anyio.sleep(0.1)
        assert control.health()["ok"] is False
        assert "exploded" in str(thread.failure())
    finally:
        thread.stop()
