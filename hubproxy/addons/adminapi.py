"""The admin token, and the first addon: health for any Host, token-authenticated API calls.

The token is how ``hub status`` / ``hub stop`` (and scripts, and Prometheus) talk to a running
hub: 32 random bytes generated at the hub's first start into ``<state-dir>/admin.token``, mode
0600, owned by the user the hub runs as (root), so only root can read it. Requests send it as
``Authorization: Bearer <token>``. Rotate it by deleting the file and restarting the hub.

This addon runs before host routing because the CLI and probes talk to ``127.0.0.1:7112``, a Host
the browser-facing addons refuse:

- ``/_hub/health`` (``/live``, ``/ready``) on any Host, without authentication: liveness (the
  proxy answers) and readiness (configuration loaded, control plane running);
- ``/_hub/api/...`` and ``/_hub/metrics`` with an ``Authorization: Bearer`` header: a valid
  admin token is answered here (as an admin, without CSRF: no cookie is involved), anything
  else is 401;
- ``/_hub/metrics`` without credentials from a direct local connection (loopback peer, no
  ``X-Forwarded-For``/``Forwarded``, so not through Traefik): Prometheus on the same host.

Everything else passes to the browser path unchanged.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from mitmproxy import http
from mitmproxy.net.http.http1.assemble import assemble_response_head

from hubcontrol import write_new
from hubproxy import hosts
from hubproxy.addons.metrics import ProxyMetrics, render_metrics
from hubproxy.addons.statusapi import Principal, handle_api
from hubproxy.context import HubContext
from hubproxy.guard import fail_closed
from hubproxy.web import pages

if TYPE_CHECKING:
    from hubcontrol import HubConfig

log = logging.getLogger("hubproxy.admin")

TOKEN_FILE = "admin.token"
HEALTH_ENDPOINTS = ("health", "health/live", "health/ready")


def ensure_admin_token(state_dir: Path) -> Path:
    """Create ``<state_dir>/admin.token`` (0600) unless it exists; returns its path.

    The token is made by ``write_new`` (a temp file hard-linked into place unless the file
    exists): two hub processes starting at once agree on one token, and a reader (``hub
    status`` right after the hub starts) never sees the file empty.
    """
    path = Path(state_dir) / TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() and write_new(path, secrets.token_urlsafe(32) + "\n", mode=0o600):
        log.info("hub: generated the admin token in %s (root-only)", path)
        return path
    # another hub process won the race, or an earlier start made it: that token is the one
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("hub: %s is readable by others (mode %o); tightening to 0600", path, mode)
        os.chmod(path, 0o600)
    return path


def read_token(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return text or None


def bearer(request: http.Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header, "" for another scheme, None if absent."""
    value = request.headers.get("authorization")
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def token_matches(given: str, expected: str | None) -> bool:
    return (
        bool(given)
        and expected is not None
        and hmac.compare_digest(given.encode(), expected.encode())
    )


def is_direct_local(peer: str | None, request: http.Request) -> bool:
    """A connection from this host that no reverse proxy forwarded (Traefik adds X-Forwarded-For)."""
    if "x-forwarded-for" in request.headers or "forwarded" in request.headers:
        return False
    try:
        return ipaddress.ip_address((peer or "").split("%")[0]).is_loopback
    except ValueError:
        return False


def default_origin(config: HubConfig) -> tuple[str, int | None]:
    """How browsers reach the hub, before one has: https behind Traefik for a real domain,
    http on the hub's own port for a local one (``localhost``, ``*.localhost``, ``*.test``)."""
    domain = config.base_domain
    if domain == "localhost" or domain.rsplit(".", 1)[-1] in ("localhost", "test", "internal"):
        return "http", config.port
    return "https", None


def health_document(context: HubContext) -> tuple[int, dict]:
    """``(status, body)`` of ``/_hub/health``: 200 when ready, 503 otherwise (always live)."""
    if not context.ready:
        return 503, {"ok": False, "live": True, "ready": False, "control_plane": "not started"}
    control = dict(context.control.health())
    if isinstance(control.get("starting"), list | tuple | set):
        control["starting"] = len(control["starting"])  # public: a count, never user names
    ready = bool(control.get("ok"))
    body = {**control, "live": True, "ready": ready}
    view = context.control.status_view()
    body["environments"] = len(view.rows)
    body["status_refreshed_at"] = view.refreshed_at
    return (200 if ready else 503), body


