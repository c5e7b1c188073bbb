"""HEAD answers carry no body (RFC 9110, 9.3.2), including the ones the hub makes itself.

The hub's own answers (pages, redirects, API documents, errors) are made once for ``GET`` and
``HEAD`` alike, and mitmproxy sends whatever content a response holds. A body after a HEAD
answer is read by a keep-alive client as the start of its next answer: a load balancer probing
``HEAD /_hub/health`` through mitmproxy would misread every answer after the first. Upstream
answers to HEAD have no content already (mitmproxy reads them as HEAD answers); this addon, the
last, empties ours and keeps their ``Content-Length``, which is the length a GET would get.
"""

from __future__ import annotations

from mitmproxy import http


class HeadResponse:
    def response(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        if response is not None and response.raw_content and flow.request.method == "HEAD":
            response.raw_content = b""  # the setter leaves Content-Length as it was
