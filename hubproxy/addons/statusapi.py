"""The hub's JSON API: ``/_hub/api/status``, per-user actions, and the OpenAPI document.

Endpoints (docs/api.md):

- ``GET  /_hub/api/status``: ``{"users": [entry, ...], ...}``; a regular user gets only their own
  entry, an admin (``HUB_ADMIN_USERS`` or the admin token) everyone's;
- ``GET  /_hub/api/users/{user}``: one entry;
- ``POST /_hub/api/users/{user}/stop``: stop without a checkpoint (own, or admin);
- ``POST /_hub/api/users/{user}/checkpoint``: CRIU-checkpoint and stop (admin);
- ``POST /_hub/api/users/{user}/restart[?template=NAME]``: stop if running, start again, with
  another template if given (own only, or admin);
- ``GET  /_hub/api/openapi.json``.

``{user}`` is the username or its safe name. Browser calls are authenticated by the session
(this addon runs after ``SessionCheck``) and a POST also needs the CSRF token of that session in
``X-Hub-CSRF``, a same-origin ``Origin``/``Sec-Fetch-Site`` when the browser sends them; the
CLI's calls carry the admin token and are answered by ``adminapi.AdminApi`` with the same handlers.
Another user's entry is 403 for a regular user whether or not it exists; an unknown user is 404
for an admin.

Nothing here waits for the control plane to read: entries are built from its ``status_view()``
(sampled by the control plane), the route table, progress and activity stamps. Actions run on the
control plane's loop (``ControlPlane.act``) and are awaited as asyncio futures.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mitmproxy import http

from hubcontrol import (
    CheckpointHealth,
    HubConfig,
    HubError,
    Progress,
    UsernameError,
    UserStats,
    checkpoint_wanted,
    safe_name,
)
from hubproxy.auth import identity
from hubproxy.auth.csrf import csrf_problem
from hubproxy.context import (
    ENDPOINT,
    SCHEME,
    SESSION,
    USER,
    ActionResult,
    HubContext,
    UnknownUser,
)
from hubproxy.guard import fail_closed
from hubproxy.web import pages
from hubproxy.web.openapi import openapi_document

log = logging.getLogger("hubproxy.api")

ACTIONS = ("stop", "checkpoint", "restart", "checkpoint-reset")
ACTION_TIMEOUT = 180.0
TRANSITIONS = ("starting", "restoring", "stopping", "checkpointing")


@dataclass(frozen=True)
class Principal:
    """Who is calling: a logged-in ``user`` (admin or not), or the admin token (``user`` None)."""

    user: str | None
    admin: bool
    token: bool = False
    sid: str | None = None


# -- pure decisions -----------------------------------------------------------------------------


def is_self(principal: Principal, target: str, target_name: str | None = None) -> bool:
    """True when ``target`` (a username or a safe name) names the caller's own environment."""
    if principal.user is None:
        return False
    if target == principal.user:
        return True
    try:
        mine = safe_name(principal.user)
    except UsernameError:
        return False
    return target == mine or (target_name is not None and target_name == mine)


def may(principal: Principal, action: str, own: bool) -> bool:
    """Whether ``principal`` may do ``action`` ("view", "stop", "checkpoint", "restart",
    "checkpoint-reset") to an environment (``own``: the caller's). Admins: everything; users:
    view, stop and restart (with a template switch) their own."""
    if principal.admin:
        return True
    return own and action in ("view", "stop", "restart")


def parse_api_path(endpoint: str) -> tuple[str, str | None, str | None] | None:
    """``api/...`` endpoint → (kind, user, action); kind "status", "openapi", "user" or None.

    >>> parse_api_path("api/users/alice/stop")
    ('user', 'alice', 'stop')
    """
    parts = endpoint.split("/")
    if parts == ["api", "status"]:
        return ("status", None, None)
    if parts == ["api", "openapi.json"]:
        return ("openapi", None, None)
    if len(parts) in (3, 4) and parts[:2] == ["api", "users"] and parts[2]:
        return ("user", parts[2], parts[3] if len(parts) == 4 else None)
    return None


def route_urls(
    prefixes: Iterable[str], scheme: str, base_domain: str, port: int | None
) -> dict[str, str]:
    """One link per route prefix: ``<scheme>://<prefix>.<base-domain>[:port]/``."""
    default = {"http": 80, "https": 443}.get(scheme)
    suffix = f":{port}" if port and port != default else ""
    return {p: f"{scheme}://{p}.{base_domain}{suffix}/" for p in sorted(prefixes)}


def live_state(row_state: str, progress: Progress, refreshed_at: float | None) -> str:
    """The state to show: the control plane's latest progress when it is newer than the rows."""
    updated = progress.updated
    if updated and (refreshed_at is None or updated >= refreshed_at):
        return progress.state
    return row_state


