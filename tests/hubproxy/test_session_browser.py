"""A session cookie planted by an environment's page, in a real browser: headless Chromium
(playwright, Debian's chromium), the real proxy (``harness.running_proxy``), the real npm
oidc-provider, and a small web server standing in for alice's environment whose pages run
whatever they are given (as a dev server serving an untrusted repository would).

The attack of issue #18: bob, an attacker with his own account, gets a page served by alice's
environment to set bob's session cookie from JavaScript with ``domain=<base>`` and a narrower
path. Chromium then sends bob's cookie first; the hub took the first that verified, so alice's
dashboard and API calls ran as bob. Now a request carrying two sessions is refused, the cookies
are deleted and alice logs in again as herself. ``Set-Cookie`` headers from the environment
(nameless, oddly spelled) never reach the browser's jar.
"""

from __future__ import annotations

import contextlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from hubcontrol.config import OAuthConfig, Template
from tests.hubproxy.harness import StubHub, browser, provider_login, running_proxy, wait_ready
from tests.hubproxy.support import make_config
from tests.support.browser import launch_chromium
from tests.support.echoenv import echo_environment
from tests.support.oidc_provider import free_port, npm_oidc_provider

pytestmark = [pytest.mark.browser, pytest.mark.oidc, pytest.mark.timeout(180)]

DOMAIN = "example.test"
ALICE_IP, BOB_IP = "127.0.0.2", "127.0.0.3"
COOKIE = "rediacc_hub_session"

PLANT = """<!doctype html><title>notes</title><p id="done">planting</p><script>
document.cookie = %s;
document.getElementById("done").textContent = "planted";
</script>"""


class HostileEnvironment(BaseHTTPRequestHandler):
    """alice's environment, serving pages an attacker wrote: ``/plant?cookie=...`` runs
    ``document.cookie = <cookie>``, ``/headers?token=...`` answers with ``Set-Cookie`` headers for
    the hub's cookie in the spellings browsers accept; anything else is a plain page."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        headers = [("Content-Type", "text/html")]
        if url.path == "/plant":
            import json

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
    """The browser's cookies that the hub would read as its session cookie."""
    return [
        c
        for c in context.cookies()
        if c["name"] == COOKIE or (c["name"] == "" and c["value"].startswith(COOKIE + "="))
    ]


def sign_in(page, url: str, user: str) -> None:
    page.goto(url)
    if page.query_selector("input[name=login]"):
        page.fill("input[name=login]", user)
        page.fill("input[name=password]", "any")
        page.click("button[type=submit]")


def test_a_cookie_planted_by_an_environment_page_never_makes_alice_bob(world, chromium):
    proxy = world
    term = f"http://term.{DOMAIN}:{proxy.port}"
    base = f"http://{DOMAIN}:{proxy.port}"
    context = chromium.new_context()
    page = context.new_page()
    sign_in(page, f"{term}/", "alice")  # the first user started gets ALICE_IP
    page.wait_for_selector("text=alice's environment", timeout=20_000)
    page.goto(f"{base}/_hub/dashboard")
    assert page.inner_text("#viewer") == "alice"
    # bob logs in on his own and has a valid session cookie: the value he plants
    with browser(DOMAIN, proxy.port) as bob:
        provider_login(bob, bob.get(f"{term}/"), "bob")
        wait_ready(bob, term)
        assert bob.get(f"{term}/").json()["name"] == "bob-term"
        bobs = bob.cookies.get(COOKIE)
    assert bobs

    # 1. alice opens a page of her environment that plants bob's cookie for the whole domain,
    #    on a narrower path than hers: Chromium now sends bob's first on /_hub/...
    page.goto(f"{term}/plant?cookie={COOKIE}={bobs}; domain={DOMAIN}; path=/_hub")
    page.wait_for_selector("text=planted")
    planted = [c for c in hub_cookies(context) if c["path"] == "/_hub"]
    assert planted and planted[0]["value"] == bobs and planted[0]["domain"] == "." + DOMAIN
    # her API calls are not bob's: refused, and the browser is asked to forget both cookies
    response = page.goto(f"{base}/_hub/api/status")
    assert response.status == 401
    assert "two different hub sessions" in page.content() and "bob" not in page.content()
    assert hub_cookies(context) == []
    # she logs in again (the provider remembers her): alice, not bob
    page.click("text=Log in again")
    page.wait_for_load_state()
    page.goto(f"{base}/_hub/dashboard")
    assert page.inner_text("#viewer") == "alice"

    # 2. a nameless cookie would be sent as "rediacc_hub_session=<bob>" (RFC 6265bis); this
    #    Chromium refuses to store a nameless cookie whose value holds "=", others may not:
    #    either way alice's dashboard is never bob's
    page.goto(f"{term}/plant?cookie==" + f"{COOKIE}={bobs}; domain={DOMAIN}; path=/_hub")
    page.wait_for_selector("text=planted")
    nameless = [c for c in hub_cookies(context) if c["name"] == ""]
    response = page.goto(f"{base}/_hub/dashboard")
    if nameless:
        assert response.status == 401 and "Log in again" in page.content()
        sign_in(page, f"{base}/_hub/login?next=/_hub/dashboard", "alice")
        page.wait_for_selector("#viewer")
    assert page.inner_text("#viewer") == "alice"

    # 3. a host-only cookie on alice's prefix host, narrower path: refused there too
    page.goto(f"{term}/plant?cookie={COOKIE}={bobs}; path=/_hub")
    page.wait_for_selector("text=planted")
    assert [c["domain"] for c in hub_cookies(context) if c["path"] == "/_hub"] == [f"term.{DOMAIN}"]
    response = page.goto(f"{term}/_hub/")
    assert response.status == 401 and "Log in again" in page.content()
    assert "bob" not in page.content()
    assert hub_cookies(context) == []
    sign_in(page, f"{term}/_hub/login?next=/_hub/", "alice")
    page.wait_for_selector("text=Logged in as alice.")

    # 4. Set-Cookie headers from the environment, in every spelling, never reach the jar
    before = hub_cookies(context)
    page.goto(f"{term}/headers?token={bobs}")
    page.wait_for_selector("text=headers sent")
    names = {(c["name"], c["path"]) for c in context.cookies()}
    assert ("notes", "/") in names  # the environment's own cookie is kept
    assert hub_cookies(context) == before
    assert not [c for c in context.cookies() if bobs in c["value"]]
    page.goto(f"{base}/_hub/dashboard")
    assert page.inner_text("#viewer") == "alice"
    # and alice's environment still answers her, as her
    page.goto(f"{term}/")
    page.wait_for_selector("text=alice's environment")
    assert [s.user for s in proxy.context.sessions.sessions()].count("alice") >= 1
    context.close()
