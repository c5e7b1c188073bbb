"""A non-root terminal survives the idle checkpoint under ``--userns-remap``, as a browser user
sees it, on a host whose root lacks CAP_SYS_RESOURCE (this one).

The same product as tests/e2e/test_checkpoint_browser.py (``hub start``, headless Chromium, npm
oidc-provider, the ttyd environment image, real CRIU), but the template runs as the image's
``vscode`` user (uid 1000) and the hub runs with ``--userns-remap``: the culler checkpoints the
environment and stops the user's dockerd, a new tab restores it, and the first terminal, over
the same WebSocket, still has its shell variable and still is uid 1000 inside, while on the host
its processes run as the user's own range (docs/checkpoint.md, "Non-root environments without
CAP_SYS_RESOURCE").
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from hubcontrol import userns
from tests.e2e.checkpointing import (
    IDLE_TIMEOUT,
    CheckpointSite,
    counter,
    daemon_running,
    type_and_read,
    wait_state,
)
from tests.e2e.pages import login
from tests.support.browser import goto
from tests.support.hubprocess import CLIENT_SECRET, ROUTES, labels_file, new_site
from tests.support.oidc_provider import free_port, npm_oidc_provider

pytestmark = [
    pytest.mark.docker,
    pytest.mark.criu,
    pytest.mark.browser,
    pytest.mark.oidc,
    pytest.mark.slow,
    pytest.mark.timeout(420),
]

USER = "dana"


@dataclass
class RemapSite(CheckpointSite):
    @property
    def flags(self) -> dict:
        return {**super().flags, "userns_remap": "true"}


@pytest.fixture(scope="module")
def site(no_io_uring_in_containers):
    # dockerd refuses a data-root below a directory the remapped root cannot search, and
    # pytest's tmp dirs are 0700: a root of our own, passable, removed after
    root = Path(tempfile.mkdtemp(prefix="hub-e2e-uns-", dir="/tmp"))
    root.chmod(0o711)
    port = free_port()
    redirects = [f"http://{p}.localhost:{port}/_hub/oauth/callback" for p in ROUTES]
    client = {"client_id": "hub", "client_secret": CLIENT_SECRET, "redirect_uris": redirects}
    try:
        with npm_oidc_provider([client], groups={}) as issuer:
            base = new_site(root, issuer, "localhost", port)
            s = RemapSite(
                root=root,
                port=port,
                domain="localhost",
                labels=labels_file(
                    root / "hub.labels.yaml",
                    user="vscode",
                    extra=('rediacc.hub.checkpoint: "true"',),
                ),
                env=base.env,
            )
            s.start()
            try:
                yield s
            finally:
                s.stop()
                s.cleanup()  # destroys the user: daemon, data, rdh-ns account and id ranges
    finally:
        shutil.rmtree(root, ignore_errors=True)


def host_uids_of_ttyd(site) -> set[int]:
    """Host uids of the ttyd processes serving this site's user (found by their workspace)."""
    uids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdecimal():
            continue
        try:
            if (proc / "comm").read_text().strip() != "ttyd":
                continue
            status = (proc / "status").read_text()
        except OSError:
            continue
        uids.add(int(next(li for li in status.splitlines() if li.startswith("Uid:")).split()[1]))
    return uids


def test_a_uid_1000_terminal_survives_checkpoint_and_restore_under_userns_remap(
    site,
    chromium,
):
    context = chromium.new_context()
    page = context.new_page()
    sockets = []
    page.on("websocket", lambda ws: sockets.append(ws))
    login(page, site, "term", USER)
    page.wait_for_selector(".xterm-rows", timeout=120_000)
    type_and_read(
        page,
        "HUBVAR=kept$((6*7)); (i=0; while :; do i=$((i+1)); echo $i > /workspace/counter; "
        "sleep 0.5; done) & echo var=$HUBVAR uid=$(id -u)",
        "var=kept42 uid=1000",
    )
    rec = wait_state(site, USER, "running", timeout=10)
    ids = userns.id_range(rec["net_id"])
    assert ids.start + 1000 in host_uids_of_ttyd(site)  # the user's own host uid
    assert (site.root / "workspaces" / USER / "counter").stat().st_uid == ids.start + 1000

    # quiet: the culler checkpoints the environment (CRIU dumps uid-1000 processes here)
    wait_state(site, USER, "checkpointed", timeout=IDLE_TIMEOUT + 60)
    assert not daemon_running(site, USER)
    frozen = counter(site, USER)
    time.sleep(1.5)
    assert counter(site, USER) == frozen

    # back: a new tab restores it; the first terminal keeps its shell over the same WebSocket
    t0 = time.monotonic()
    other = context.new_page()
    goto(other, site.url("term"))
    other.wait_for_selector(".xterm-rows", timeout=120_000)
    resume = time.monotonic() - t0
    rec = wait_state(site, USER, "running", timeout=10)
    assert "processes restored with their memory" in rec["restored"]["detail"]
    type_and_read(page, "echo again=$HUBVAR as=$(id -u)", "again=kept42 as=1000", timeout=30_000)
    assert sockets and not sockets[0].is_closed()
    time.sleep(1.2)
    assert frozen < counter(site, USER) < frozen + 30
    print(f"resume of a uid-1000 terminal under --userns-remap (new tab): {resume:.2f} s")
    context.close()
