"""Hook dispatch for the lean master: look each hook's handlers up once, not on every event.

mitmproxy's ``AddonManager.trigger_event`` walks every addon (and its children) and calls
``getattr`` for the hook name on each, for every event of every request; with a dozen addons of
which two or three implement a given hook that walk costs more than the hooks themselves
(profiled under ``hub start``). ``CachedAddonManager`` keeps, per hook name, the list of
handlers and drops the cache whenever an addon is added or removed. Semantics are mitmproxy's:
handlers run in chain order, each under ``safecall`` (an exception is logged, the next handler
still runs), ``AddonHalt`` stops the event, awaitable results are awaited.
"""

from __future__ import annotations

import inspect
import types
from typing import TYPE_CHECKING

from mitmproxy import exceptions, hooks
from mitmproxy.addonmanager import AddonManager, safecall, traverse

if TYPE_CHECKING:
    from mitmproxy.master import Master


class CachedAddonManager(AddonManager):
    def __init__(self, master: Master) -> None:
        super().__init__(master)
        self._handlers: dict[str, tuple] = {}

    def register(self, addon: object) -> object:
        self._handlers.clear()
        return super().register(addon)

    def remove(self, addon: object) -> None:
        self._handlers.clear()
        super().remove(addon)

    def clear(self) -> None:
        self._handlers.clear()
        super().clear()

    def handlers(self, name: str) -> tuple:
        found = self._handlers.get(name)
        if found is None:
            found = tuple(
                func
                for a in traverse(self.chain)
                if (func := getattr(a, name, None)) is not None
                and callable(func)
                and not isinstance(func, types.ModuleType)
            )
            self._handlers[name] = found
        return found

    async def trigger_event(self, event: hooks.Hook) -> None:
        handlers = self.handlers(event.name)
        if not handlers:
            return
        args = event.args()
        for func in handlers:
            try:
                with safecall():
                    result = func(*args)
                    if result is not None and inspect.isawaitable(result):
                        await result
            except exceptions.AddonHalt:
                return
