"""Who is asking: verify the session cookie and put the user into ``flow.metadata``.

Requests without a valid session are answered here: browser navigations are redirected to
``/_hub/login`` (with the page they wanted as ``next``), everything else (XHR, WebSocket
upgrades, API calls) gets a 401. Public hub endpoints (login, callback, logout, health) pass.

A request that names two different live sessions is refused whatever it asks for: one of the
cookies was planted (``conflict_response`` deletes them and asks the user to log in again).
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from mitmproxy import http

from hubproxy import cookies, identity, pages
from hubproxy.context import ENDPOINT, SCHEME, SESSION, TARGET, USER, HubContext
from hubproxy.guard import fail_closed
from hubproxy.sessions import Session

log = logging.getLogger("hubproxy.session")

PUBLIC_ENDPOINTS = frozenset({"login", "oauth/callback", "logout", "health"})


def request_sessions(context: HubContext, request: http.Request) -> list[Session]:
    """Every distinct live server-side session named by a valid session cookie of this request.

    A browser sends every cookie of the name whose domain and path match, the most specific
    path first: besides the hub's own cookie, one that a page on one of the hub's hosts set
    with ``document.cookie`` (``Domain=<base>``, a narrower ``Path=``). Stale, forged and
    expired values are not sessions and are skipped.
    """
    now = context.clock()
    found: dict[str, Session] = {}
    for value in cookies.cookie_values(request.headers.get_all("cookie"), cookies.SESSION_COOKIE):
        claim = cookies.read_session_token(value, context.session_key, now)
        if claim is None or claim.sid in found:
            continue
        session = context.sessions.get(claim.sid, claim.user)
        if session is not None:
            found[session.sid] = session
    return list(found.values())


def current_session(context: HubContext, request: http.Request) -> Session | None:
    """The one live session of this request, or None: none, or several (see ``ambiguous``).

    Two valid cookies naming different sessions mean one of them was planted, and the hub
    cannot tell which: neither may act.
    """
    sessions = request_sessions(context, request)
    return sessions[0] if len(sessions) == 1 else None


def ambiguous(context: HubContext, request: http.Request) -> list[Session]:
    """The sessions of a request that names more than one (else an empty list)."""
    sessions = request_sessions(context, request)
    return sessions if len(sessions) > 1 else []


def conflict_response(context: HubContext, flow: http.HTTPFlow, sessions: list[Session]):
    """The answer to a request with several sessions: log in again, with every session cookie
    this request could carry deleted (a planted one included)."""
    log.warning(
        "hub: refused a request to %s carrying %d sessions (%s): a session cookie was planted, "
        "probably by a page on one of the hub's hosts",
        flow.request.host_header,
        len(sessions),
        ", ".join(sorted({identity.shown(s.user) for s in sessions})),
    )
    target = flow.metadata.get(TARGET)
    clearing = cookies.clearing_set_cookies(
        cookies.SESSION_COOKIE,
        flow.request.path,
        target.host if target is not None else "",
        context.config.base_domain,
        secure=flow.metadata.get(SCHEME) == "https",
    )
    message = (
        "Your browser sent two different hub sessions at once, so the hub cannot tell who you "
        "are. One of them was probably set by a web page opened through the hub. The hub has "
        "removed them: log in again."
    )
    if pages.wants_html(flow.request):
        response = pages.page(
            401,
            "Log in again",
            message,
            detail="If this happens again, close pages you do not trust that were opened "
            "through this hub, then log in.",
            links=[("Log in again", "/_hub/login")],
        )
    else:
        response = pages.json_response(401, {"error": "several sessions; log in again"})
    for value in clearing:
        response.headers.add("Set-Cookie", value)
    return response


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
        sessions = request_sessions(self.context, flow.request)
        if len(sessions) > 1:
            flow.response = conflict_response(self.context, flow, sessions)
            return
        session = sessions[0] if sessions else None
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
