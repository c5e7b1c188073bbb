"""``hub gc`` (the daily timer) against a real hub's users: it never touches a live
environment, on a per-user daemon or on the host's daemon, with the hub running or stopped;
and it releases the network ID, bridges and rules of a user whose data-root and workspace were
removed by hand."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from hubcontrol import network
from hubcontrol.netids import DEFAULT_REGISTRY
from tests.faults.faultsite import FaultSite

pytestmark = [pytest.mark.docker, pytest.mark.criu, pytest.mark.oidc, pytest.mark.timeout(240)]


def gc_entries(site: FaultSite, *args: str) -> tuple[int, list[dict]]:
    done = site.gc("--max-age=0s", *args)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)["entries"]


def rules_of(net_id: int) -> int:
    out = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    return out.count(f'"rdh:{net_id}"')


def test_gc_never_touches_a_live_environment_with_the_hub_stopped(site: FaultSite):
    """Both placements, every data-root as old as can be, the hub killed: all kept."""
    users = {"gclive": None, "gchost": "host"}
    browsers = {}
    for user, template in users.items():
        browsers[user] = site.browser()
        site.sign_in(browsers[user], user, template=template)
        (site.workspaces / user / "notes.txt").write_text(user)
    try:
        ids = {u: site.record(u)["net_id"] for u in users}
        assert site.record("gchost")["per_user_docker"] is False
        rules = {u: rules_of(i) for u, i in ids.items()}
        site.kill()
        for user in users:
            root = site.workspaces / f"{user}-docker"
            for path in (root / ".networkid", root):
                subprocess.run(["touch", "-h", "-d", "@0", str(path)], check=True)

        code, entries = gc_entries(site)
        assert code == 0
        for user, net_id in ids.items():
            entry = next(e for e in entries if e["path"].endswith(f"/{user}-docker"))
            assert entry["action"] == "keep", entry
            assert (DEFAULT_REGISTRY / str(net_id)).exists()
            assert (site.workspaces / user / "notes.txt").read_text() == user
            assert rules_of(net_id) == rules[user] > 0
            assert network.link_exists(f"rdh{net_id}e") or network.link_exists(f"rdh{net_id}")
        host_reason = next(e for e in entries if e["path"].endswith("/gchost-docker"))["reason"]
        assert "bridge" in host_reason, host_reason  # seen by its container's interface

        site.start()
        for user in users:  # still served, same session
            assert site.revisit(browsers[user], "/notes.txt").text == user
    finally:
        for b in browsers.values():
            b.close()


def test_gc_releases_the_network_id_of_a_user_removed_by_hand(site: FaultSite):
    user = "gcgone"
    with site.login(user):
        net_id = site.record(user)["net_id"]
    assert site.api().act(user, "stop")["state"] == "stopped"
    # the operator removes the user's trees by hand; claim, bridges and rules stay behind
    subprocess.run(
        ["rm", "-rf", str(site.workspaces / user), str(site.workspaces / f"{user}-docker")],
        check=True,
    )
    assert (DEFAULT_REGISTRY / str(net_id)).exists()

    code, entries = gc_entries(site)
    entry = next(e for e in entries if e["kind"] == "claim" and e["net_id"] == net_id)
    assert entry["action"] == "remove" and entry["outcome"].startswith("removed"), entry
    assert code == 0
    assert not (DEFAULT_REGISTRY / str(net_id)).exists()
    assert not network.link_exists(f"rdh{net_id}") and not network.link_exists(f"rdh{net_id}e")
    assert rules_of(net_id) == 0

    with site.login(user) as browser:  # the user comes back to a fresh tree
        (site.workspaces / user / "notes.txt").write_text("fresh")
        assert site.page(browser, "/notes.txt").text == "fresh"


def test_gc_of_a_stale_data_root_leaves_the_exec_root_of_the_ids_owner(tmp_path):
    """Two data-roots name one network ID (a copy, or an ID handed on after its claim was
    released); the claim says whose it is. Removing the other one must not remove the owner's
    exec-root (its daemon's sockets, pins and state), as it must not its bridges and rules."""
    from hubcontrol import gc

    ws, exec_base, claims = tmp_path / "ws", tmp_path / "run", tmp_path / "netids"
    net_id = 40000
    for user in ("owner", "stale"):
        root = ws / f"{user}-docker"
        (root / ".rediacc/docker/data").mkdir(parents=True)
        (root / ".networkid").write_text(f"{net_id}\n")
    claims.mkdir()
    (claims / str(net_id)).write_text(f"{ws / 'owner-docker'}\n")
    (exec_base / str(net_id)).mkdir(parents=True)
    (exec_base / str(net_id) / "policy.pid").write_text("1\n")
    probe = gc.HostProbe(
        exec_base=exec_base,
        claims_dir=claims,
        unit_dirs=(),
        host_cleanup=False,
        sys_net=tmp_path / "sysnet",
        runtime_unit_dirs=(),
        systemctl=None,
    )
    for path in (ws / "stale-docker" / ".networkid", ws / "stale-docker" / ".rediacc/docker/data"):
        os.utime(path, (0, 0))
    plan = gc.plan_gc(ws, max_age=30 * 86400, probe=probe)
    done = gc.apply_gc(plan, probe=probe)
    outcome = next(e for e in done.entries if e.path == ws / "stale-docker").outcome
    assert outcome.startswith("removed") and "claim released" not in outcome, outcome
    assert not (ws / "stale-docker").exists()
    assert (exec_base / str(net_id) / "policy.pid").exists()
    assert (claims / str(net_id)).read_text().strip() == str(ws / "owner-docker")
