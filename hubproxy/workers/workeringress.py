"""Worker 0's first addon: requests forwarded by the other workers name the browser's address.

On worker 0's private listener (127.0.0.1, where workers forward ``/_hub/`` requests) the addon
checks the token worker 0 handed out and takes the browser's address from the header; on the
public port those headers are a client's own and are dropped unread.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging

from mitmproxy import http

from hubproxy.guard import fail_closed
from hubproxy.web import pages
from hubproxy.workers.link import CLIENT_HEADER, PRIVATE_MODE, TOKEN_HEADER

log = logging.getLogger("hubproxy.workers")


def trusted_client(private: bool, token: str | None, expected: str, client: str | None) -> str:
    """The browser address of a request worker 0 got from a worker, or raise ValueError.

    Only requests on the private listener with worker 0's token may name the client."""
    if not private:
        raise ValueError("not on the private listener")
    if not token or not hmac.compare_digest(token.encode(), expected.encode()):
        raise ValueError("bad or missing worker token")
    try:
        return str(ipaddress.ip_address((client or "").strip()))
    except ValueError:
        raise ValueError(f"bad client address {client!r}") from None


class WorkerIngress:
    def __init__(self, token: str) -> None:
        self.token = token

    @fail_closed
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        headers = flow.request.headers
        client = headers.get(CLIENT_HEADER)
        token = headers.get(TOKEN_HEADER)
        if client is not None:
            del headers[CLIENT_HEADER]
        if token is not None:
            del headers[TOKEN_HEADER]
        private = flow.client_conn.proxy_mode.full_spec == PRIVATE_MODE
        if not private:
            return  # the public port: such headers are a client's own, dropped unread
        try:
            ip = trusted_client(private, token, self.token, client)
        except ValueError as e:
            log.warning("hub: refused a request on the workers' listener: %s", e)
            flow.response = pages.page(403, "Forbidden", "This listener is for hub workers only.")
            return
        flow.client_conn.peername = (ip, 0)