def idle_facts(
    state: str,
    activity: tuple[float, str] | None,
    running_since: float | None,
    now: float,
    idle_timeout: float,
) -> dict[str, Any]:
    """Idle time and what last counted as activity ("http", "ws-in", "ws-out", or "start" when
    nothing came since the environment started); ``cull_in_seconds`` when a timeout applies."""
    last, kind = activity if activity else (None, None)
    if running_since is not None and (last is None or running_since > last):
        last, kind = running_since, "start"
    idle = max(0.0, now - last) if (last is not None and state == "running") else None
    cull_in = None
    if idle is not None and idle_timeout and idle_timeout > 0:
        cull_in = max(0.0, idle_timeout - idle)
    return {
        "idle_seconds": round(idle, 1) if idle is not None else None,
        "last_activity": last,
        "activity_kind": kind,
        "cull_in_seconds": round(cull_in, 1) if cull_in is not None else None,
    }


def entry(
    *,
    user: str,
    name: str,
    template: str,
    state: str,
    net_id: int | None,
    service_ip: str | None,
    routes: Mapping[str, str],
    idle: Mapping[str, Any],
    stats: UserStats | None = None,
    health: CheckpointHealth | None = None,
    checkpoint_enabled: bool = False,
    error: str | None = None,
    per_user_docker: bool = False,
    idle_reason: str | None = None,
) -> dict[str, Any]:
    """One user's entry of ``/_hub/api/status`` (docs/api.md has the schema)."""
    return {
        "user": user,
        "name": name,
        "template": template,
        "state": state,
        "net_id": net_id,
        "service_ip": service_ip,
        "routes": dict(routes),
        **idle,
        "idle_reason": idle_reason,
        "disk_bytes": stats.disk_bytes if stats else None,
        "disk_partial": stats.disk_partial if stats else False,
        "workspace_bytes": stats.workspace_bytes if stats else None,
        "data_root_bytes": stats.data_root_bytes if stats else None,
        "containers_running": stats.containers_running if stats else None,
        "images": stats.images if stats else None,
        "stats_sampled_at": stats.sampled_at if stats else None,
        "per_user_docker": per_user_docker,
        "checkpoint_enabled": checkpoint_enabled,
        "checkpoint_failures": health.failures if health else 0,
        "checkpoint_disabled": bool(health.disabled) if health else False,
        "checkpoint_error": health.last_error if health else None,
        "error": error,
    }


# -- reading the control plane ------------------------------------------------------------------


def _checkpoint_enabled(config: HubConfig, template_name: str) -> bool:
    tpl = config.templates.get(template_name) if template_name else None
    if tpl is None:
        tpl = config.templates.get(config.default_template)
    return checkpoint_wanted(config, tpl)[0]


def build_entries(
    context: HubContext, scheme: str, port: int | None, principal: Principal | None = None
) -> list[dict[str, Any]]:
    """The entries ``principal`` may see (None: all), from the sampled view plus live state and
    activity; a regular user's poll costs one entry, not one per user of the hub."""
    config = context.config
    control = context.control
    view = control.status_view()
    now = context.clock()
    urls = route_urls(config.routes, scheme, config.base_domain, port)
    out = []
    for row in view.rows:
        if principal is not None and not may(
            principal, "view", is_self(principal, row.user, row.name)
        ):
            continue
        progress = control.progress(row.user)  # progress() maps a username to its safe name
        state = live_state(row.state, progress, view.refreshed_at)
        activity = control.activity(row.user)
        since = progress.updated if progress.state == "running" else None
        out.append(
            entry(
                user=row.user,
                name=row.name,
                template=row.template,
                state=state,
                net_id=row.net_id,
                service_ip=row.service_ip,
                routes=urls,
                idle=idle_facts(state, activity, since, now, config.idle_timeout),
                stats=view.stats.get(row.name),
                health=view.checkpoints.get(row.name),
                checkpoint_enabled=_checkpoint_enabled(config, row.template),
                error=(progress.error or row.error) if state == "failed" else None,
                per_user_docker=row.per_user_docker,
                idle_reason=row.idle,
            )
        )
    return out


def own_placeholder(
    context: HubContext, user: str, template: str | None, scheme: str, port: int | None
) -> dict[str, Any]:
    """The caller's entry before the control plane has a record (never started, or just now)."""
    config = context.config
    try:
        name = safe_name(user)
    except UsernameError:
        name = ""
    progress = context.control.progress(user)
    route = context.control.route(user)
    state = route.state if route is not None else progress.state
    return entry(
        user=user,
        name=name,
        template=template or config.default_template,
        state=state,
        net_id=None,
        service_ip=route.service_ip if route is not None else None,
        routes=route_urls(config.routes, scheme, config.base_domain, port),
        idle=idle_facts(state, None, None, context.clock(), config.idle_timeout),
        checkpoint_enabled=_checkpoint_enabled(config, template or ""),
        error=progress.error,
    )


def status_document(
    context: HubContext,
    principal: Principal,
    scheme: str,
    port: int | None,
    template: str | None = None,
) -> dict[str, Any]:
    config = context.config
    entries = build_entries(context, scheme, port, principal)
    if principal.user is not None and not any(e["user"] == principal.user for e in entries):
        entries.insert(0, own_placeholder(context, principal.user, template, scheme, port))
    view = context.control.status_view()
    return {
        "users": entries,
        "viewer": {
            "user": principal.user,
            "name": identity.shown(principal.user) if principal.user is not None else None,
            "admin": principal.admin,
        },
        "templates": sorted(config.templates),
        "default_template": config.default_template,
        "idle_timeout_seconds": config.idle_timeout,
        "stats_interval_seconds": view.interval,
        "refreshed_at": view.refreshed_at,
        "now": context.clock(),
    }


