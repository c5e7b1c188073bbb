"""Test doubles for addon tests: a control plane that records calls.

The real one (``hubproxy.server.controlthread.EmbeddedControlPlane`` over ``hubcontrol.Hub``) is
exercised by the integration and end-to-end tests; these unit tests check the request path's
decisions. Both speak in hubcontrol's value types (``Route``, ``Progress``, ``StatusView``).
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass, field

from mitmproxy import exceptions, http
from mitmproxy.test import tflow

from hubcontrol import (
    HubConfig,
    OAuthConfig,
    Progress,
    Route,
    RouteTable,
    StatusView,
    Template,
    safe_name,
)
from hubproxy.addons import hub_addons
from hubproxy.context import ActionResult, HubContext

SECRET = "s" * 64
NOW = 1_800_000_000
STARTING = Progress(state="starting", step="daemon", message="Starting your Docker daemon")


def make_route(user: str, state: str, service_ip: str, ports: dict, template: str = "") -> Route:
    """The control plane's ``Route`` of ``user`` (its safe name filled in)."""
    return Route(user, safe_name(user), state, service_ip, ports, template)


@dataclass
class FakeControl:
    """A ``hubproxy.context.ControlPlane`` that records calls: routes by username, every user
    ``STARTING``, no status rows."""

    routes: dict[str, Route] = field(default_factory=dict)
    touches: list = field(default_factory=list)
    starts: list = field(default_factory=list)
    acts: list = field(default_factory=list)
    fail_route: bool = False
    _pending: dict = field(default_factory=dict)

    def route(self, user):
        if self.fail_route:
            raise RuntimeError("boom")
        return self.routes.get(user)

    def snapshot(self):
        return RouteTable({r.name: r for r in self.routes.values()})

    def touch(self, user, kind):
        self.touches.append((user, kind))

    def activity(self, user):
        return None

    def progress(self, user):
        return STARTING

    def status_view(self):
        return StatusView()

    def metric_families(self):
        return []

    def start(self, user, template):
        if user in self._pending:
            return self._pending[user]
        self.starts.append((user, template))
        fut = asyncio.get_event_loop().create_future()
        self._pending[user] = fut
        return fut

    def act(self, target, action):
        self.acts.append((target, action))
        fut = asyncio.get_event_loop().create_future()
        fut.set_result(ActionResult(target, "stopped"))
        return fut

    def health(self):
        return {"ok": True, "control_plane": "running"}


def make_config(tmp_path, **overrides) -> HubConfig:
    values = dict(
        routes={"term": 7681, "code": 8080},
        templates={"default": Template("default", "img"), "python": Template("python", "py")},
        base_domain="example.com",
        oauth=OAuthConfig(
            client_id="hub",
            client_secret="secret",
            authorize_url="http://idp.test/auth",
            token_url="http://idp.test/token",
            userinfo_url="http://idp.test/me",
            userinfo_path="sub",
        ),
        state_dir=tmp_path,
    )
    values.update(overrides)
    return HubConfig(**values)


def make_context(tmp_path, control=None, **overrides) -> HubContext:
    context = HubContext(clock=lambda: NOW)
    context.setup(make_config(tmp_path, **overrides), control or FakeControl(), SECRET)
    return context


def flow(
    host="term.example.com",
    path="/",
    method="GET",
    headers=(),
    navigate=True,
    authority="",
    body=b"",
) -> http.HTTPFlow:
    hdrs = [(b"host", host.encode())]
    if navigate:
        hdrs.append((b"sec-fetch-mode", b"navigate"))
    hdrs += [(k.encode(), v.encode()) for k, v in headers]
    req = http.Request(
        "0.0.0.0",
        1,
        method.encode(),
        b"http",
        authority.encode(),
        path.encode(),
        b"HTTP/1.1",
        http.Headers(hdrs),
        body,
        None,
        NOW,
        NOW,
    )
    f = tflow.tflow(req=req)
    f.response = None
    return f


async def run_request(addons, f) -> http.HTTPFlow:
    """Run the ``requestheaders`` hooks, then (the body being in) the ``request`` hooks, as
    mitmproxy does for a request that is not streamed: ``AddonHalt`` ends a hook's round."""
    for name in ("requestheaders", "request"):
        for addon in addons:
            hook = getattr(addon, name, None)
            if hook is None:
                continue
            try:
                result = hook(f)
                if inspect.isawaitable(result):
                    await result
            except exceptions.AddonHalt:
                break
    return f


def pipeline(context):
    return hub_addons(context)
