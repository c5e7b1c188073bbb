"""A session cookie planted by an environment's page, in a real browser: headless Chromium
(playwright, Debian's chromium), the real proxy (``proxyharness.running_proxy``), the real npm
oidc-provider, and a small web server standing in for alice's environment whose pages run
whatever they are given (as a dev server serving an untrusted repository would).

The attack of issue #18: bob, an attacker with his own account, gets a page served by alice's
environment to set bob's session cookie from JavaScript with ``domain=<base>`` and a narrower
path. Chromium then sends bob's cookie first; the hub took the first that verified, so alice's
dashboard and API calls ran as bob. Now bob's session is bound to bob's browser cookie and is
ignored in alice's browser (also after she logs out); planting bob's browser cookie as well is
a request with two, refused: the cookies are deleted and alice logs in again as herself.
``Set-Cookie`` headers from the environment (nameless, oddly spelled) never reach the jar.
"""

from __future__ import annotations

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from hubcontrol.config import OAuthConfig, Template
from tests.support.browser import goto, launch_chromium
from tests.support.echoenv import echo_environment
from tests.support.oidc_provider import free_port, npm_oidc_provider
from tests.support.proxyfakes import make_config
from tests.support.proxyharness import StubHub, running_proxy, wait_ready
from tests.support.webclient import browser, provider_login

pytestmark = [pytest.mark.browser, pytest.mark.oidc, pytest.mark.timeout(180)]

DOMAIN = "example.test"
ALICE_IP, BOB_IP = "127.0.0.2", "127.0.0.3"
COOKIE = "rediacc_hub_session"
BROWSER = "rediacc_hub_browser"

PLANT = """<!doctype html><title>notes</title><p id="done">planting</p><script>
document.cookie = %s;
document.getElementById("done").textContent = "planted";
</script>"""


class HostileEnvironment(BaseHTTPRequestHandler):
    """alice's environment, serving pages an attacker wrote: ``/plant?cookie=...`` runs
    ``document.cookie = <cookie>``, ``/headers?token=...`` answers with ``Set-Cookie`` headers for
    the hub's cookie in the spellings browsers accept; anything else is a plain page."""

    def do_GET(self) -> None:  # http.server's name
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        headers = [("Content-Type", "text/html")]
        if url.path == "/plant":
            body = PLANT % json.dumps(query["cookie"])
        elif url.path == "/headers":
            token = query["token"]
            for value in (
                f"={COOKIE}={token}; Domain={DOMAIN}; Path=/_hub",  # nameless
                f" = {COOKIE}={token}; Domain={DOMAIN}; Path=/_hub/api",
                f"REDIACC_HUB_SESSION={token}; Domain={DOMAIN}; Path=/_hub",
                f"\t{COOKIE}\t={token}; Domain={DOMAIN}; Path=/_hub/dashboard",
                "notes=1; Path=/",
            ):
                headers.append(("Set-Cookie", value))
            body = "<p>headers sent</p>"
        else:
            body = "<p>alice's environment</p>"
        data = body.encode()
        self.send_response(200)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def hostile_environment(ip: str, port: int):
    server = ThreadingHTTPServer((ip, port), HostileEnvironment)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def world(tmp_path):
    port, term = free_port(), free_port()
    callbacks = [f"http://{h}{DOMAIN}:{port}/_hub/oauth/callback" for h in ("term.", "")]
    client = {"client_id": "hub", "client_secret": "hub-secret", "redirect_uris": callbacks}
    with (
        npm_oidc_provider([client]) as issuer,
        hostile_environment(ALICE_IP, term),
        echo_environment("bob-term", BOB_IP, term),
    ):
        oauth = OAuthConfig(
            client_id="hub",
            client_secret="hub-secret",
            authorize_url=f"{issuer}/auth",
            token_url=f"{issuer}/token",
            userinfo_url=f"{issuer}/me",
            userinfo_path="preferred_username",
        )
        config = make_config(
            tmp_path,
            routes={"term": term},
            base_domain=DOMAIN,
            oauth=oauth,
            session_secret="c" * 64,
            templates={"default": Template("default", "img")},
        )
        hub = StubHub([ALICE_IP, BOB_IP], {"term": term}, start_delay=0)
        with running_proxy(config, hub, port) as proxy:
            yield proxy


@pytest.fixture
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        rules = f"MAP *.{DOMAIN} 127.0.0.1, MAP {DOMAIN} 127.0.0.1"
        chromium = launch_chromium(p, f"--host-resolver-rules={rules}")
        try:
            yield chromium
        finally:
            chromium.close()


def hub_cookies(context) -> list[dict]:
    """The browser's cookies that the hub would read as its own (session or browser cookie)."""
    return [
        c
        for c in context.cookies()
        if c["name"] in (COOKIE, BROWSER)
        or (c["name"] == "" and c["value"].split("=")[0] in (COOKIE, BROWSER))
    ]


def sign_in(page, url: str, user: str) -> None:
    """Open ``url``; if the provider asks (its own session may sign alice in silently), log in."""
    goto(page, url)
    if page.query_selector("input[name=login]"):
        page.fill("input[name=login]", user)
        page.fill("input[name=password]", "any")
        page.click("button[type=submit]")
        page.wait_for_load_state()


