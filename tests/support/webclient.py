"""An HTTP client that reaches the hub as a browser does: ``*.<domain>`` sent to the hub's port
on 127.0.0.1 (nothing resolves those names), cookies kept, and the npm provider's login form
filled in. Imports httpx only (not mitmproxy), so the fault suite and the benchmarks can use it
as the proxy harness does."""

from __future__ import annotations

import re

import httpx


class HubTransport(httpx.HTTPTransport):
    """Sends requests for ``*.<domain>`` to the proxy on 127.0.0.1 (Python does not resolve
    them), keeping the Host header and the URL the cookie jar sees."""

    def __init__(self, domain: str, proxy_port: int) -> None:
        super().__init__()
        self.domain = domain
        self.proxy_port = proxy_port

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if host == self.domain or host.endswith("." + self.domain):
            request = httpx.Request(
                request.method,
                request.url.copy_with(host="127.0.0.1", port=self.proxy_port),
                headers=request.headers,
                stream=request.stream,
            )
        return super().handle_request(request)


def browser(domain: str, proxy_port: int, timeout: float = 15) -> httpx.Client:
    """A cookie-keeping client that behaves like a browser navigating (for wants_html)."""
    return httpx.Client(
        transport=HubTransport(domain, proxy_port),
        follow_redirects=True,
        headers={"Accept": "text/html", "Sec-Fetch-Mode": "navigate"},
        timeout=timeout,
    )


def provider_login(client: httpx.Client, response: httpx.Response, login: str) -> httpx.Response:
    """Fill in oidc-provider's development login form as a user would."""
    assert "/interaction/" in str(response.url), response.text[:300]
    action = re.search(r'<form[^>]*action="([^"]+)"', response.text).group(1)
    url = httpx.URL(str(response.url)).join(action)
    return client.post(url, data={"prompt": "login", "login": login, "password": "any"})
