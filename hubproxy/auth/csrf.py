"""CSRF tokens of browser sessions, and the check every cookie-authenticated POST passes.

The token is an HMAC of the session id, so it needs no storage and dies with the session. The
dashboard carries it in ``<meta name="hub-csrf">`` (sent back as ``X-Hub-CSRF``); the hub's
plain HTML forms (logout) carry it in a hidden field ``csrf``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from mitmproxy import http

CSRF_HEADER = "x-hub-csrf"
CSRF_FIELD = "csrf"


def csrf_key(session_key: bytes) -> bytes:
    return hmac.new(session_key, b"rediacc-hub/csrf", hashlib.sha256).digest()


def csrf_token(session_key: bytes, sid: str) -> str:
    """The CSRF token of session ``sid``."""
    mac = hmac.new(csrf_key(session_key), sid.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def origin_problem(request: http.Request, scheme: str) -> str | None:
    """Why a request is not from the hub's own page on this very host, or None.

    ``Sec-Fetch-Site`` and ``Origin`` are checked when the browser sends them. SameSite=Lax
    alone lets a sibling subdomain post, and the hub's prefix hosts serve users' environments.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"cross-site request (Sec-Fetch-Site: {site})"
    origin = request.headers.get("origin")
    if origin is not None:
        expected = f"{scheme}://{(request.host_header or '').lower()}"
        if origin.lower() != expected:
            return f"cross-origin request (Origin {origin!r}, expected {expected!r})"
    return None


def csrf_problem(
    request: http.Request, session_key: bytes, sid: str, scheme: str, given: str | None = None
) -> str | None:
    """Why a cookie-authenticated POST must be refused, or None when it passes.

    The token of the session is required: ``given`` (a form field) or else the ``X-Hub-CSRF``
    header; then ``origin_problem`` as a second line.
    """
    if given is None:
        given = request.headers.get(CSRF_HEADER, "")
    if not given:
        return "missing CSRF token (send the X-Hub-CSRF header the dashboard page carries)"
    if not hmac.compare_digest(given.encode(), csrf_token(session_key, sid).encode()):
        return "wrong CSRF token (reload the dashboard: the session changed)"
    return origin_problem(request, scheme)
