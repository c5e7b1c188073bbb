"""The dashboard in a real browser against the whole product: headless Chromium (playwright,
Debian's chromium), ``hub start`` with the real Hub, per-user dockerd and the environment image
(tests/support/hubprocess.py), the real npm oidc-provider; ``hub status --json`` run as a real CLI.

Covers: a regular user sees only their own environment (links, idle timer, no admin actions);
the numbers on the dashboard, in ``hub status --json`` and what the user's own dockerd reports
agree; an admin sees everyone and stops another user's environment, and that user's open
dashboard follows without a reload; a user switches template; the metrics count what happened.
Screenshots (laptop and phone) go to test-artifacts/dashboard/.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import docker
import httpx
import pytest

from tests.e2e.pages import login, wait_terminal
from tests.support.browser import goto
from tests.support.hubprocess import CLIENT_SECRET, COMMAND, ENV_IMAGE, ROOT, ROUTES, new_site
from tests.support.images import import_busybox
from tests.support.oidc_provider import free_port, npm_oidc_provider

pytestmark = [
    pytest.mark.docker,
    pytest.mark.browser,
    pytest.mark.oidc,
    pytest.mark.slow,
    pytest.mark.timeout(420),
]

ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
DOMAIN = "example.test"
ADMIN, USER = "ada", "ben"
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("dash")
    port = free_port()
    redirects = [f"http://{p}.{DOMAIN}:{port}/_hub/oauth/callback" for p in ROUTES]
    client = {"client_id": "hub", "client_secret": CLIENT_SECRET, "redirect_uris": redirects}
    with npm_oidc_provider([client]) as issuer:
        site = new_site(root, issuer, DOMAIN, port, HUB_ADMIN_USERS=ADMIN)
        # a second template to switch to: the same image, another name
        with site.labels.open("a") as f:
            f.write(f"  rediacc.hub.templates.lite.image: {ENV_IMAGE}\n")
            f.write(f'  rediacc.hub.templates.lite.command: "{COMMAND}"\n')
            f.write("  rediacc.hub.templates.lite.docker: per-user\n")
            f.write("  rediacc.hub.templates.lite.user: vscode\n")
        site.start()
        try:
            yield site
        finally:
            site.stop()
            site.cleanup()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def hub_cli(site, *args: str) -> subprocess.CompletedProcess:
    """``hub <args>`` as an operator runs it against this hub."""
    return subprocess.run(
        [
            str(ROOT / ".venv/bin/hub"),
            *args,
            "--url",
            f"http://127.0.0.1:{site.port}",
            "--token-file",
            str(site.root / "state" / "admin.token"),
        ],
        capture_output=True,
        text=True,
        timeout=200,
    )


def hub_status(site) -> dict:
    proc = hub_cli(site, "status", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def entry(doc: dict, user: str) -> dict:
    return next(u for u in doc["users"] if u["user"] == user)


def docker_counts(client) -> tuple[int, int]:
    """What the user's own daemon says: running containers, distinct images."""
    return len(client.containers.list()), len({i.id for i in client.images.list()})


def card(page, user: str, state: str | None = None, timeout: float = 30_000):
    selector = f'.card[data-user="{user}"]' + (f'[data-state="{state}"]' if state else "")
    return page.wait_for_selector(selector, timeout=timeout)


