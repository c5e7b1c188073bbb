"""The request path: the hub's addons in the order mitmproxy runs them (one plain list)."""

from __future__ import annotations

from hubproxy.activity import Activity
from hubproxy.admin import AdminApi
from hubproxy.context import HubContext
from hubproxy.dashboard import Dashboard
from hubproxy.hostroute import HostRoute
from hubproxy.hubapi import HubApi
from hubproxy.metrics import Metrics, ProxyMetrics
from hubproxy.oauth import OAuthLogin
from hubproxy.relay import WebSocketRelay
from hubproxy.router import Router
from hubproxy.session import SessionCheck
from hubproxy.statusapi import StatusApi

# Options every hub proxy needs (see BRIEF: measured mitmproxy facts).
PROXY_OPTIONS = {
    # reverse mode rewrites Host before any hook sees it unless this is set
    "keep_host_header": True,
    # eager would connect to the placeholder reverse target and fail every request
    "connection_strategy": "lazy",
}


def hub_addons(context: HubContext) -> list:
    """Health and admin-token API → host → OAuth endpoints → session → status API and
    dashboard → hub API → router → WebSocket relay (takes routed upgrades over) → metrics
    (observes only) → WebSocket activity (upgrades the relay does not take)."""
    metrics = ProxyMetrics()
    return [
        AdminApi(context, metrics),
        HostRoute(context),
        OAuthLogin(context),
        SessionCheck(context),
        StatusApi(context),
        Dashboard(context, metrics),
        HubApi(context),
        Router(context),
        WebSocketRelay(context, metrics),
        Metrics(context, metrics),
        Activity(context),
    ]