HealthSource = Callable[[], tuple[int, dict] | None]


def probe_answer(health: HealthSource, head: bytes) -> tuple[bytes, bool] | None:
    """A plain ``GET``/``HEAD`` of ``/_hub/health`` (``/live``, ``/ready``) answered from its
    request head ``head`` (without the blank line), before mitmproxy sees it: the response's
    bytes, and whether the connection stays open. None for anything else, and for any head
    that is not a simple HTTP/1.1 request without a body (mitmproxy then answers, or refuses,
    as before). ``hubproxy.server.admission`` calls it for the first bytes of each connection.

    ``health`` gives the document (``health_document``'s ``(status, body)``): this process's
    own, or, in workers 1..N-1 of ``--workers N``, the last one worker 0 published; None when
    there is none yet (mitmproxy then sends the probe on to worker 0, as any ``/_hub/`` request).
    """
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD") or parts[2] != b"HTTP/1.1":
        return None
    target = parts[1]
    if not target.startswith(b"/_hub/health") or not target.isascii():
        return None
    endpoint = hosts.hub_endpoint(target.decode())
    if endpoint not in HEALTH_ENDPOINTS:
        return None
    hosts_seen = 0
    close = False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
            return None  # not a header line mitmproxy would take as it is: it decides
        name = name.lower()
        value = value.strip().lower()
        if name == b"host":
            hosts_seen += 1
        elif name in (b"transfer-encoding", b"upgrade", b"expect") or (
            name == b"content-length" and value != b"0"
        ):
            return None
        elif name == b"connection":
            close = close or b"close" in (t.strip() for t in value.split(b","))
    if hosts_seen != 1:
        return None
    document = health()
    if document is None:
        return None
    status, body = document
    if endpoint == "health/live":
        status = 200
    response = pages.json_response(status, body, {"Connection": "close"} if close else None)
    data = assemble_response_head(response)
    if parts[0] == b"GET":
        data += response.content or b""
    return data, not close


class AdminApi:
    def __init__(self, context: HubContext, metrics: ProxyMetrics) -> None:
        self.context = context
        self.metrics = metrics
        self._token: str | None = None
        self._token_mtime: float | None = None

    def running(self) -> None:
        self._load_token()

    def _load_token(self) -> str | None:
        """The current token (created on first use; re-read when the file changes)."""
        if not self.context.ready:
            return None
        path = self.context.config.state_dir / TOKEN_FILE
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            ensure_admin_token(self.context.config.state_dir)
            mtime = path.stat().st_mtime
        if mtime != self._token_mtime:
            self._token = read_token(path)
            self._token_mtime = mtime
        return self._token

    @fail_closed
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response:
            return
        request = flow.request
        if not hosts.is_hub_path(request.path):
            return
        endpoint = hosts.hub_endpoint(request.path)
        if endpoint in HEALTH_ENDPOINTS:
            status, body = health_document(self.context)
            if endpoint == "health/live":
                status = 200
            flow.response = pages.json_response(status, body)
            return
        if endpoint is None or not (endpoint.startswith("api/") or endpoint == "metrics"):
            return
        token = bearer(request)
        if token is None:
            if (
                endpoint == "metrics"
                and self.context.ready
                and is_direct_local(
                    flow.client_conn.peername[0] if flow.client_conn.peername else None, request
                )
            ):
                flow.response = render_metrics(self.context, self.metrics)
            return  # a browser session call: the session path decides
        if not self.context.ready:
            flow.response = pages.json_response(503, {"error": "the hub is starting"})
            return
        if not token_matches(token, self._load_token()):
            log.warning("hub: refused a bad admin token for /_hub/%s", endpoint)
            flow.response = pages.json_response(
                401,
                {"error": "invalid admin token"},
                {"WWW-Authenticate": 'Bearer realm="hub"'},
            )
            return
        if endpoint == "metrics":
            flow.response = render_metrics(self.context, self.metrics)
            return
        scheme, port = self.metrics.last_origin or default_origin(self.context.config)
        flow.response = await handle_api(
            self.context, flow, endpoint, Principal(user=None, admin=True, token=True), scheme, port
        )
