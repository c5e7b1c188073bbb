"""A worker's first addon: ``/_hub/`` requests go to worker 0, everything else stays here.

Every ``/_hub/`` request but the progress poll is forwarded as it came, Host and cookies intact, to
worker 0's private listener on 127.0.0.1, with the browser's address in a header worker 0 trusts
only there and only with the token it handed out (``workeringress.WorkerIngress``). So sessions
are created and ended in one process only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from mitmproxy import exceptions, http

from hubproxy import hosts
from hubproxy.web import pages
from hubproxy.workers.link import CLIENT_HEADER, TOKEN_HEADER

log = logging.getLogger("hubproxy.worker")

FORWARDED = "hub.forwarded"  # flow.metadata: sent to worker 0
# /_hub/ endpoints a worker answers itself: the progress page's poll reads the same local route
# table the worker routes with, so "ready" there means this worker will route the reload.
LOCAL_ENDPOINTS = frozenset({"api/progress"})


class Forwarder:
    """A worker's first addon: ``/_hub/`` requests go to worker 0, everything else stays here."""

    def __init__(self, port: int, token: str, on_running: Callable[[], None] | None = None) -> None:
        self.port = port
        self.token = token
        self.on_running = on_running

    def running(self) -> None:
        if self.on_running is not None:
            self.on_running()

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        path = flow.request.path
        if (
            flow.response
            or not hosts.is_hub_path(path)
            or hosts.hub_endpoint(path) in LOCAL_ENDPOINTS
        ):
            return
        try:
            request = flow.request
            request.data.host, request.data.port = "127.0.0.1", self.port
            request.scheme = "http"
            peer = flow.client_conn.peername
            request.headers[CLIENT_HEADER] = peer[0] if peer else ""
            request.headers[TOKEN_HEADER] = self.token
            request.stream = True
            flow.metadata[FORWARDED] = True
        except Exception:
            log.exception("hub: forwarding %s to worker 0 failed", flow.request.path)
            flow.response = pages.page(
                500, "Internal error", "The hub hit an unexpected error.", detail="See its log."
            )
        # worker 0 answers it: the hub's own addons here must not look at it
        raise exceptions.AddonHalt

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.get(FORWARDED) and flow.response is not None:
            flow.response.stream = True
            raise exceptions.AddonHalt
