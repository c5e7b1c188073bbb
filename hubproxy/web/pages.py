"""The hub's own pages and JSON answers, rendered in one place.

Pages are self-contained (no external assets, inline CSS, one inline script allowed by a CSP nonce
on the progress page) and are never cached.
"""

from __future__ import annotations

import html
import json
import secrets
from collections.abc import Iterable
from string import Template

from mitmproxy import http

_STYLE = """
body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f5f6f8;color:#1d2230}
main{max-width:36rem;margin:12vh auto;padding:2rem;background:#fff;border-radius:12px;
box-shadow:0 2px 12px #0001}
h1{font-size:1.3rem;margin:0 0 .75rem}p{margin:.5rem 0}.muted{color:#667}
a.button,button.button{display:inline-block;margin:.75rem .75rem 0 0;padding:.45rem 1rem;
border-radius:6px;border:0;font:inherit;background:#2457d6;color:#fff;text-decoration:none;
cursor:pointer}
form{display:inline}
code{background:#eef;padding:0 .25rem;border-radius:4px}
.bar{height:6px;background:#e4e7ee;border-radius:3px;overflow:hidden;margin:1rem 0}
.bar div{height:100%;width:30%;background:#2457d6;animation:s 1.2s infinite ease-in-out}
@keyframes s{0%{margin-left:-30%}100%{margin-left:100%}}
[hidden]{display:none!important}
"""

_PAGE = Template(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>$title</title><style>$style</style></head>
<body><main><h1>$title</h1>$body</main>$script</body></html>
"""
)

_PROGRESS_SCRIPT = Template(
    """<script nonce="$nonce">
(function(){
  var msg=document.getElementById("hub-step"), err=document.getElementById("hub-error");
  var since="";
  function poll(){
    var asked=Date.now();
    fetch("/_hub/api/progress?wait=20&since="+encodeURIComponent(since),
          {credentials:"same-origin",cache:"no-store"})
      .then(function(r){ if(r.status===401){ location.reload(); throw 0; } return r.json(); })
      .then(function(p){
        if(p.ready){ location.reload(); return; }
        if(p.message){ msg.textContent=p.message; }
        if(p.state==="failed"){ err.textContent=p.error||"Starting your environment failed.";
          err.hidden=false; document.getElementById("hub-bar").hidden=true;
          document.getElementById("hub-retry").hidden=false; return; }
        var held=p.version!==since||Date.now()-asked>=250;
        since=p.version||""; setTimeout(poll,held?0:1000);
      }).catch(function(e){ if(e!==0){ setTimeout(poll,2000); } });
  }
  poll();
})();
</script>"""
)

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


def _links(links: Iterable[tuple[str, str]]) -> str:
    return "".join(
        f'<a class="button" href="{html.escape(href)}">{html.escape(label)}</a>'
        for label, href in links
    )


def post_form(label: str, action: str, fields: dict[str, str]) -> str:
    """A button that POSTs ``fields`` (hidden) to ``action`` on the same site."""
    hidden = "".join(
        f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
        for k, v in fields.items()
    )
    return (
        f'<form method="post" action="{html.escape(action)}">{hidden}'
        f'<button class="button" type="submit">{html.escape(label)}</button></form>'
    )


def page(
    status: int,
    title: str,
    message: str,
    *,
    detail: str | None = None,
    links: Iterable[tuple[str, str]] = (),
    forms: Iterable[tuple[str, str, dict[str, str]]] = (),
    headers: dict[str, str] | None = None,
) -> http.Response:
    """An HTML page with a title, a message for the user, an optional detail, POST buttons
    (``forms``: label, action, hidden fields) and link buttons."""
    body = f"<p>{html.escape(message)}</p>"
    if detail:
        body += f'<p class="muted">{html.escape(detail)}</p>'
    body += "".join(post_form(*form) for form in forms)
    body += _links(links)
    text = _PAGE.substitute(title=html.escape(title), style=_STYLE, body=body, script="")
    return http.Response.make(
        status,
        text.encode(),
        {
            "Content-Type": "text/html; charset=utf-8",
            "Content-Security-Policy": (
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                "base-uri 'none'; frame-ancestors 'none'"
            ),
            **SECURITY_HEADERS,
            **(headers or {}),
        },
    )


def progress_page(prefix: str | None, message: str) -> http.Response:
    """The page shown while a user's environment starts; it polls and reloads once it answers."""
    nonce = secrets.token_urlsafe(12)
    body = (
        f"<p>Starting your environment{' for ' + html.escape(prefix) if prefix else ''}.</p>"
        '<div class="bar" id="hub-bar"><div></div></div>'
        f'<p class="muted" id="hub-step">{html.escape(message)}</p>'
        '<p id="hub-error" hidden></p>'
        '<a class="button" id="hub-retry" href="" hidden>Try again</a>'
    )
    text = _PAGE.substitute(
        title="Starting your environment",
        style=_STYLE,
        body=body,
        script=_PROGRESS_SCRIPT.substitute(nonce=nonce),
    )
    return http.Response.make(
        503,
        text.encode(),
        {
            "Content-Type": "text/html; charset=utf-8",
            "Retry-After": "2",
            "Content-Security-Policy": (
                f"default-src 'none'; style-src 'unsafe-inline'; "
                f"script-src 'nonce-{nonce}'; connect-src 'self'"
            ),
            **SECURITY_HEADERS,
        },
    )


def json_response(
    status: int, data: object, headers: dict[str, str] | None = None
) -> http.Response:
    return http.Response.make(
        status,
        json.dumps(data, separators=(",", ":")).encode(),
        {"Content-Type": "application/json", **SECURITY_HEADERS, **(headers or {})},
    )


def redirect(location: str, set_cookies: Iterable[str] = ()) -> http.Response:
    response = http.Response.make(302, b"", {"Location": location, **SECURITY_HEADERS})
    for c in set_cookies:
        response.headers.add("Set-Cookie", c)
    return response


def wants_html(request: http.Request) -> bool:
    """True for a browser navigation (where a page or a redirect helps), false for API calls."""
    mode = request.headers.get("sec-fetch-mode")
    if mode:
        return mode == "navigate"
    return request.method in ("GET", "HEAD") and "text/html" in request.headers.get("accept", "")


def bad_request(detail: str) -> http.Response:
    return page(400, "Bad request", "The hub cannot serve this request.", detail=detail)


def not_found(detail: str = "There is nothing here.") -> http.Response:
    return page(404, "Not found", detail)