def plant(page, term: str, cookie: str) -> None:
    """alice opens a page of her own environment that runs ``document.cookie = cookie``."""
    goto(page, f"{term}/plant?{urlencode({'cookie': cookie})}")
    page.wait_for_selector("text=planted")


def viewer(page, base: str) -> str:
    goto(page, f"{base}/_hub/dashboard")
    page.wait_for_selector("#viewer")
    return page.inner_text("#viewer")


def api_viewer(page, base: str):
    """Who ``/_hub/api/status`` says the browser is (opened as a page), or its status code."""
    response = goto(page, f"{base}/_hub/api/status")
    if response.status != 200:
        return response.status
    return json.loads(page.inner_text("body"))["viewer"]["user"]


def test_a_cookie_planted_by_an_environment_page_never_makes_alice_bob(world, chromium):
    proxy = world
    term = f"http://term.{DOMAIN}:{proxy.port}"
    base = f"http://{DOMAIN}:{proxy.port}"
    context = chromium.new_context()
    page = context.new_page()
    sign_in(page, f"{term}/", "alice")  # the first user started gets ALICE_IP
    page.wait_for_selector("text=alice's environment", timeout=20_000)
    assert viewer(page, base) == "alice"
    # bob logs in on his own: his valid session cookie and his browser cookie are what he plants
    with browser(DOMAIN, proxy.port) as bob:
        provider_login(bob, bob.get(f"{term}/"), "bob")
        wait_ready(bob, term)
        assert bob.get(f"{term}/").json()["name"] == "bob-term"
        bobs, bobs_browser = bob.cookies.get(COOKIE), bob.cookies.get(BROWSER)
    assert bobs and bobs_browser

    # 1. bob's session for the whole domain on a narrower path than alice's: Chromium sends it
    #    first on /_hub/... (the attack of issue #18). It is bound to bob's browser: ignored.
    plant(page, term, f"{COOKIE}={bobs}; domain={DOMAIN}; path=/_hub")
    planted = [c for c in hub_cookies(context) if c["path"] == "/_hub"]
    assert planted and planted[0]["value"] == bobs and planted[0]["domain"] == "." + DOMAIN
    assert viewer(page, base) == "alice"
    assert api_viewer(page, base) == "alice"
    # ... also once alice has logged out (the dashboard's button) and only bob's is left
    goto(page, f"{base}/_hub/dashboard")
    page.click("#logout")
    page.wait_for_selector("text=Logged out")
    assert [c["value"] for c in hub_cookies(context) if c["name"] == COOKIE] == [bobs]
    sign_in(page, f"{base}/_hub/dashboard", "alice")
    assert viewer(page, base) == "alice"

    # 2. bob's browser cookie planted too: two browser cookies, refused; the hub deletes what it
    #    can see and alice logs in again, as herself
    plant(page, term, f"{BROWSER}={bobs_browser}; domain={DOMAIN}; path=/_hub")
    assert api_viewer(page, base) == 401
    assert "two different hub sessions" in page.content() and "bob" not in page.content()
    assert hub_cookies(context) == []
    sign_in(page, f"{base}/_hub/login?next=/_hub/dashboard", "alice")
    assert viewer(page, base) == "alice"

    # 3. the same as host-only cookies of alice's prefix host: refused there too
    plant(page, term, f"{COOKIE}={bobs}; path=/_hub")
    plant(page, term, f"{BROWSER}={bobs_browser}; path=/_hub")
    assert {c["domain"] for c in hub_cookies(context) if c["path"] == "/_hub"} == {f"term.{DOMAIN}"}
    response = goto(page, f"{term}/_hub/")
    assert response.status == 401 and "Log in again" in page.content()
    assert "bob" not in page.content()
    assert hub_cookies(context) == []
    sign_in(page, f"{term}/_hub/login?next=/_hub/", "alice")
    page.wait_for_selector("text=Logged in as alice.")

    # 4. a nameless cookie is sent as "rediacc_hub_session=<bob>" (RFC 6265bis); this Chromium
    #    refuses to store one whose value holds "=", others may not: never bob either way
    plant(page, term, f"={COOKIE}={bobs}; domain={DOMAIN}; path=/_hub")
    plant(page, term, f"={BROWSER}={bobs_browser}; domain={DOMAIN}; path=/_hub")
    if [c for c in hub_cookies(context) if c["name"] == ""]:
        assert api_viewer(page, base) == 401
        sign_in(page, f"{base}/_hub/login?next=/_hub/dashboard", "alice")
    assert viewer(page, base) == "alice"

    # 5. Set-Cookie headers from the environment, in every spelling, never reach the jar
    before = hub_cookies(context)
    goto(page, f"{term}/headers?token={bobs}")
    page.wait_for_selector("text=headers sent")
    assert ("notes", "/") in {(c["name"], c["path"]) for c in context.cookies()}
    assert hub_cookies(context) == before
    assert not [c for c in context.cookies() if bobs in c["value"]]
    assert viewer(page, base) == "alice"
    goto(page, f"{term}/")
    page.wait_for_selector("text=alice's environment")
    context.close()
