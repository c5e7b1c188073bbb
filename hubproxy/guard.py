"""Fail closed: a request hook that raises answers the request itself.

mitmproxy logs exceptions from hooks and lets the flow continue (``safecall``), which for a
security check would mean "let it through". Every request-path hook is wrapped so that an
unexpected error ends in a 500 page (and a WebSocket hook error kills the connection) instead.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar, cast

from mitmproxy import exceptions, http

from hubproxy.web import pages

if TYPE_CHECKING:
    from mitmproxy.proxy.mode_servers import ProxyConnectionHandler

log = logging.getLogger("hubproxy")

# a hook ``hook(self, flow)`` of an addon, sync or async
Hook = TypeVar("Hook", bound=Callable[..., object])


def connection_handler(flow: http.HTTPFlow) -> ProxyConnectionHandler | None:
    """mitmproxy's handler of the flow's client connection (it owns the sockets), or None."""
    from mitmproxy import ctx

    proxyserver = ctx.master.addons.get("proxyserver")
    return proxyserver.connections.get(flow.client_conn.id) if proxyserver else None


def close_connection(flow: http.HTTPFlow) -> None:
    """Close the browser's connection of a live flow (e.g. a WebSocket at logout).

    ``flow.kill()`` is not enough for WebSockets in mitmproxy 11 (the WebSocket layer does not
    look at it), so the client connection is closed through the proxy server.
    """
    handler = connection_handler(flow)
    if handler is not None:
        handler.close_connection(flow.client_conn)
    elif flow.killable:
        flow.kill()


def _refuse(flow: http.HTTPFlow, name: str) -> None:
    log.exception("hub: %s failed for %s; refusing the request", name, flow.request.pretty_url)
    if flow.websocket is not None:
        close_connection(flow)
        return
    flow.response = pages.page(
        500,
        "Internal error",
        "The hub hit an unexpected error and did not forward your request.",
        detail="The error is in the hub's log.",
    )


def fail_closed(hook: Hook) -> Hook:
    """Wrap a sync or async hook ``hook(self, flow)``; ``AddonHalt`` (a hook's way to keep the
    addons after it from seeing the event) passes through."""
    if inspect.iscoroutinefunction(hook):

        @functools.wraps(hook)
        async def async_wrapper(self: object, flow: http.HTTPFlow) -> None:
            try:
                await hook(self, flow)
            except exceptions.AddonHalt:
                raise
            except Exception:
                _refuse(flow, f"{type(self).__name__}.{hook.__name__}")

        return cast(Hook, async_wrapper)

    @functools.wraps(hook)
    def wrapper(self: object, flow: http.HTTPFlow) -> Awaitable[None] | None:
        name = f"{type(self).__name__}.{hook.__name__}"
        try:
            result = hook(self, flow)
        except exceptions.AddonHalt:
            raise
        except Exception:
            _refuse(flow, name)
            return None
        # A sync hook may hand back an awaitable for the rare request that has to wait (the
        # progress long poll); mitmproxy awaits it before the flow goes on. It fails closed too.
        if inspect.isawaitable(result):
            return _guarded(result, flow, name)
        return None

    return cast(Hook, wrapper)


async def _guarded(work: Awaitable[object], flow: http.HTTPFlow, name: str) -> None:
    try:
        await work
    except exceptions.AddonHalt:
        raise
    except Exception:
        _refuse(flow, name)
