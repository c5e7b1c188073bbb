"""``/_hub/dashboard`` (the page) and ``/_hub/metrics`` for browser sessions.

The page is a shell that renders itself from ``/_hub/api/status`` (``statusapi``): a regular user
sees their own environment, an admin (``HUB_ADMIN_USERS``) everyone's. It carries the session's
CSRF token for the actions it posts. Its Content-Security-Policy allows only its own nonce'd
script and style and same-origin ``fetch``.
"""

from __future__ import annotations

import secrets

from mitmproxy import http

from hubproxy.addons.metrics import ProxyMetrics, render_metrics
from hubproxy.auth import identity
from hubproxy.auth.csrf import csrf_token
from hubproxy.context import ENDPOINT, SESSION, USER, HubContext
from hubproxy.guard import fail_closed
from hubproxy.web import pages
from hubproxy.web.dashboardpage import render_page


def dashboard_response(user: str, admin: bool, csrf: str) -> http.Response:
    nonce = secrets.token_urlsafe(16)
    return http.Response.make(
        200,
        render_page(user, admin, csrf, nonce).encode(),
        {
            "Content-Type": "text/html; charset=utf-8",
            "Content-Security-Policy": (
                f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
                "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; "
                "frame-ancestors 'none'"
            ),
            **pages.SECURITY_HEADERS,
        },
    )


class Dashboard:
    def __init__(self, context: HubContext, metrics: ProxyMetrics) -> None:
        self.context = context
        self.metrics = metrics

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response:
            return
        endpoint = flow.metadata.get(ENDPOINT)
        if endpoint not in ("dashboard", "metrics"):
            return
        user = flow.metadata.get(USER)
        session = flow.metadata.get(SESSION)
        if user is None or session is None:  # SessionCheck answers first; a second line
            flow.response = pages.page(401, "Not logged in", "Log in to use this hub.")
            return
        admin = identity.is_admin(self.context.config, user)
        if flow.request.method not in ("GET", "HEAD"):
            flow.response = pages.json_response(405, {"error": f"use GET for /_hub/{endpoint}"})
        elif endpoint == "metrics":
            if admin:
                flow.response = render_metrics(self.context, self.metrics)
            else:
                flow.response = pages.json_response(403, {"error": "metrics are for admins"})
        else:
            flow.response = dashboard_response(
                user, admin, csrf_token(self.context.session_key, session.sid)
            )
