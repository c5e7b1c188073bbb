"""The request path: the hub's addons in the order mitmproxy runs them (one plain list)."""

from __future__ import annotations

from hubproxy.activity import Activity
from hubproxy.context import HubContext
from hubproxy.hostroute import HostRoute
from hubproxy.hubapi import HubApi
from hubproxy.oauth import OAuthLogin
from hubproxy.router import Router
from hubproxy.session import SessionCheck

# Options every hub proxy needs (see BRIEF: measured mitmproxy facts).
PROXY_OPTIONS = {
    # reverse mode rewrites Host before any hook sees it unless this is set
    "keep_host_header": True,
    # eager would connect to the placeholder reverse target and fail every request
    "connection_strategy": "lazy",
}


def hub_addons(context: HubContext) -> list:
    """Host → OAuth endpoints → session → hub API → router → WebSocket activity."""
    return [
        HostRoute(context),
        OAuthLogin(context),
        SessionCheck(context),
        HubApi(context),
        Router(context),
        Activity(context),
    ]
