"""Who is asking: verify the session cookie and put the user into ``flow.metadata``.

Requests without a valid session are answered here: browser navigations are redirected to
``/_hub/login`` (with the page they wanted as ``next``), everything else (XHR, WebSocket
upgrades, API calls) gets a 401. Public hub endpoints (login, callback, logout, health) pass.

A session counts only with the browser cookie its login completed in, so a session cookie a
page planted (the attacker's own session) is ignored; a request that names two browser cookies
or two live sessions is refused whatever it asks for (``conflict_response`` deletes them and
asks the user to log in again).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import quote

from mitmproxy import http

from hubproxy.auth import cookies, identity
from hubproxy.auth.sessionstore import Session
from hubproxy.context import ENDPOINT, SCHEME, SESSION, TARGET, USER, HubContext
from hubproxy.guard import fail_closed
from hubproxy.web import pages

log = logging.getLogger("hubproxy.session")

PUBLIC_ENDPOINTS = frozenset({"login", "oauth/callback", "logout", "health"})


@dataclass(frozen=True)
class Lookup:
    """The session of a request, or why there is none to trust (``conflict``, for the log)."""

    session: Session | None = None
    conflict: str | None = None


def lookup(context: HubContext, request: http.Request) -> Lookup:
    """The one live session this request's cookies name, bound to this browser.

    A browser sends every cookie of the name whose domain and path match, the most specific path
    first: besides the hub's own, one that a page on one of the hub's hosts set with
    ``document.cookie`` (``Domain=<base>``, a narrower ``Path=``), holding the attacker's own
    valid session. So:

    - a session bound to another browser cookie than the one this request carries is not this
      browser's (it was planted or copied) and is ignored;
    - two browser cookies, or two sessions still standing, are a conflict: neither may act.

    Stale, forged and expired values are not sessions and are skipped.
    """
    headers = request.headers.get_all("cookie")
    ids = cookies.browser_ids(headers)
    if len(ids) > 1:
        return Lookup(conflict=f"{len(ids)} browser cookies")
    binding = cookies.browser_binding(ids[0]) if ids else None
    now = context.clock()
    found: dict[str, Session] = {}
    for value in cookies.cookie_values(headers, cookies.SESSION_COOKIE):
        claim = cookies.read_session_token(value, context.session_key, now)
        if claim is None or claim.sid in found:
            continue
        session = context.sessions.get(claim.sid, claim.user)
        if session is None:
            continue
        if session.browser is not None and session.browser != binding:
            log.warning(
                "hub: ignored a session of %s from another browser (planted or copied cookie)",
                identity.shown(session.user),
            )
            continue
        found[session.sid] = session
    if len(found) > 1:
        names = ", ".join(sorted({identity.shown(s.user) for s in found.values()}))
        return Lookup(conflict=f"{len(found)} sessions ({names})")
    return Lookup(session=next(iter(found.values()), None))


def current_session(context: HubContext, request: http.Request) -> Session | None:
    """The request's session (``lookup``), or None: none, or a conflict."""
    return lookup(context, request).session


def conflict_response(context: HubContext, flow: http.HTTPFlow, reason: str) -> http.Response:
    """The answer to a request whose cookies name several sessions or browsers: log in again,
    with every hub cookie of those names this request could carry deleted (a planted one
    included)."""
    log.warning(
        "hub: refused a request to %s carrying %s: a hub cookie was planted, probably by a page "
        "on one of the hub's hosts",
        flow.request.host_header,
        reason,
    )
    target = flow.metadata.get(TARGET)
    clearing = [
        value
        for name in (cookies.SESSION_COOKIE, cookies.BROWSER_COOKIE)
        for value in cookies.clearing_set_cookies(
            name,
            flow.request.path,
            target.host if target is not None else "",
            context.config.base_domain,
            secure=flow.metadata.get(SCHEME) == "https",
        )
    ]
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
        found = lookup(self.context, flow.request)
        if found.conflict:
            flow.response = conflict_response(self.context, flow, found.conflict)
            return
        session = found.session
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
