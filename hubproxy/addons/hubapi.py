"""The hub's own small pages and JSON API under ``/_hub/``.

``/_hub/health`` (public), ``/_hub/api/progress`` (the caller's environment start), ``/_hub/`` (an
index with links to the routes and the dashboard). Unknown ``/_hub/`` endpoints are 404; login,
callback and logout are answered earlier by the OAuth addon; ``/_hub/api/status``, the other API
endpoints, ``/_hub/dashboard`` and ``/_hub/metrics`` by ``statusapi``, ``dashboard`` and
``adminapi``.
"""

from __future__ import annotations

from collections.abc import Mapping

from mitmproxy import http

from hubcontrol import Progress, Route
from hubproxy.addons.oauthlogin import logout_form
from hubproxy.addons.router import upstream
from hubproxy.auth import identity
from hubproxy.context import ENDPOINT, SCHEME, SESSION, USER, HubContext
from hubproxy.guard import fail_closed
from hubproxy.hosts import sibling_url
from hubproxy.web import pages


def progress_view(
    route: Route | None,
    progress: Progress,
    prefixes: Mapping[str, int],
    template: str | None = None,
) -> dict:
    """What the progress page's script needs: is it ready, what is happening, what failed."""
    ready = any(upstream(route, p, prefixes, template) is not None for p in prefixes)
    return {
        "ready": ready,
        "state": "running" if ready else progress.state,
        "step": progress.step,
        "message": progress.message,
        "error": progress.error,
    }


class HubApi:
    def __init__(self, context: HubContext) -> None:
        self.context = context

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or ENDPOINT not in flow.metadata:
            return
        endpoint = flow.metadata[ENDPOINT]
        control = self.context.control
        config = self.context.config
        if endpoint == "health":
            health = control.health()
            flow.response = pages.json_response(200 if health.get("ok") else 503, health)
            return
        user = flow.metadata.get(USER)
        if user is None:  # the session addon answers first; this is a second line
            flow.response = pages.json_response(401, {"error": "not logged in"})
            return
        if endpoint == "api/progress":
            template = flow.metadata[SESSION].template
            view = progress_view(
                control.route(user), control.progress(user), config.routes, template
            )
            flow.response = pages.json_response(200, view)
        elif endpoint == "":
            scheme = flow.metadata[SCHEME]
            flow.response = pages.page(
                200,
                "Your hub",
                f"Logged in as {identity.shown_with_provider_name(user)}.",
                links=[
                    *(
                        (p, sibling_url(scheme, flow.request.host_header, p, config.base_domain))
                        for p in sorted(config.routes)
                    ),
                    ("Dashboard", "/_hub/dashboard"),
                ],
                forms=[logout_form(self.context, flow.metadata[SESSION])],
            )
        else:
            flow.response = pages.not_found(f"The hub has no page /_hub/{endpoint}.")
