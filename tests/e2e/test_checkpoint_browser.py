"""Idle checkpoint and restore as a browser user sees it: the whole product, real CRIU.

Headless Chromium logs in (npm oidc-provider) to ``hub start`` (real Hub, per-user dockerd, the
ttyd environment image) running with ``--idle-timeout`` and ``--checkpoint``. In the web terminal
the user sets a shell variable and starts a background counter, then goes quiet: the idle culler
checkpoints the environment and stops the user's dockerd. The user comes back (a new request in
another tab), the environment is restored, and the *same* terminal, over the same WebSocket, still
has the variable while the counter went on from where it stopped. Then CRIU failures injected
three times (a process holding a deleted 3 MB file, which CRIU refuses to dump) switch the user to
stop-and-recreate, shown in the status API, with the workspace intact.

The template runs as root: this machine's root lacks CAP_SYS_RESOURCE, without which CRIU cannot
dump processes of another uid (hubcontrol.checkpoint.host_can_dump_other_users).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.checkpointing import (
    IDLE_TIMEOUT,
    CheckpointSite,
    counter,
    daemon_running,
    record,
    type_and_read,
    wait_state,
)
from tests.e2e.pages import login, wait_terminal
from tests.support.browser import goto
from tests.support.hubprocess import CLIENT_SECRET, ROUTES, HubSite, labels_file, new_site
from tests.support.oidc_provider import free_port, npm_oidc_provider

pytestmark = [
    pytest.mark.docker,
    pytest.mark.criu,
    pytest.mark.browser,
    pytest.mark.oidc,
    pytest.mark.slow,
    pytest.mark.timeout(420),
]

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "e2e"
COMMAND = (
    "ttyd --writable -t rendererType=dom --port 7681 bash & "
    "exec python3 -m http.server 8080 --bind __SERVICE_IP__ --directory /workspace"
)
USER = "carol"
ARM_SOCKET = "(trap '' HUP; exec docker events >/dev/null 2>&1) & sleep 1; echo ar''med"
# A process holding a deleted 3 MB file (over CRIU's 1 MiB ghost-file limit: the dump fails),
# immune to the SIGHUP ttyd sends when its page closes.
ARM = (
    "head -c 3000000 /dev/zero > /tmp/big; "
    "(trap '' HUP; exec 7</tmp/big; rm /tmp/big; exec sleep 100000) & sleep 0.5; echo ar''med"
)


def labels(path: Path) -> Path:
    # root: CRIU here can only dump processes of root (no CAP_SYS_RESOURCE, docs/checkpoint.md)
    return labels_file(
        path,
        user="root",
        extra=(
            'rediacc.hub.checkpoint: "true"',
            'rediacc.hub.hook.checkpoint.pre_dump: "echo dumped >> /workspace/hooks.log"',
            'rediacc.hub.hook.checkpoint.post_restore: "echo restored >> /workspace/hooks.log"',
        ),
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory, no_io_uring_in_containers):
    root = tmp_path_factory.mktemp("e2e-ckpt")
    port = free_port()
    redirects = [f"http://{p}.localhost:{port}/_hub/oauth/callback" for p in ROUTES]
    client = {"client_id": "hub", "client_secret": CLIENT_SECRET, "redirect_uris": redirects}
    with npm_oidc_provider([client], groups={}) as issuer:
        base = new_site(root, issuer, "localhost", port, HUB_ADMIN_USERS=USER)
        s = CheckpointSite(
            root=root,
            port=port,
            domain="localhost",
            labels=labels(root / "hub.labels.yaml"),
            env=base.env,
        )
        s.start()
        try:
            yield s
        finally:
            s.stop()
            s.cleanup()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def api_status(context, site: HubSite) -> list[dict]:
    cookies = {c["name"]: c["value"] for c in context.cookies(site.url("term"))}
    r = httpx.get(
        f"http://127.0.0.1:{site.port}/_hub/api/status",
        cookies=cookies,
        headers={"Host": f"term.localhost:{site.port}"},
        timeout=10,
    )
    assert r.status_code == 200, r.text[:500]
    return r.json()["users"]


def test_terminal_session_survives_checkpoint_and_restore(site, chromium):
    context = chromium.new_context()
    page = context.new_page()
    sockets = []
    page.on("websocket", lambda ws: sockets.append(ws))
    login(page, site, "term", USER)
    wait_terminal(page)
    type_and_read(
        page,
        "HUBVAR=kept$((6*7)); (i=0; while :; do i=$((i+1)); echo $i > /workspace/counter; "
        "sleep 0.5; done) & echo var=$HUBVAR",
        "var=kept42",
    )
    shot(page, "checkpoint-1-before")

    # quiet: the culler checkpoints the environment and stops the user's dockerd
    rec = wait_state(site, USER, "checkpointed", timeout=IDLE_TIMEOUT + 60)
    assert not daemon_running(site, USER)
    frozen = counter(site, USER)
    assert frozen > 0
    time.sleep(1.5)
    assert counter(site, USER) == frozen  # nothing runs while suspended
    assert (site.root / "workspaces" / USER / "hooks.log").read_text().split() == ["dumped"]

    # the user comes back: any request (here a new tab) restores the environment
    t0 = time.monotonic()
    other = context.new_page()
    goto(other, site.url("term"))
    other.wait_for_selector(".xterm-rows", timeout=120_000)
    resume = time.monotonic() - t0
    rec = wait_state(site, USER, "running", timeout=10)
    assert "processes restored with their memory" in rec["restored"]["detail"]
    assert daemon_running(site, USER)

    # the first terminal: same WebSocket, same shell, the variable still there
    type_and_read(page, "echo again=$HUBVAR", "again=kept42", timeout=30_000)
    shot(page, "checkpoint-2-after")
    assert sockets and not sockets[0].is_closed()
    # the counter went on from where it stopped, not from 1
    time.sleep(1.2)
    now = counter(site, USER)
    assert frozen < now < frozen + 30
    assert (site.root / "workspaces" / USER / "hooks.log").read_text().split() == [
        "dumped",
        "restored",
    ]
    print(f"resume through the browser (new tab to terminal): {resume:.2f} s")

    # three injected CRIU failures: a process holding a deleted file over CRIU's ghost limit
    (site.root / "workspaces" / USER / "keep.txt").write_text("workspace data")
    type_and_read(page, ARM, "armed")
    for strike in (1, 2, 3):
        wait_state(site, USER, "stopped", timeout=IDLE_TIMEOUT + 60)
        assert not daemon_running(site, USER)
        assert record(site, USER).get("checkpoint_error")
        if strike < 3:
            # back again: stop-and-recreate started the container afresh; re-arm the failure
            fresh = context.new_page()
            goto(fresh, site.url("term"))
            fresh.wait_for_selector(".xterm-rows", timeout=120_000)
            # strike 2: `docker events` left running holds a connection to the docker socket
            # mounted from the host, a unix socket CRIU cannot dump
            type_and_read(fresh, ARM_SOCKET if strike == 1 else ARM, "armed")
            fresh.close()
    health = json.loads((site.root / "state" / "checkpoint" / f"{USER}.json").read_text())
    assert health["disabled"] is True and health["failures"] == 3
    assert "CRIU dump failed" in health["last_error"]
    log = site.read_log()
    assert "ghost" in log.lower()  # CRIU's own lines reached the hub's log
    assert "External socket is used" in log  # strike 2: `docker events` on the docker socket
    assert "connection to a unix socket outside the container" in log  # and the hub's hint
    assert (site.root / "workspaces" / USER / "keep.txt").read_text() == "workspace data"

    # shown in status; the next visit gets a fresh environment on the same workspace
    fresh = context.new_page()
    goto(fresh, site.url("term"))
    fresh.wait_for_selector(".xterm-rows", timeout=120_000)
    type_and_read(fresh, "cat /workspace/keep.txt", "workspace data")
    rows = [r for r in api_status(context, site) if r.get("user") == USER]
    assert rows and rows[0]["checkpoint_disabled"] is True and rows[0]["checkpoint_failures"] == 3
    context.close()
