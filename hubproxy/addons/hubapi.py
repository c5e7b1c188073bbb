"""The hub's own small pages and JSON API under ``/_hub/``.

``/_hub/health`` (public), ``/_hub/api/progress`` (the caller's environment start; a long poll
with ``?wait=<s>&since=<version>``), ``/_hub/`` (an index with links to the routes and the
dashboard). Unknown ``/_hub/`` endpoints are 404; login,
callback and logout are answered earlier by the OAuth addon; ``/_hub/api/status``, the other API
endpoints, ``/_hub/dashboard`` and ``/_hub/metrics`` by ``statusapi``, ``dashboard`` and
``adminapi``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass

from mitmproxy import http

from hubcontrol import Progress, Route
from hubproxy.addons.oauthlogin import logout_form
from hubproxy.addons.router import upstream
from hubproxy.auth import identity
from hubproxy.context import ENDPOINT, SCHEME, SESSION, USER, HubContext
from hubproxy.guard import fail_closed
from hubproxy.hosts import sibling_url
from hubproxy.web import pages

# The progress page asks ``/_hub/api/progress?wait=20&since=<version>``: the answer comes when
# the start moves on (a step, ready, failed) or after ``wait`` seconds, so the page learns of
# each step within LONG_POLL_STEP and asks about once per step, not every few hundred ms (it
# polled at 0.5-3 s: up to 3 s late, and with 50 users starting, the hub's busiest endpoint).
# One watcher serves every held poll: each step it reads each waiting user's route and progress
# once (two dict reads; the view is computed only when either is a new object), so a short step
# costs little however many polls are held. At 0.1 s the page learnt of "ready" 50 ms late on
# average, on every start and resume (bench/resume.py).
LONG_POLL_MAX = 25.0  # seconds a long poll may be held (below common proxies' 30-60 s idle cuts)
LONG_POLL_STEP = 0.02  # how often the watcher looks at the waiting users' progress
LONG_POLL_PER_USER = 4  # held polls per user (tabs); past it, answered at once


def progress_view(
    route: Route | None,
    progress: Progress,
    prefixes: Mapping[str, int],
    template: str | None = None,
) -> dict:
    """What the progress page's script needs: is it ready, what is happening, what failed, and
    a ``version`` that changes with any of it (the long poll's ``since``)."""
    ready = any(upstream(route, p, prefixes, template) is not None for p in prefixes)
    view: dict[str, object] = {
        "ready": ready,
        "state": "running" if ready else progress.state,
        "step": progress.step,
        "message": progress.message,
        "error": progress.error,
    }
    digest = hashlib.blake2s(json.dumps(view, sort_keys=True).encode(), digest_size=6)
    view["version"] = digest.hexdigest()
    return view


def long_poll_seconds(value: str | None) -> float:
    """``?wait=`` of a progress request: seconds to hold it (0 when absent), at most
    LONG_POLL_MAX; ValueError naming the parameter when it is not a number of seconds."""
    if value is None or value == "":
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"wait={value!r} is not a number of seconds; use e.g. wait=20") from None
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"wait={value!r} is out of range; use 0 to {LONG_POLL_MAX:.0f} seconds")
    return min(seconds, LONG_POLL_MAX)


@dataclass(eq=False)
class _Held:
    """One held long poll: the version its page has, and the answer the watcher gives it."""

    since: str
    template: str | None
    answer: asyncio.Future[dict]


class HubApi:
    def __init__(self, context: HubContext) -> None:
        self.context = context
        self._held: Counter[str] = Counter()  # long polls held, by user
        self._waiting: dict[str, list[_Held]] = {}
        self._watcher: asyncio.Task[None] | None = None

    def _view(self, flow: http.HTTPFlow, user: str) -> dict:
        control = self.context.control
        template = flow.metadata[SESSION].template
        return progress_view(
            control.route(user), control.progress(user), self.context.config.routes, template
        )

    async def _long_poll(self, flow: http.HTTPFlow, user: str, since: str, wait: float) -> None:
        """Answer ``flow`` once the user's progress is no longer ``since``, or after ``wait``."""
        self._held[user] += 1
        loop = asyncio.get_running_loop()
        held = _Held(since, flow.metadata[SESSION].template, loop.create_future())
        try:
            view = self._view(flow, user)  # it may have moved on since the hook looked
            if view["version"] == since:
                self._waiting.setdefault(user, []).append(held)
                if self._watcher is None or self._watcher.done():
                    self._watcher = loop.create_task(self._watch())
                done, _ = await asyncio.wait({held.answer}, timeout=wait)
                # an error while watching is raised here: fail_closed answers 500
                view = held.answer.result() if done else self._view(flow, user)
            flow.response = pages.json_response(200, view)
        finally:
            held.answer.cancel()
            waiting = self._waiting.get(user, [])
            if held in waiting:
                waiting.remove(held)
            if not waiting:
                self._waiting.pop(user, None)
            self._held[user] -= 1
            if self._held[user] <= 0:
                del self._held[user]

    async def _watch(self) -> None:
        """While polls are held: every LONG_POLL_STEP, one look at each waiting user's route and
        progress; when either changed, every poll of that user whose version the view no longer
        is gets it. An error reading them answers that user's polls with it (a 500)."""
        seen: dict[str, tuple[object, object]] = {}
        while self._waiting:
            await asyncio.sleep(LONG_POLL_STEP)
            control = self.context.control
            routes = self.context.config.routes
            for user, held in list(self._waiting.items()):
                try:
                    now = (control.route(user), control.progress(user))
                    last = seen.get(user)
                    if last is not None and last[0] is now[0] and last[1] is now[1]:
                        continue
                    seen[user] = now
                    for h in held:
                        view = progress_view(now[0], now[1], routes, h.template)
                        if view["version"] != h.since and not h.answer.done():
                            h.answer.set_result(view)
                except Exception as e:  # the polls fail closed; the watcher goes on for the others
                    for h in held:
                        if not h.answer.done():
                            h.answer.set_exception(e)
            for user in [u for u in seen if u not in self._waiting]:
                del seen[user]

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        if flow.response or ENDPOINT not in flow.metadata:
            return
        endpoint = flow.metadata[ENDPOINT]
        control = self.context.control
        config = self.context.config
        if endpoint == "health":
            health = control.health()
            flow.response = pages.json_response(200 if health.get("ok") else 503, health)
            return None
        user = flow.metadata.get(USER)
        if user is None:  # the session addon answers first; this is a second line
            flow.response = pages.json_response(401, {"error": "not logged in"})
            return None
        if endpoint == "api/progress":
            try:
                wait = long_poll_seconds(flow.request.query.get("wait"))
            except ValueError as e:
                flow.response = pages.json_response(400, {"error": str(e)})
                return None
            view = self._view(flow, user)
            since = flow.request.query.get("since")
            settled = view["ready"] or view["state"] == "failed"
            if wait and since == view["version"] and not settled:
                if self._held[user] < LONG_POLL_PER_USER:
                    return self._long_poll(flow, user, since, wait)
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
        return None