def find_entry(entries: list[dict], target: str) -> dict | None:
    for e in entries:
        if target in (e["user"], e["name"]):
            return e
    return None


# -- the HTTP side ------------------------------------------------------------------------------


def _json(status: int, data: object) -> http.Response:
    return pages.json_response(status, data)


def _error(status: int, message: str, **extra: object) -> http.Response:
    return _json(status, {"error": message, **extra})


def request_port(request: http.Request) -> int | None:
    host = request.host_header or ""
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and "]" not in port:
        return int(port)
    return None


async def handle_api(
    context: HubContext,
    flow: http.HTTPFlow,
    endpoint: str,
    principal: Principal,
    scheme: str,
    port: int | None,
    template: str | None = None,
) -> http.Response:
    """Answer one ``/_hub/api/...`` request of an authenticated ``principal``; links to the
    routes use ``scheme`` and ``port`` (the browser's)."""
    request = flow.request
    parsed = parse_api_path(endpoint)
    if parsed is None:
        return _error(404, f"the hub has no API endpoint /_hub/{endpoint}")
    kind, target, action = parsed
    if kind in ("status", "openapi") or (kind == "user" and action is None):
        if request.method not in ("GET", "HEAD"):
            return _error(405, f"use GET for /_hub/{endpoint}")
        if kind == "openapi":
            return _json(200, openapi_document())
        if kind == "status":
            return _json(200, status_document(context, principal, scheme, port, template))
        own = is_self(principal, target)
        if not may(principal, "view", own):
            return _error(403, "you may only see your own environment")
        doc = status_document(context, principal, scheme, port, template)
        found = find_entry(doc["users"], target)
        if found is None:
            return _error(404, f"no user {target!r} on this hub")
        return _json(200, found)
    # POST /_hub/api/users/{user}/{action}
    if action not in ACTIONS:
        return _error(404, f"unknown action {action!r}; one of: {', '.join(ACTIONS)}")
    if request.method != "POST":
        return _error(405, f"use POST for /_hub/{endpoint}")
    if not principal.token:
        problem = csrf_problem(request, context.session_key, principal.sid or "", scheme)
        if problem:
            log.warning(
                "hub: refused %s %s from %s: %s",
                request.method,
                endpoint,
                identity.shown(principal.user),
                problem,
            )
            return _error(403, problem)
    entries = build_entries(context, scheme, port)
    found = find_entry(entries, target)
    own = is_self(principal, target, found["name"] if found else None)
    if not may(principal, action, own):
        if own:
            return _error(403, f"only admins may {action} environments")
        return _error(403, "you may only act on your own environment")
    new_template = request.query.get("template") or None
    if new_template is not None:
        if action != "restart":
            return _error(400, "?template= goes with restart only")
        if new_template not in context.config.templates:
            known = ", ".join(sorted(context.config.templates))
            return _error(400, f"no template {new_template!r}; templates: {known}")
    user = found["user"] if found else (principal.user if own else target)
    log.info(
        "hub: %s asked to %s %s",
        identity.shown(principal.user) if principal.user else "admin token",
        action,
        identity.shown(user),
    )
    try:
        result = await asyncio.wait_for(
            asyncio.shield(context.control.act(user, action)), ACTION_TIMEOUT
        )
    except UnknownUser:
        if not (own and action == "restart"):
            return _error(404, f"no user {target!r} on this hub")
        result = ActionResult(principal.user, "stopped")
    except TimeoutError:
        return _json(202, {"user": user, "action": action, "state": "in progress"})
    except HubError as e:
        log.warning("hub: %s of %s failed: %s", action, user, e.log_message)
        return _error(500, e.user_message)
    if action == "restart":
        context.control.start(result.user, new_template or result.template or template)
        return _json(202, {"user": result.user, "action": action, "state": "starting"})
    return _json(200, {"user": result.user, "action": action, "state": result.state})


class StatusApi:
    """``/_hub/api/status``, ``/_hub/api/users/...`` and ``/_hub/api/openapi.json`` for browser
    sessions (after ``SessionCheck``); ``HubApi`` keeps ``api/progress``."""

    def __init__(self, context: HubContext) -> None:
        self.context = context

    @fail_closed
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response:
            return
        endpoint = flow.metadata.get(ENDPOINT)
        if endpoint is None or parse_api_path(endpoint) is None:
            return
        user = flow.metadata.get(USER)
        session = flow.metadata.get(SESSION)
        if user is None or session is None:  # SessionCheck answers first; a second line
            flow.response = _error(401, "not logged in")
            return
        principal = Principal(
            user=user, admin=identity.is_admin(self.context.config, user), sid=session.sid
        )
        flow.response = await handle_api(
            self.context,
            flow,
            endpoint,
            principal,
            flow.metadata[SCHEME],
            request_port(flow.request),
            session.template,
        )
