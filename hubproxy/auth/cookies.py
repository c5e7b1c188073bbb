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
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

SESSION_COOKIE = "rediacc_hub_session"
# A random id per browser, set at login and kept across logouts; a session is bound to the one
# its login completed in (see hubproxy.addons.sessioncheck).
BROWSER_COOKIE = "rediacc_hub_browser"
BROWSER_TTL = 400 * 24 * 3600  # the longest lifetime browsers keep (RFC 6265bis caps at 400 days)
STATE_COOKIE_PREFIX = "rediacc_hub_oauth_"
HUB_COOKIE_PREFIX = "rediacc_hub_"
# Tokens longer than this are refused before any parsing (a cookie is a few hundred bytes).
MAX_TOKEN_LENGTH = 2048
# How many path levels ``clearing_set_cookies`` deletes cookies on (each costs a few headers).
MAX_CLEARED_DEPTH = 8


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


def new_browser_id() -> str:
    return secrets.token_urlsafe(18)


def browser_binding(browser_id: str) -> str:
    """What a session stores of its browser cookie (a digest: the store never holds the id)."""
    return hashlib.sha256(b"rediacc-hub/browser/" + browser_id.encode()).hexdigest()


def browser_ids(values: Iterable[str]) -> list[str]:
    """The distinct browser cookie values of a request's ``Cookie`` headers (a page may have
    planted a second one), ignoring values too long to be ours."""
    ids = [v for v in cookie_values(values, BROWSER_COOKIE) if 0 < len(v) <= 64]
    return list(dict.fromkeys(ids))


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


def is_hub_cookie_name(name: str) -> bool:
    """True when a cookie called ``name`` could be taken for one of the hub's own.

    Browsers compare names exactly, but other cookie readers fold case, and a ``__Host-`` or
    ``__Secure-`` prefix only adds rules to the same name; so all of these count.
    """
    folded = name.strip(" \t").lower()
    for prefix in ("__host-", "__secure-"):
        if folded.startswith(prefix):
            folded = folded[len(prefix) :]
    return folded.startswith(HUB_COOKIE_PREFIX)


def strip_hub_cookies(values: Iterable[str]) -> str | None:
    """The ``Cookie`` header an environment receives: everything except the hub's own cookies.

    Returns None when nothing is left (the header is then removed).
    """
    kept = [f"{n}={v}" for n, v in parse_cookie_header(values) if not is_hub_cookie_name(n)]
    return "; ".join(kept) or None


def _has_control_character(text: str) -> bool:
    return any((ord(ch) < 0x20 and ch != "\t") or ord(ch) == 0x7F for ch in text)


def set_cookie_names(value: str) -> tuple[str, ...]:
    """The names a ``Set-Cookie`` value sets, as a browser parses it, and every name the
    resulting cookie is read back under.

    RFC 6265bis 5.6: the name-value pair is what comes before the first ``;``; without ``=`` the
    name is empty and the whole pair is the value; name and value lose leading and trailing
    spaces and tabs. A cookie with an empty name is sent back as its value alone, so
    ``=rediacc_hub_session=X`` (and ``rediacc_hub_session`` without ``=``) arrive at the server as
    ``rediacc_hub_session=X``: for those the part of the value before its ``=`` counts too.
    """
    pair = value.split(";", 1)[0]
    name, sep, rest = pair.partition("=")
    if not sep:
        name, rest = "", pair
    name, rest = name.strip(" \t"), rest.strip(" \t")
    if name:
        return (name,)
    return ("", rest.split("=", 1)[0].strip(" \t"))


def without_hub_set_cookies(values: Iterable[str]) -> list[str]:
    """The ``Set-Cookie`` values an environment may send: none that sets a hub cookie.

    Used for routed responses (``router``) and WebSocket handshakes (``relay``) alike. A value
    with a control character is dropped too: RFC 6265bis browsers ignore it, and older parsers
    disagree on where such a value ends.
    """
    return [
        c
        for c in values
        if not _has_control_character(c)
        and not any(is_hub_cookie_name(n) for n in set_cookie_names(c))
    ]


def clearing_set_cookies(
    name: str, request_path: str, host: str, base_domain: str, *, secure: bool
) -> list[str]:
    """``Set-Cookie`` values that delete every cookie called ``name`` this request could carry.

    A browser sends a cookie when its path is a prefix of the request's path (RFC 6265bis
    5.1.4), and a cookie is replaced only by one with the same name, domain and path. A cookie
    planted by a page (``document.cookie``) may have any such path, host-only or with
    ``Domain=`` the base domain or this host; the hub cannot see which, so it deletes them all.
    """
    path = request_path.split("?", 1)[0].split("#", 1)[0] or "/"
    if not path.startswith("/"):
        path = "/"
    paths = ["/"]
    for i, ch in enumerate(path):
        if ch == "/" and i > 0:
            paths += [path[:i], path[: i + 1]]
        if len(paths) > 2 * MAX_CLEARED_DEPTH:
            break
    else:
        paths.append(path)
    domains: list[str | None] = [None]
    for candidate in (cookie_domain(base_domain), cookie_domain(host)):
        if candidate and candidate not in domains:
            domains.append(candidate)
    out: list[str] = []
    for p in dict.fromkeys(paths):
        for d in domains:
            out.append(set_cookie(name, "", max_age=0, secure=secure, domain=d, path=p))
    return out
