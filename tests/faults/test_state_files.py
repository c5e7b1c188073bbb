"""Truncated or corrupt state files found by a starting hub: sessions, user records, checkpoint
records, network-ID claims (a full disk under an older version, a bad restore from backup, a
hand edit). The hub starts and keeps serving, says in its log which file was wrong and where
the copy of it is kept, and loses nothing else: other sessions, the users' environments and
workspaces. Each damaged file costs only what it alone held."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from hubcontrol.netids import DEFAULT_REGISTRY
from tests.faults.faultsite import FaultSite, dockerd_pid, processes

pytestmark = [pytest.mark.docker, pytest.mark.criu, pytest.mark.oidc, pytest.mark.timeout(240)]


def kept_copies(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.corrupt-*"))


def must_log_in(site: FaultSite, browser: httpx.Client) -> bool:
    """Whether the browser's session is gone: the hub sends it to the provider (which, still
    knowing the browser, may send it straight back)."""
    return site.went_to_provider(browser.get(site.url("code", "/notes.txt")))


def test_sessions_file_truncated_then_one_bad_row(site: FaultSite):
    a, b = "sessa", "sessb"
    with site.login(a) as alice, site.login(b) as bob:
        for user in (a, b):
            (site.workspaces / user / "notes.txt").write_text(user)
        started = site.container(a)["State"]["StartedAt"]
        sessions = site.state / "sessions.json"

        site.stop()
        text = sessions.read_text()
        sessions.write_text(text[: len(text) // 2])  # truncated
        mark = site.log_mark()
        site.start()
        log = site.log_since(mark)
        assert f"session store {sessions} is unreadable" in log and "kept as" in log, log
        assert kept_copies(sessions)[0].read_text() == text[: len(text) // 2]
        # users see the provider's login again, and land in the environment they had
        assert must_log_in(site, alice)
        site.sign_in(alice, a)
        assert site.page(alice, "/notes.txt").text == a
        assert site.container(a)["State"]["StartedAt"] == started
        site.sign_in(bob, b)

        # one bad row costs only that session
        site.stop()
        rows = json.loads(sessions.read_text())
        rows = [r if r["user"] == a else {"sid": 7, "user": None} for r in rows]
        sessions.write_text(json.dumps(rows))
        mark = site.log_mark()
        site.start()
        assert "1 unreadable session(s) skipped" in site.log_since(mark)
        assert not must_log_in(site, alice)
        assert site.page(alice, "/notes.txt").text == a
        assert must_log_in(site, bob)
        site.sign_in(bob, b)
        assert site.page(bob, "/notes.txt").text == b


def test_user_record_and_network_id_claim_corrupt(site: FaultSite, request):
    """The user's record is garbage and their network-ID claim truncated, with their daemon and
    environment running: their next start must give them the same network ID, daemon and
    environment (a new ID would start a second dockerd on the same data-root)."""
    user = "recbad"
    with site.login(user) as browser:
        (site.workspaces / user / "notes.txt").write_text("kept")
        rec = site.record(user)
        started = site.container(user)["State"]["StartedAt"]
        daemon = dockerd_pid(site, user)
        record = site.state / "users" / f"{user}.json"
        claim = DEFAULT_REGISTRY / str(rec["net_id"])

        site.stop()
        request.addfinalizer(lambda: record.exists() or record.write_text(json.dumps(rec)))
        record.write_bytes(b'\x00\x00{"name": "rec')
        claim.write_text(claim.read_text()[:12])
        mark = site.log_mark()
        site.start()
        log = site.log_since(mark)
        assert f"user record {record} is unreadable" in log and "kept as" in log, log
        assert kept_copies(record)

        # the user's next request: their environment, adopted as it was
        assert site.revisit(browser, "/notes.txt").text == "kept"
        assert site.record(user)["net_id"] == rec["net_id"]
        assert f"network-ID claim {claim} was unreadable" in site.log_since(mark)
        assert claim.read_text().strip() == str(site.workspaces / f"{user}-docker")
        assert dockerd_pid(site, user) == daemon
        data_root = str(site.workspaces / f"{user}-docker")
        assert len(processes(lambda a: a[0].endswith("dockerd") and data_root in " ".join(a))) == 1
        assert site.container(user)["State"]["StartedAt"] == started
    with site.login(user) as browser:
        assert site.page(browser, "/notes.txt").text == "kept"


def test_checkpoint_record_corrupt(site: FaultSite):
    user = "ckbad"
    with site.login(user) as browser:
        (site.workspaces / user / "notes.txt").write_text("kept")
        assert site.api().act(user, "checkpoint")["state"] == "checkpointed"
        health = site.state / "checkpoint" / f"{user}.json"

        site.stop()
        health.write_text('{"failures": 2, "checkpoint": "hub-')
        mark = site.log_mark()
        site.start()
        # the user comes back: a fresh environment on their workspace (what the record named
        # cannot be found), and the log says why
        assert site.revisit(browser, "/notes.txt").text == "kept"
        log = site.log_since(mark)
        assert f"checkpoint record {health} of {user} is unreadable" in log, log
        assert kept_copies(health)
        assert site.record(user)["state"] == "running"
    # checkpointing works again from a fresh record
    assert site.api().act(user, "checkpoint")["state"] == "checkpointed"
    with site.login(user) as browser:
        assert site.page(browser, "/notes.txt").text == "kept"
    assert "restored" in site.read_log().split(mark_text(user))[-1]


def mark_text(user: str) -> str:
    return f"{user}: checkpointed"
