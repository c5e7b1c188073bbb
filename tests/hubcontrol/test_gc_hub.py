"""GC against data-roots made by the real Hub (LocalSupervisor, real per-user dockerd): a user's
running daemon is kept, a stopped one is collected with everything its daemon left on the host,
and the user's next login works on a fresh data-root with the workspace intact."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from hubcontrol import gc, mounts, network
from hubcontrol.embed import embedded
from hubcontrol.gc import Action, HostProbe
from hubcontrol.netids import DEFAULT_REGISTRY
from tests.support.hubcore import host_test_image, make_config, unique_user

pytestmark = [pytest.mark.docker, pytest.mark.timeout(240)]
DAY = 86400.0


def test_gc_keeps_running_users_and_collects_stopped_ones(tmp_path: Path):
    user = unique_user("gc")
    ws = tmp_path / "workspaces"
    # The hub's own registry and exec-root: GC must agree with what the hub really writes.
    probe = HostProbe(claims_dir=DEFAULT_REGISTRY, unit_dirs=())
    env = None
    with (
        host_test_image() as image,
        embedded(make_config(tmp_path, image), ready_timeout=20) as hub,
    ):
        try:
            env = hub.ensure_running(user)
            root = ws / f"{user}-docker"
            (ws / user / "notes.txt").write_text("mine")

            plan = gc.plan_gc(ws, max_age=0, probe=probe)
            entry = next(e for e in plan.entries if e.path == root)
            assert entry.action is Action.KEEP and "dockerd pid" in entry.reason, entry.reason
            assert entry.net_id == env.net_id

            hub.stop(user)
            # just stopped: the daemon's start stamped the data-root, so it is young
            young = gc.plan_gc(ws, max_age=30 * DAY, probe=probe)
            assert next(e for e in young.entries if e.path == root).action is Action.KEEP

            done = gc.apply_gc(gc.plan_gc(ws, max_age=0, probe=probe), probe=probe)
            outcome = next(e for e in done.entries if e.path == root).outcome
            assert outcome.startswith("removed") and "claim released" in outcome, outcome
            assert not root.exists()
            assert not (DEFAULT_REGISTRY / str(env.net_id)).exists()
            assert not network.link_exists(f"rdh{env.net_id}")
            assert not mounts.mounts_under(root) and not mounts.mounts_under(
                Path(f"/run/rediacc/hub/{env.net_id}")
            )
            assert (ws / user / "notes.txt").read_text() == "mine"

            again = hub.ensure_running(user)  # the user comes back after GC
            assert (ws / f"{user}-docker" / ".networkid").exists()
            assert again.container_id != env.container_id
        finally:
            with contextlib.suppress(Exception):
                hub.destroy(user, remove_data=True)
    if env is not None:
        subprocess.run(["ip", "link", "del", f"rdh{env.net_id}"], capture_output=True)


def test_gc_keeps_a_running_environment_on_the_host_daemon(tmp_path: Path):
    """A template without a per-user daemon (``rediacc.hub.docker`` empty) runs on the host's
    daemon: no dockerd of its own, so GC must see the environment itself. An outside test found
    GC, with the hub stopped, removing such a data-root by the marker's age alone, releasing its
    network ID and deleting the running environment's bridges and isolation rules."""
    user = unique_user("gcs")
    ws = tmp_path / "workspaces"
    probe = HostProbe(claims_dir=DEFAULT_REGISTRY, unit_dirs=())
    with host_test_image() as image:
        config = make_config(tmp_path, image, docker="")
        with embedded(config, ready_timeout=20) as hub:
            try:
                env = hub.ensure_running(user)
                assert not env.per_user_docker
            except BaseException:
                with contextlib.suppress(Exception):
                    hub.destroy(user, remove_data=True)
                raise
        # the hub is gone; the environment keeps running on the host daemon
        root = ws / f"{user}-docker"
        try:
            marker = root / ".networkid"
            os.utime(marker, (0, 0))  # as old as can be
            done = gc.apply_gc(gc.plan_gc(ws, max_age=0, probe=probe), probe=probe)
            entry = next(e for e in done.entries if e.path == root)
            assert entry.action is Action.KEEP and "bridge" in entry.reason, entry.reason
            assert root.exists() and (DEFAULT_REGISTRY / str(env.net_id)).exists()
            assert network.link_exists(f"rdh{env.net_id}e") or network.link_exists(
                f"rdh{env.net_id}"
            )
        finally:
            with embedded(config, ready_timeout=20) as hub:
                with contextlib.suppress(Exception):
                    hub.destroy(user, remove_data=True)
