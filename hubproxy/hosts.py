"""Which part of the hub a request is for, decided from its Host and path: pure functions.

Routing never trusts the Host header to pick a *user* (the session does that); the host only picks
the *prefix* (``term``, ``code``, ...). Still, anything that is not exactly a name we serve is
refused: IP literals, names outside the base domain, trailing dots, odd ports, userinfo,
percent-encoding, and ``/_hub/`` paths that are not canonical.
"""

from __future__ import annotations

import re
from collections.abc import Container
from dataclasses import dataclass
from urllib.parse import urlsplit

HUB_PATH = "/_hub"
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_PORT = re.compile(r"^[0-9]{1,5}$")


def normalize_host(value: str | None) -> str | None:
    """The lower-cased host name of a Host header (port dropped), or None if it is not a DNS name.

    Refused: empty values, userinfo (``a@b``), IP literals, a trailing dot, bad ports, labels with
    characters outside ``[a-z0-9-]``.
    """
    if not value:
        return None
    host = value.strip().lower()
    if not host or "@" in host or "[" in host or "]" in host:
        return None
    name, sep, port = host.rpartition(":")
    if sep:
        if not _PORT.match(port) or not 0 < int(port) < 65536:
            return None
        host = name
    if len(host) > 253 or host.endswith("."):
        return None
    labels = host.split(".")
    if not all(_LABEL.match(label) for label in labels):
        return None
    if labels[-1].isdigit():  # 127.0.0.1, 10.1 and friends: IP literals are never served
        return None
    return host


@dataclass(frozen=True)
class Target:
    """What a request addresses: ``kind`` is "route" (a prefix), "hub" (the bare base domain)."""

    kind: str
    host: str
    prefix: str | None = None


def classify_host(host: str, base_domain: str, prefixes: Container[str]) -> Target | None:
    """The target for a normalized host, or None for a host the hub does not serve (404)."""
    base = base_domain.lower().rstrip(".")
    if host == base:
        return Target("hub", host)
    prefix, sep, rest = host.partition(".")
    if sep and rest == base and prefix in prefixes:
        return Target("route", host, prefix)
    return None


def is_hub_path(path: str) -> bool:
    """True when a request path (with query) is in the hub's own ``/_hub`` namespace."""
    p = path.split("?", 1)[0].split("#", 1)[0]
    return p == HUB_PATH or p.startswith(HUB_PATH + "/")


def hub_endpoint(path: str) -> str | None:
    """The hub endpoint of a ``/_hub/...`` path (e.g. "login", "api/progress"), or None when the
    path is not canonical: encoded characters, ``..``, ``.``, empty segments or backslashes."""
    p = path.split("?", 1)[0]
    if not is_hub_path(p):
        return None
    rest = p[len(HUB_PATH) :].lstrip("/") if p != HUB_PATH else ""
    if p.startswith(HUB_PATH + "//") or "%" in p or "\\" in p or ";" in p:
        return None
    segments = rest.split("/") if rest else []
    if any(s in ("", ".", "..") for s in segments):
        return None
    return "/".join(segments)


def safe_return_url(
    url: str | None, base_domain: str, prefixes: Container[str], default: str = "/"
) -> str:
    """Where to send the browser after login: ``url`` if it stays on a site the hub serves, else
    ``default``.

    Accepted: a path (``/x?y``) that is not scheme-relative (``//evil``, ``/\\evil``), or an
    absolute http(s) URL without userinfo whose host is the base domain or ``<prefix>.<base>``
    for a configured prefix (``classify_host``). Other labels under the base domain may be
    other services, or names a wildcard DNS entry sends anywhere: never returned to.
    """
    if not url or len(url) > 2048:
        return default
    if any(ord(c) < 0x21 or c == "\\" for c in url):
        return default
    if url.startswith("/"):
        if url.startswith("//"):
            return default
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return default
    if parts.scheme not in ("http", "https") or parts.username or parts.password:
        return default
    try:
        netloc_host = normalize_host(parts.netloc)
    except ValueError:
        return default
    if netloc_host is None or classify_host(netloc_host, base_domain, prefixes) is None:
        return default
    return url


def sibling_url(
    scheme: str, host_header: str, prefix: str, base_domain: str, path: str = "/"
) -> str:
    """The URL of another prefix's site, keeping the port the browser used (``:7112`` locally)."""
    _, sep, port = (host_header or "").rpartition(":")
    suffix = f":{port}" if sep and _PORT.match(port) else ""
    return f"{scheme}://{prefix}.{base_domain}{suffix}{path}"


def origin_allowed(origin: str | None, base_domain: str, prefixes: Container[str]) -> bool:
    """True when a WebSocket handshake's ``Origin`` is one of the hub's own sites (any port).

    A missing Origin (non-browser clients) is allowed: the session cookie still decides. A page
    on another subdomain of the same registrable domain is "same-site" for SameSite=Lax cookies,
    so without this check it could open a user's terminal WebSocket with the user's cookie.
    """
    if origin is None:
        return True
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or parts.path not in ("", "/"):
        return False
    host = normalize_host(parts.netloc)
    return host is not None and classify_host(host, base_domain, prefixes) is not None
