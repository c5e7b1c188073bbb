"""The identity provider slow (hung: it accepts connections and never answers) or unreachable
(gone) while users are logged in. Sessions are the hub's own (docs/security.md, "The session
cookie"): the provider is asked only at login, so logged-in users keep working; a login that
needs the provider fails within the hub's provider timeout with a page saying so, and works
again once the provider is back."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from urllib.parse import urlsplit

import pytest

from hubproxy.addons.oauthlogin import PROVIDER_TIMEOUT
from tests.faults.faultsite import ROUTES, FaultSite, processes
from tests.support.oidc_provider import npm_oidc_provider

pytestmark = [pytest.mark.docker, pytest.mark.criu, pytest.mark.oidc, pytest.mark.timeout(240)]


def provider_pid(site: FaultSite) -> int:
    port = urlsplit(site.issuer).port
    pids = processes(
        lambda a: any(x.endswith("provider.mjs") for x in a) and f'"port": {port}' in a[-1]
    )
    assert len(pids) == 1, pids
    return pids[0]


def timed_page(site: FaultSite, browser, path: str) -> tuple[float, int, str]:
    t0 = time.monotonic()
    r = site.page(browser, path)
    return time.monotonic() - t0, r.status_code, r.text


def login_stopped_at_callback(site: FaultSite, user: str):
    """A browser that filled in the provider's form, about to return to the hub's callback
    (where the hub exchanges the code at the provider): (browser, callback URL)."""
    browser = site.browser()
    r = browser.get(site.url("code", "/"))
    action = r.text.split('action="', 1)[1].split('"', 1)[0]
    r = browser.post(
        r.url.join(action),
        data={"prompt": "login", "login": user, "password": "any"},
        follow_redirects=False,
    )
    # follow the provider's own redirects, stop at the hub's callback
    while "/_hub/oauth/callback" not in str(r.url):
        location = r.headers.get("location")
        assert location, (r.status_code, str(r.url), r.text[:300])
        nxt = r.url.join(location)
        if "/_hub/oauth/callback" in str(nxt):
            return browser, nxt
        r = browser.get(nxt, follow_redirects=False)
    return browser, r.url


def test_provider_slow_then_gone_while_users_are_logged_in(site: FaultSite):
    user = "idp"
    with site.login(user) as browser:
        (site.workspaces / user / "notes.txt").write_text("kept")
        pid = provider_pid(site)

        # slow: the provider hangs (SIGSTOP); a login in progress waits for it
        late, callback = login_stopped_at_callback(site, "idplate")
        late.follow_redirects = False
        os.kill(pid, signal.SIGSTOP)
        try:
            box = {}

            def finish_login():
                t0 = time.monotonic()
                box["r"] = late.get(callback, headers={"Accept": "text/html"})
                box["seconds"] = time.monotonic() - t0

            waiting = threading.Thread(target=finish_login)
            waiting.start()
            # meanwhile the logged-in user is served at once, and the hub answers its health
            seconds, status, text = timed_page(site, browser, "/notes.txt")
            assert (status, text) == (200, "kept") and seconds < 3, seconds
            health = browser.get(site.url("code", "/_hub/health"))
            assert health.status_code == 200
            waiting.join(3 * PROVIDER_TIMEOUT + 10)
            r = box["r"]
            # the late user is told, within the hub's provider timeout, that the provider failed
            assert r.status_code in (502, 504), r.status_code
            assert "login provider" in r.text
            assert box["seconds"] < 2 * PROVIDER_TIMEOUT + 5, box["seconds"]
        finally:
            os.kill(pid, signal.SIGCONT)
            late.close()
        with site.login("idplate") as again:  # the provider is back: logins work
            assert site.page(again, "/").status_code in (200, 404)

        # gone: the provider is killed; existing sessions keep working
        os.kill(pid, signal.SIGKILL)
        seconds, status, text = timed_page(site, browser, "/notes.txt")
        assert (status, text) == (200, "kept") and seconds < 3
        assert site.revisit(browser, "/notes.txt").text == "kept"
        # a browser without a session is sent to the provider, which does not answer
        with site.browser() as fresh:
            r = fresh.get(site.url("code", "/"), follow_redirects=False)
            while r.status_code in (302, 303) and r.headers["location"].startswith("/"):
                r = fresh.get(site.url("code", r.headers["location"]), follow_redirects=False)
            assert r.status_code in (302, 303) and r.headers["location"].startswith(site.issuer)

        # the provider comes back (same address): the next login works
        port = urlsplit(site.issuer).port
        redirects = [f"http://{p}.{site.domain}:{site.port}/_hub/oauth/callback" for p in ROUTES]
        client = {
            "client_id": "hub",
            "client_secret": "e2e-client-secret",
            "redirect_uris": redirects,
        }
        with npm_oidc_provider([client], port=port):
            with site.login(user) as fresh:
                assert site.page(fresh, "/notes.txt").text == "kept"
    assert json.loads((site.state / "sessions.json").read_text())
