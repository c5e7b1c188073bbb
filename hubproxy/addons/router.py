"""Send an authenticated request to the session user's own environment.

The route comes from the control plane's immutable snapshot (no thread hop): the user's
``SERVICE_IP`` and the port of the request's prefix. The environment receives the original Host,
``X-Forwarded-For/Proto/Host``, and every cookie except the hub's. Bodies are streamed both ways.
When the environment is not running, the control plane is asked to start it (once per user) and
the browser gets a progress page that continues by itself.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from mitmproxy import http

from hubcontrol import Route
from hubproxy.auth import cookies
from hubproxy.context import ROUTED, SCHEME, SESSION, TARGET, USER, HubContext
from hubproxy.guard import fail_closed
from hubproxy.hosts import origin_allowed
from hubproxy.web import pages

log = logging.getLogger("hubproxy.router")

RUNNING = "running"
# The largest request body the hub reads when it answers a request itself (not routed).
MAX_ANSWERED_BODY = 1 << 20


def upstream(
    route: Route | None, prefix: str, default_ports: Mapping[str, int], template: str | None = None
) -> tuple[str, int] | None:
    """``(service_ip, port)`` for ``prefix`` of a running route, else None.

    With ``template`` (chosen at login), a route running another template does not count: the
    environment is being rebuilt, and the old one must not answer in the meantime.
    """
    if route is None or route.state != RUNNING or not route.service_ip:
        return None
    if template and route.template not in ("", template):
        return None
    port = route.ports.get(prefix) or default_ports.get(prefix)
    return (str(route.service_ip), int(port)) if port else None


def large_body(request: http.Request, limit: int = MAX_ANSWERED_BODY) -> bool:
    """True when a request announces a body above ``limit`` or of unknown length."""
    if "chunked" in request.headers.get("transfer-encoding", "").lower():
        return True
    try:
        return int(request.headers.get("content-length", "0")) > limit
    except ValueError:
        return True


def forwarded_for(existing: str | None, client_ip: str) -> str:
    return f"{existing}, {client_ip}" if existing else client_ip


class Router:
    def __init__(self, context: HubContext) -> None:
        self.context = context

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response:
            if large_body(flow.request):
                # mitmproxy would read the whole body into memory before sending our answer (a
                # login redirect, a 401): for anything big, drop the connection instead.
                flow.kill()
            return
        target = flow.metadata.get(TARGET)
        user = flow.metadata.get(USER)
        if target is None or target.kind != "route" or user is None:
            # Anything that reaches here unrouted is refused rather than sent to the placeholder.
            flow.response = pages.not_found()
            return
        control = self.context.control
        if flow.request.headers.get("upgrade", "").lower() == "websocket" and not origin_allowed(
            flow.request.headers.get("origin"),
            self.context.config.base_domain,
            self.context.config.routes,
        ):
            flow.response = pages.page(
                403,
                "Forbidden",
                "WebSocket connections are only accepted from the hub's own sites.",
            )
            return
        session = flow.metadata[SESSION]
        address = upstream(
            control.route(user), target.prefix, self.context.config.routes, session.template
        )
        if address is None:
            control.start(user, session.template)
            progress = control.progress(user)
            message = progress.message or "Preparing your environment..."
            if pages.wants_html(flow.request):
                flow.response = pages.progress_page(target.prefix, message)
            else:
                flow.response = pages.json_response(
                    503,
                    {"error": "environment is starting", "message": message},
                    {"Retry-After": "2"},
                )
            return
        request = flow.request
        request.data.host, request.data.port = address
        request.scheme = "http"
        kept = cookies.strip_hub_cookies(request.headers.get_all("cookie"))
        if kept is None:
            request.headers.pop("cookie", None)
        else:
            request.headers["cookie"] = kept
        request.headers["x-forwarded-for"] = forwarded_for(
            request.headers.get("x-forwarded-for"), flow.client_conn.peername[0]
        )
        request.headers["x-forwarded-proto"] = flow.metadata[SCHEME]
        request.headers["x-forwarded-host"] = request.host_header or ""
        request.stream = True
        flow.metadata[ROUTED] = True
        control.touch(user, "http")

    @fail_closed
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if not flow.metadata.get(ROUTED) or flow.response is None:
            return
        flow.response.stream = True
        # An environment must not set or overwrite the hub's own cookies.
        set_cookies = flow.response.headers.get_all("set-cookie")
        kept = cookies.without_hub_set_cookies(set_cookies)
        if len(kept) != len(set_cookies):
            flow.response.headers.set_all("set-cookie", kept)