def fact(page, user: str, name: str) -> str:
    return page.get_attribute(f'.card[data-user="{user}"] [data-fact="{name}"]', "data-value")


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_dashboard_for_a_user_and_an_admin(site, chromium):
    ben = chromium.new_context(viewport=LAPTOP)
    term = ben.new_page()
    login(term, site, "term", USER)
    wait_terminal(term)

    # -- a regular user: only their own environment ------------------------------------------
    dash = ben.new_page()
    goto(dash, site.url("term", "/_hub/dashboard"))
    card(dash, USER, "running")
    assert dash.locator(".card").count() == 1
    assert dash.locator('button[data-action="checkpoint"]').count() == 0
    links = {
        a.text_content(): a.get_attribute("href")
        for a in dash.locator(f'.card[data-user="{USER}"] .links a').all()
    }
    assert links == {p: site.url(p) for p in ROUTES}
    assert re.search(r"Idle \d+s", dash.locator(".idle").text_content())

    # -- the numbers: dashboard == hub status --json == the user's dockerd --------------------
    net_id = entry(hub_status(site), USER)["net_id"]
    client = docker.DockerClient(
        base_url=f"unix:///run/rediacc/hub/{net_id}/docker.sock", version="1.41", timeout=60
    )
    try:
        ref = import_busybox(client, "hub-test/dash")
        client.containers.run(ref, ["sleep", "600"], detach=True, name="dash-extra")
        expected = docker_counts(client)
        assert expected == (2, 2)  # the environment and ours; its image and busybox
        # the hub samples every 30 s: wait for the next sample to see them
        doc = wait_for(
            lambda: (
                (d := hub_status(site))
                and (entry(d, USER)["containers_running"], entry(d, USER)["images"]) == expected
                and d
            ),
            45,
            "the 30 s sampler to count the new container",
        )
        ours = entry(doc, USER)
        assert ours["disk_bytes"] > 100_000_000  # the environment image lives in the data-root
        assert ours["state"] == "running" and ours["template"] == "default"
        # the page polls every 3 s (its CSP forbids eval, so poll from here)
        wait_for(
            lambda: fact(dash, USER, "containers") == str(expected[0]), 15, "the page to update"
        )
        assert fact(dash, USER, "containers") == str(ours["containers_running"])
        assert fact(dash, USER, "images") == str(ours["images"])
        assert fact(dash, USER, "disk") == str(ours["disk_bytes"])
        assert docker_counts(client) == expected
    finally:
        client.close()
    shot(dash, "user-laptop")
    phone = chromium.new_context(viewport=PHONE, storage_state=ben.storage_state())
    p = phone.new_page()
    goto(p, site.url("term", "/_hub/dashboard"))
    card(p, USER, "running")
    shot(p, "user-phone")
    phone.close()

    # -- an admin: everyone, and stops another user's environment ------------------------------
    ada = chromium.new_context(viewport=LAPTOP)
    code = ada.new_page()
    login(code, site, "code", ADMIN)
    code.wait_for_selector("text=Directory listing", timeout=180_000)
    admin_dash = ada.new_page()
    goto(admin_dash, site.url("code", "/_hub/dashboard"))
    card(admin_dash, ADMIN, "running")
    card(admin_dash, USER, "running")
    users = [c.get_attribute("data-user") for c in admin_dash.locator(".card").all()]
    assert users == [ADMIN, USER]  # own first
    assert admin_dash.locator(f'.card[data-user="{USER}"] .links a').count() == 0
    shot(admin_dash, "admin-laptop")
    stop = admin_dash.locator(f'.card[data-user="{USER}"] button[data-action="stop"]')
    stop.click()
    assert "Confirm" in stop.text_content()
    stop.click()
    card(admin_dash, USER, "stopped", timeout=60_000)
    # ben's open dashboard follows without a reload
    card(dash, USER, "stopped", timeout=15_000)
    assert entry(hub_status(site), USER)["state"] == "stopped"
    shot(admin_dash, "admin-after-stop")
    admin_phone = chromium.new_context(viewport=PHONE, storage_state=ada.storage_state())
    ap = admin_phone.new_page()
    goto(ap, site.url("code", "/_hub/dashboard"))
    card(ap, USER, "stopped")
    shot(ap, "admin-phone")
    admin_phone.close()

    # -- the user switches template ---------------------------------------------------------------
    # through /_hub/login?template=lite (silent: the provider's session), into the rebuilt
    # environment on the host the dashboard was on
    dash.select_option(f'.card[data-user="{USER}"] select', "lite")
    dash.click(f'.card[data-user="{USER}"] button[data-action="switch"]')
    wait_terminal(dash, 180_000)
    assert dash.url == site.url("term")
    goto(dash, site.url("term", "/_hub/dashboard"))
    card(dash, USER, "running")
    wait_for(lambda: entry(hub_status(site), USER)["template"] == "lite", 15, "template lite")
    dash.wait_for_selector(f'.card[data-user="{USER}"] .sub >> text=lite template')
    shot(dash, "user-after-switch")

    # -- what the metrics counted ----------------------------------------------------------------
    text = httpx.get(f"http://127.0.0.1:{site.port}/_hub/metrics", timeout=10).text
    metrics = dict(re.findall(r"^([a-z_]+(?:\{[^}]*\})?) ([0-9.e+-]+)$", text, flags=re.MULTILINE))
    assert float(metrics['hub_logins_total{outcome="success"}']) == 3  # ben, ada, ben's switch
    assert float(metrics['hub_spawns_total{outcome="success"}']) >= 3
    assert float(metrics['hub_environments{state="running"}']) == 2
    assert float(metrics['hub_stops_total{state="stopped"}']) >= 1
    assert float(metrics['hub_websocket_connections_total{prefix="term"}']) >= 1
    assert float(metrics['hub_proxy_requests_total{prefix="code",code="2xx"}']) >= 1
    assert float(metrics["hub_spawn_seconds_count"]) >= 3

    # -- hub stop from the command line ------------------------------------------------------------
    ada_net = entry(hub_status(site), ADMIN)["net_id"]
    proc = hub_cli(site, "stop", ADMIN)
    assert proc.returncode == 0 and f"{ADMIN}: stopped" in proc.stdout, proc.stderr
    assert not Path(f"/run/rediacc/hub/{ada_net}/docker.sock").exists()  # her daemon is down
    card(admin_dash, ADMIN, "stopped", timeout=15_000)
    proc = hub_cli(site, "stop", "nobody")
    assert proc.returncode == 4 and "no user 'nobody'" in proc.stderr
    for ctx in (ben, ada):
        ctx.close()
