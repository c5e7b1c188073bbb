"""First addon: what is this request for? A prefix of a user's environment, a hub page, or nothing.

Sets ``flow.metadata[TARGET]`` (and ``ENDPOINT`` for ``/_hub/...``), or answers 400/404/503.
"""

from __future__ import annotations

from mitmproxy import http

from hubproxy import hosts
from hubproxy.context import ENDPOINT, SCHEME, TARGET, HubContext
from hubproxy.guard import fail_closed
from hubproxy.web import pages

# Browsers send a few KiB; nginx refuses more than 4 x 8 KiB by default. Anything above this is
# refused before it reaches an environment (or the hub's own parsing).
MAX_HEADER_BYTES = 64 * 1024


def browser_scheme(request: http.Request) -> str:
    """The scheme the browser used: Traefik's X-Forwarded-Proto when it is http/https."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return forwarded if forwarded in ("http", "https") else request.scheme


class HostRoute:
    def __init__(self, context: HubContext) -> None:
        self.context = context

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response:
            return
        if not self.context.ready:
            flow.response = pages.page(
                503, "Starting", "The hub is starting. Try again in a moment."
            )
            return
        config = self.context.config
        request = flow.request
        if sum(len(k) + len(v) + 4 for k, v in request.headers.fields) > MAX_HEADER_BYTES:
            flow.response = pages.page(
                431,
                "Request headers too large",
                "Your browser sent more header data than the hub accepts.",
                detail="Clearing this site's cookies usually helps.",
            )
            return
        if len(request.headers.get_all("host")) > 1:
            flow.response = pages.bad_request("The request has more than one Host header.")
            return
        host = hosts.normalize_host(request.host_header)
        if host is None:
            flow.response = pages.bad_request("The Host header is not a name this hub serves.")
            return
        if request.first_line_format == "absolute" or request.authority:
            # An absolute-form target or an HTTP/2 :authority must name the same host.
            if hosts.normalize_host(request.authority) != host:
                flow.response = pages.bad_request("The request target and Host header disagree.")
                return
        target = hosts.classify_host(host, config.base_domain, config.routes)
        if target is None:
            flow.response = pages.not_found(f"The hub serves no site at {host}.")
            return
        flow.metadata[TARGET] = target
        flow.metadata[SCHEME] = browser_scheme(request)
        if hosts.is_hub_path(request.path):
            endpoint = hosts.hub_endpoint(request.path)
            if endpoint is None:
                flow.response = pages.bad_request("This /_hub/ path is not canonical.")
                return
            flow.metadata[ENDPOINT] = endpoint
        elif target.kind == "hub":
            flow.response = pages.redirect("/_hub/")
