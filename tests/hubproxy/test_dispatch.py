"""The lean master's cached hook dispatch behaves as mitmproxy's own AddonManager."""

from __future__ import annotations

import asyncio

import pytest
from mitmproxy import exceptions, options
from mitmproxy.addonmanager import AddonManager
from mitmproxy.master import Master
from mitmproxy.proxy.layers.http import HttpRequestHeadersHook
from mitmproxy.test import tflow

from hubproxy.server.dispatch import CachedAddonManager


class Recorder:
    def __init__(self, name: str, calls: list, fail: bool = False, halt: bool = False) -> None:
        self.name = name
        self.calls = calls
        self.fail = fail
        self.halt = halt

    def requestheaders(self, flow) -> None:
        self.calls.append(self.name)
        if self.fail:
            raise ValueError("boom")
        if self.halt:
            raise exceptions.AddonHalt()


class AsyncRecorder:
    def __init__(self, calls: list) -> None:
        self.calls = calls

    async def requestheaders(self, flow) -> None:
        await asyncio.sleep(0)
        self.calls.append("async")


class Parent:
    """An addon with children, as mitmproxy's scripts are."""

    def __init__(self, calls: list) -> None:
        self.addons = [Recorder("child", calls)]


class NoHooks:
    pass


def _run(manager_cls, make_addons) -> list:
    async def main():
        calls: list = []
        master = Master(options.Options())
        master.addons = manager_cls(master)
        try:
            master.addons.add(*make_addons(calls))
            await master.addons.trigger_event(HttpRequestHeadersHook(tflow.tflow()))
        finally:
            master._legacy_log_events.uninstall()  # its log handler outlives the loop otherwise
        return calls

    return asyncio.run(main())


@pytest.mark.parametrize(
    "make_addons",
    [
        lambda c: [Recorder("a", c), NoHooks(), Recorder("b", c)],
        lambda c: [Recorder("a", c), Parent(c), AsyncRecorder(c), Recorder("b", c)],
        lambda c: [Recorder("a", c, fail=True), Recorder("b", c)],
        lambda c: [Recorder("a", c, halt=True), Recorder("b", c)],
        lambda c: [NoHooks()],
    ],
    ids=["plain", "children-and-async", "exception-logged-next-runs", "halt", "no-handlers"],
)
def test_same_calls_as_mitmproxy(make_addons):
    assert _run(CachedAddonManager, make_addons) == _run(AddonManager, make_addons)


def test_cache_follows_added_and_removed_addons():
    async def main():
        calls: list = []
        master = Master(options.Options())
        master.addons = CachedAddonManager(master)
        a, b = Recorder("a", calls), Recorder("b", calls)
        try:
            master.addons.add(a)
            event = HttpRequestHeadersHook(tflow.tflow())
            await master.addons.trigger_event(event)
            master.addons.add(b)
            await master.addons.trigger_event(event)
            master.addons.remove(a)
            await master.addons.trigger_event(event)
        finally:
            master._legacy_log_events.uninstall()
        return calls

    assert asyncio.run(main()) == ["a", "a", "b", "b"]
