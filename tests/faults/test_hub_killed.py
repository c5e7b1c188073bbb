"""SIGKILL of the hub process (a crash, an OOM kill) in the middle of a user's start, of a
checkpoint dump and of a restore. Nothing of the hub runs its cleanup; the user's daemon, CRIU
and the environment carry on without it. After ``hub start`` (systemd's ``Restart=on-failure``)
the user's browser, with the session it had, gets their environment and their files back."""

from __future__ import annotations

import contextlib
import threading

import pytest

from hubcli.hubclient import HubClientError
from tests.faults.faultsite import FaultSite, dockerd_pid, poll

pytestmark = [pytest.mark.docker, pytest.mark.criu, pytest.mark.oidc, pytest.mark.timeout(240)]


def same_session_sees(site: FaultSite, browser, path: str, text: str) -> None:
    """The browser's existing session (no new login) reaches the environment again and sees
    ``text`` at ``path``."""
    r = site.revisit(browser, path)
    assert (r.status_code, r.text) == (200, text), r.text[:300]


def in_background(fn) -> threading.Thread:
    """Run ``fn`` in a thread, ignoring the error a hub killed under it gives."""

    def run():
        with contextlib.suppress(HubClientError, OSError):
            fn()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_killed_during_a_spawn(site: FaultSite):
    user = "kspawn"
    (site.workspaces / user).mkdir(parents=True)
    (site.workspaces / user / "notes.txt").write_text("kept")
    with site.browser() as browser:
        site.sign_in(browser, user, wait=False)  # the start runs now
        poll(lambda: dockerd_pid(site, user), 30, 0.01, "the user's dockerd never started")
        site.kill()  # the daemon is starting; no container yet
        assert site.record(user).get("state") == "starting"

        site.start()
        same_session_sees(site, browser, "/notes.txt", "kept")
    assert site.record(user)["state"] == "running"
    with site.login(user) as browser:  # the next login
        assert site.page(browser, "/notes.txt").text == "kept"
    actions = [(e["type"], e["action"]) for e in site.audit_events(user)]
    assert ("container", "start") in actions


def test_killed_during_a_checkpoint_dump(site: FaultSite):
    user = "kdump"
    with site.login(user) as browser:
        (site.workspaces / user / "notes.txt").write_text("kept")
        # 64 MB in the container's /dev/shm: CRIU copies it, so the dump takes a moment
        with site.daemon(user) as client:
            client.api.exec_start(
                client.api.exec_create(
                    f"hub-{user}", ["dd", "if=/dev/zero", "of=/dev/shm/x", "bs=1M", "count=64"]
                )
            )
        in_background(lambda: site.api().act(user, "checkpoint"))
        # the checkpointer pauses the container for the dump: kill the hub right then
        poll(lambda: site.container(user)["State"]["Paused"], 60, 0.01, "never paused")
        site.kill()

        site.start()
        same_session_sees(site, browser, "/notes.txt", "kept")
    state = site.container(user)["State"]
    assert state["Running"] and not state["Paused"]
    assert site.record(user)["state"] == "running"
    with site.login(user) as browser:
        assert site.page(browser, "/notes.txt").text == "kept"
    # the interrupted dump is no strike against the user's checkpointing, which still works
    assert site.api().act(user, "checkpoint")["state"] == "checkpointed"
    with site.login(user) as browser:  # and restores
        assert site.page(browser, "/notes.txt").text == "kept"


def test_killed_during_a_restore(site: FaultSite):
    user = "krest"
    with site.login(user) as browser:
        (site.workspaces / user / "notes.txt").write_text("kept")
        assert site.api().act(user, "checkpoint")["state"] == "checkpointed"
        # the user comes back: their request starts the restore
        in_background(lambda: browser.get(site.url("code", "/notes.txt")))
        poll(lambda: site.record(user).get("state") == "restoring", 60, 0.01, "no restore")
        site.kill()

        site.start()
        same_session_sees(site, browser, "/notes.txt", "kept")
    assert site.record(user)["state"] == "running"
    with site.login(user) as browser:
        assert site.page(browser, "/notes.txt").text == "kept"
