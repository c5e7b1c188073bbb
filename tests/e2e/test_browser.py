"""A real browser against the whole product: headless Chromium (playwright, Debian's chromium),
``hub start`` with the real Hub and per-user dockerd, the environment image with ttyd, and the
real npm oidc-provider.

Covers: login lands in your own environment on term. and code.; typing in the web terminal over
WebSocket; per-host cookies on *.localhost (silent re-login through the provider's session) and a
shared Domain= cookie on *.example.test; a user outside HUB_ALLOWED_GROUPS gets 403; two users
side by side each reach only their own environment; logout closes the terminal's WebSocket; the
hub restarts (SIGTERM) without stopping environments.
"""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path

import pytest

from tests.e2e.pages import login, wait_terminal
from tests.support.browser import goto
from tests.support.hubprocess import CLIENT_SECRET, ROUTES, new_site
from tests.support.oidc_provider import free_port, npm_oidc_provider

pytestmark = [
    pytest.mark.docker,
    pytest.mark.browser,
    pytest.mark.oidc,
    pytest.mark.slow,
    pytest.mark.timeout(300),
]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "e2e"
DOMAINS = ("localhost", "example.test")
GROUPS = {"alice": ["dev"], "bob": ["dev", "ops"], "carol": ["dev"], "mallory": ["guests"]}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    port = free_port()
    redirects = [f"http://{p}.{d}:{port}/_hub/oauth/callback" for p in ROUTES for d in DOMAINS]
    client = {"client_id": "hub", "client_secret": CLIENT_SECRET, "redirect_uris": redirects}
    with npm_oidc_provider([client], groups=GROUPS) as issuer:
        sites = {
            d: new_site(root, issuer, d, port, HUB_ALLOWED_GROUPS="dev", HUB_ADMIN_USERS="alice")
            for d in DOMAINS
        }
        try:
            yield sites
        finally:
            for site in sites.values():
                site.stop()
            sites["localhost"].cleanup()


@contextlib.contextmanager
def running(site):
    site.start()
    try:
        yield site
    finally:
        code = site.stop()
        assert code == 0, site.read_log()[-3000:]


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def type_and_read(page, command: str, expect: str) -> None:
    page.click(".xterm")
    page.keyboard.type(command + "\n", delay=5)
    page.wait_for_function(
        "t => document.querySelector('.xterm-rows').innerText.includes(t)",
        arg=expect,
        timeout=20_000,
    )


