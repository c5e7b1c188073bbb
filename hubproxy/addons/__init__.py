"""The request path: the hub's mitmproxy addons, one per file named after its class, and the order
mitmproxy runs them in (``hub_addons``, one plain list).

Pure helpers an addon needs sit beside it as module-level functions (``router.upstream``,
``statusapi.may``); the ones several addons share live in ``hubproxy.auth``, ``hubproxy.hosts``
and ``hubproxy.web``. ``bootstrap.Bootstrap`` is added in front only under ``mitmdump -s
addons/hub.py``; ``hub start --workers N`` adds its own first addons (``hubproxy.workers``).
"""

from __future__ import annotations

from hubproxy.addons.activity import Activity
from hubproxy.addons.adminapi import AdminApi
from hubproxy.addons.dashboard import Dashboard
from hubproxy.addons.headresponse import HeadResponse
from hubproxy.addons.hostroute import HostRoute
from hubproxy.addons.hubapi import HubApi
from hubproxy.addons.metrics import Metrics, ProxyMetrics
from hubproxy.addons.oauthlogin import OAuthLogin
from hubproxy.addons.router import Router
from hubproxy.addons.sessioncheck import SessionCheck
from hubproxy.addons.statusapi import StatusApi
from hubproxy.addons.websocketrelay import WebSocketRelay
from hubproxy.context import HubContext

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
    (observes only) → WebSocket activity (upgrades the relay does not take) → HEAD answers
    emptied of bodies."""
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
        HeadResponse(),
    ]
