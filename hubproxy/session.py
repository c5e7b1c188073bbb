"""Who is asking: verify the session cookie and put the user into ``flow.metadata``.

Requests without a valid session are answered here: browser navigations are redirected to
``/_hub/login`` (with the page they wanted as ``next``), everything else (XHR, WebSocket
upgrades, API calls) gets a 401. Public hub endpoints (login, callback, logout, health) pass.
"""

from __future__ import annotations

from urllib.parse import quote

from mitmproxy import http

from hubproxy import cookies, pages
from hubproxy.context import ENDPOINT, SESSION, TARGET, USER, HubContext
from hubproxy.guard import fail_closed
from hubproxy.sessions import Session

PUBLIC_ENDPOINTS = frozenset({"login", "oauth/callback", "logout", "health"})


def current_session(context: HubContext, request: http.Request) -> Session | None:
    """The live server-side session named by a valid session cookie of this request, if any.

    A browser may send two cookies of the name (a host cookie and a domain cookie): the first
    one that verifies wins.
    """
    now = context.clock()
    for value in cookies.cookie_values(request.headers.get_all("cookie"), cookies.SESSION_COOKIE):
        claim = cookies.read_session_token(value, context.session_key, now)
        if claim is None:
            continue
        session = context.sessions.get(claim.sid, claim.user)
        if session is not None:
            return session
    return None


class SessionCheck:
    def __init__(self, context: HubContext) -> None:
        self.context = context

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or TARGET not in flow.metadata:
            return
        endpoint = flow.metadata.get(ENDPOINT)
        if endpoint in PUBLIC_ENDPOINTS:
            return
        session = current_session(self.context, flow.request)
        if session is not None:
            flow.metadata[SESSION] = session
            flow.metadata[USER] = session.user
            return
        if pages.wants_html(flow.request) and flow.request.method in ("GET", "HEAD"):
            flow.response = pages.redirect("/_hub/login?next=" + quote(flow.request.path, safe=""))
        elif endpoint is not None and endpoint.startswith("api/"):
            flow.response = pages.json_response(401, {"error": "not logged in"})
        else:
            flow.response = pages.page(
                401,
                "Not logged in",
                "Log in to use this hub.",
                links=[("Log in", "/_hub/login")],
            )