def test_login_terminal_two_users_groups_logout_per_host_cookies(world, chromium):
    site = world["localhost"]
    with running(site):
        alice = chromium.new_context()
        page = alice.new_page()
        sockets = []
        page.on("websocket", lambda ws: sockets.append(ws))
        t0 = time.monotonic()
        login(page, site, "term", "alice")
        wait_terminal(page)
        first_start = time.monotonic() - t0
        assert page.url == site.url("term")
        type_and_read(
            page, "echo alice-was-here > /workspace/marker.txt; echo $((6*7))-ok", "42-ok"
        )
        shot(page, "alice-terminal")
        assert sockets and not sockets[0].is_closed()
        # the hub's cookie is per host on *.localhost: code. logs in silently via the provider
        cookies = alice.cookies()
        session = [c for c in cookies if c["name"] == "rediacc_hub_session"]
        assert [c["domain"] for c in session] == ["term.localhost"]
        assert session[0]["httpOnly"] and session[0]["sameSite"] == "Lax"
        code = alice.new_page()
        goto(code, site.url("code", "/marker.txt"))
        code.wait_for_selector("text=alice-was-here", timeout=20_000)
        assert code.url == site.url("code", "/marker.txt")

        # bob, side by side, reaches only his own environment
        bob = chromium.new_context()
        bob_page = bob.new_page()
        polls: list[str] = []
        bob_page.on("request", lambda r: polls.append(r.url) if "/api/progress" in r.url else None)
        login(bob_page, site, "code", "bob", "/marker.txt")
        bob_page.wait_for_selector("text=Starting your environment", timeout=20_000)
        shot(bob_page, "bob-progress-page")
        # through the progress page (its CSP forbids eval, so wait on text, not a JS predicate)
        bob_page.wait_for_selector("text=File not found", timeout=120_000)
        # the page long-polls: each ask names the step it has seen, and the hub holds it
        assert polls and all("wait=20&since=" in u for u in polls), polls
        assert any(not u.endswith("since=") for u in polls), polls
        shot(bob_page, "bob-code-no-marker")
        bob_term = bob.new_page()
        goto(bob_term, site.url("term"))
        wait_terminal(bob_term)
        type_and_read(bob_term, "cat /workspace/marker.txt 2>&1 | tr a-z A-Z", "NO SUCH FILE")

        # mallory is not in HUB_ALLOWED_GROUPS
        mallory = chromium.new_context()
        m_page = mallory.new_page()
        login(m_page, site, "term", "mallory")
        m_page.wait_for_selector("text=Access denied")
        shot(m_page, "mallory-403")
        assert "rediacc_hub_session" not in {c["name"] for c in mallory.cookies()}

        # logout ends alice's session and closes her terminal's WebSocket
        closed = []
        sockets[0].on("close", lambda ws: closed.append(True))
        # (a GET only asks; the button POSTs the session's CSRF token)
        goto(code, site.url("term", "/_hub/logout"))
        code.wait_for_selector("text=Log out?")
        assert not closed and not sockets[0].is_closed()
        code.click("button[type=submit]")
        code.wait_for_selector("text=Logged out")
        page.wait_for_timeout(500)
        assert closed or sockets[0].is_closed()
        # the old cookie is dead: the next visit goes through the provider again (whose own
        # session signs alice in silently) and gets a new hub session
        old = session[0]["value"]
        seen = []
        code.on("request", lambda r: seen.append(r.url))
        goto(code, site.url("term"))
        wait_terminal(code)
        assert any("/auth?" in u for u in seen)
        new = [c for c in alice.cookies() if c["name"] == "rediacc_hub_session"]
        assert new and new[0]["value"] != old
        print(f"first environment start through the browser: {first_start:.1f} s")
        for ctx in (alice, bob, mallory):
            ctx.close()


def test_domain_cookie_shared_across_prefixes_and_restart_keeps_environments(world, chromium):
    site = world["example.test"]
    context = chromium.new_context()
    page = context.new_page()
    with running(site):
        login(page, site, "term", "alice")
        wait_terminal(page)
        type_and_read(page, "echo $((7*6))-again", "42-again")
        session = [c for c in context.cookies() if c["name"] == "rediacc_hub_session"]
        assert [c["domain"] for c in session] == [".example.test"]
        # code. shares the cookie: no trip to the provider
        code = context.new_page()
        requests = []
        code.on("request", lambda r: requests.append(r.url))
        goto(code, site.url("code", "/marker.txt"))
        code.wait_for_selector("text=alice-was-here", timeout=20_000)
        assert not any("/auth" in u for u in requests)
        shot(code, "example-test-code")
    # the hub is down (SIGTERM); the environment is not. Started again, it serves the same
    # terminal session without a new login (sessions and routes survive the restart).
    with running(site):
        goto(page, site.url("term"))
        wait_terminal(page, 20_000)
        type_and_read(page, "cat /workspace/marker.txt", "alice-was-here")
        assert re.match(r"http://term\.example\.test:\d+/$", page.url)
    context.close()


def test_template_chosen_at_login_rebuilds_the_environment(world, chromium):
    site = world["localhost"]
    with running(site):
        context = chromium.new_context()
        page = context.new_page()
        login(page, site, "term", "carol")
        wait_terminal(page)
        type_and_read(page, "echo kept > /workspace/kept.txt; echo done-$((1+1))", "done-2")
        # the default template serves /workspace on code.
        code = context.new_page()
        goto(code, site.url("code", "/kept.txt"))
        code.wait_for_selector("text=kept", timeout=20_000)
        # log in again choosing the other template: the container is rebuilt from it, the
        # persistent workspace stays
        goto(code, site.url("code", "/_hub/login?template=alt&next=/"))
        code.wait_for_selector("text=Starting your environment", timeout=20_000)
        # the alt template's file server lists /etc (the default one lists the workspace)
        code.wait_for_selector("a[href='passwd']", timeout=120_000)
        assert code.url == site.url("code", "/")
        shot(code, "carol-alt-template")
        goto(page, site.url("term"))
        wait_terminal(page)
        type_and_read(page, "cat /workspace/kept.txt", "kept")
        context.close()
