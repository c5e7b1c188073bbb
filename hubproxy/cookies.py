"""Signed tokens and the hub's cookies: pure functions, no proxy.

A token is ``base64url(json) "." base64url(hmac_sha256(key, json))``. Keys are derived per purpose
from the session secret, so a token made for one purpose (an OAuth state) never verifies as another
(a session). The session cookie carries only the user name, a session id and an expiry; everything
else (groups, template, admin flag) stays server-side in the session store.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
from collections.abc import Iterable
from dataclasses import dataclass

SESSION_COOKIE = "rediacc_hub_session"
STATE_COOKIE_PREFIX = "rediacc_hub_oauth_"
HUB_COOKIE_PREFIX = "rediacc_hub_"
# Tokens longer than this are refused before any parsing (a cookie is a few hundred bytes).
MAX_TOKEN_LENGTH = 2048


def derive_key(secret: str | bytes, purpose: str) -> bytes:
    """A key for one purpose ("session", "state", "pkce"), derived from the session secret."""
    raw = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(raw, b"rediacc-hub/" + purpose.encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(payload: dict, key: bytes) -> str:
    """Serialize ``payload`` compactly and append its HMAC."""
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    mac = hmac.new(key, body, hashlib.sha256).digest()
    return f"{_b64(body)}.{_b64(mac)}"


def unsign(token: str, key: bytes, now: float) -> dict | None:
    """The payload of a token made by ``sign`` with ``key``, or None if forged, malformed or expired.

    Expiry is the payload's ``exp`` (seconds since the epoch); a payload without one is refused.
    """
    if not token or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1:
        return None
    body_text, mac_text = token.split(".")
    try:
        body = _unb64(body_text)
        mac = _unb64(mac_text)
    except (ValueError, TypeError):
        return None
    if not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()):
        return None
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    exp = payload.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool) or exp <= now:
        return None
    return payload


@dataclass(frozen=True)
class SessionCookie:
    """What the session cookie asserts: ``user`` logged in as session ``sid`` until ``exp``."""

    user: str
    sid: str
    exp: int


def make_session_token(cookie: SessionCookie, key: bytes) -> str:
    return sign({"u": cookie.user, "s": cookie.sid, "exp": cookie.exp}, key)


def read_session_token(token: str, key: bytes, now: float) -> SessionCookie | None:
    """The verified session cookie, or None for forged, tampered, expired or malformed values."""
    payload = unsign(token, key, now)
    if payload is None:
        return None
    user, sid = payload.get("u"), payload.get("s")
    if not isinstance(user, str) or not user or not isinstance(sid, str) or not sid:
        return None
    return SessionCookie(user=user, sid=sid, exp=int(payload["exp"]))


def cookie_domain(base_domain: str) -> str | None:
    """The ``Domain=`` for a cookie shared by all prefixes, or None where browsers refuse one.

    Browsers reject ``Domain=`` on ``localhost``, on single-label names and on IP addresses; there
    the hub sets a cookie per host and a new host logs in again silently through the provider.
    """
    domain = base_domain.strip().lower().rstrip(".")
    if not domain or "." not in domain:
        return None
    if domain == "localhost" or domain.endswith(".localhost"):
        return None
    try:
        ipaddress.ip_address(domain)
    except ValueError:
        return domain
    return None


def set_cookie(
    name: str,
    value: str,
    *,
    max_age: int,
    secure: bool,
    domain: str | None = None,
    path: str = "/",
) -> str:
    """A ``Set-Cookie`` value: always HttpOnly and SameSite=Lax; ``max_age=0`` deletes."""
    parts = [f"{name}={value}", f"Path={path}", f"Max-Age={max(0, int(max_age))}"]
    if domain:
        parts.append(f"Domain={domain}")
    parts += ["HttpOnly", "SameSite=Lax"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def parse_cookie_header(values: Iterable[str]) -> list[tuple[str, str]]:
    """All ``name=value`` pairs of one or more ``Cookie`` headers, in order, duplicates kept.

    Browsers send the same name twice when a host cookie and a domain cookie both match, so
    callers look at every value rather than a dict's last one.
    """
    pairs: list[tuple[str, str]] = []
    for header in values:
        for item in header.split(";"):
            name, sep, value = item.strip().partition("=")
            if sep and name:
                pairs.append((name.strip(), value.strip()))
    return pairs


def cookie_values(values: Iterable[str], name: str) -> list[str]:
    """Every value sent for the cookie ``name``."""
    return [v for n, v in parse_cookie_header(values) if n == name]


def strip_hub_cookies(values: Iterable[str]) -> str | None:
    """The ``Cookie`` header an environment receives: everything except the hub's own cookies.

    Returns None when nothing is left (the header is then removed).
    """
    kept = [
        f"{n}={v}" for n, v in parse_cookie_header(values) if not n.startswith(HUB_COOKIE_PREFIX)
    ]
    return "; ".join(kept) or None


def without_hub_set_cookies(values: Iterable[str]) -> list[str]:
    """The ``Set-Cookie`` values an environment may send: none that sets a hub cookie."""
    return [c for c in values if not c.strip().startswith(HUB_COOKIE_PREFIX)]
