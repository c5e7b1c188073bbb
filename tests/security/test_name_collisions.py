"""Usernames an attacker picks to land on a path the hub owns, against a real hub.

The outside attack (issue 18): user ``alice-docker`` logged in after ``alice`` and was handed
``<workspace-dir>/alice-docker``, alice's data-root dir, as their ``/workspace``: alice's
``daemon.json``, containers and overlay diffs, writable, and a symlink planted there made root
overwrite a host file at alice's next start. Here the same users log in to a real hub (real
per-user dockerds, real policy sockets, an environment image with the docker CLI) and do what
the attacker did; and a hub that finds an older hub's overlap on disk refuses to start the
victim instead of guessing.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from hubcontrol.errors import StorageError
from hubcontrol.names import safe_name
from tests.security.policyhub import Env, policy_hub
from tests.support.hubcore import unique_user

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]


def _tree(path: Path) -> dict[str, tuple[int, int, int]]:
    """(uid, mode, size) of every entry below ``path``, links not followed."""
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = Path(root, name)
            st = p.lstat()
            out[str(p.relative_to(path))] = (st.st_uid, st.st_mode, st.st_size)
    return out


@pytest.fixture(scope="module")
def hub(tmp_path_factory, image):
    with policy_hub(tmp_path_factory.mktemp("hub"), image) as hub:
        yield hub, image


def test_victim_docker_gets_a_name_of_its_own_and_never_the_victims_daemon(hub):
    hub, img = hub
    victim = unique_user("alice")
    attacker = f"{victim}-docker"
    alice = Env(hub, victim)
    ws = hub.hub.config.workspace_dir
    data_root_dir = ws / f"{victim}-docker"
    daemon_json = data_root_dir / ".rediacc/docker/daemon.json"
    before = daemon_json.read_bytes()

    mallory = Env(hub, attacker)
    try:
        assert mallory.spec.user == safe_name(attacker) != attacker
        assert mallory.workspace == ws / safe_name(attacker)
        # the attacker's /workspace is their own empty tree, not alice's daemon files
        code, out = mallory.sh("ls -A /workspace; cat /workspace/.rediacc/docker/daemon.json")
        assert code != 0 and "data-root" not in out and "live-restore" not in out, out
        # alice's data-root dir is still root's, untouched, and in no environment's mounts
        st = data_root_dir.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (0, 0o711)
        assert not (data_root_dir / ".checkpoint").exists()
        assert daemon_json.read_bytes() == before
        for env in (alice, mallory):
            sources = [m["Source"] for m in env.container.attrs["Mounts"]]
            assert not any(s.startswith(str(data_root_dir)) for s in sources), sources
        # the socket policy binds nothing of it either, by any spelling
        for source in (
            f"/workspace/../{victim}-docker",
            f"{data_root_dir}",
            f"{data_root_dir}/.rediacc/docker",
        ):
            code, out = mallory.sh(f"docker run --rm -v {source}:/x {img} cat /x/daemon.json")
            assert code != 0 and "hub policy refused" in out and "live-restore" not in out, out
        # the victim's environment keeps working: restart it and it comes back on her daemon
        hub.stop(victim, checkpoint=False)
        again = hub.ensure_running(victim)
        assert again.net_id == alice.env.net_id
        assert daemon_json.exists() and not daemon_json.is_symlink()
    finally:
        alice.close()
        mallory.close()


def test_attacker_first_cannot_pre_create_the_victims_data_root(hub):
    hub, img = hub
    victim = unique_user("bob")
    ws = hub.hub.config.workspace_dir
    mallory = Env(hub, f"{victim}-docker")
    try:
        # the attacker prepares their workspace before the victim ever logs in
        code, out = mallory.sh(
            "mkdir -p /workspace/.rediacc/docker && echo planted > /workspace/.rediacc/docker/x"
        )
        assert code == 0, out
        bob = Env(hub, victim)
        try:
            data_root_dir = ws / f"{victim}-docker"
            assert data_root_dir != mallory.workspace
            assert data_root_dir.stat().st_uid == 0
            assert not (data_root_dir / ".rediacc/docker/x").exists()
            # bob's daemon does not see the attacker's plant, the attacker does not see bob's
            code, out = mallory.sh("ls -A /workspace/.rediacc/docker")
            assert out.split() == ["x"], out
            assert bob.spec.data_root == data_root_dir / ".rediacc/docker/data"
        finally:
            bob.close()
    finally:
        mallory.close()


def test_an_overlap_left_by_an_older_hub_is_refused_and_nothing_changes(hub):
    """What an older hub left on disk: ``carol-docker`` logged in after carol, so carol's
    data-root dir was that user's workspace (chowned, with their files and data-root beside)."""
    hub, _img = hub
    victim = unique_user("carol")
    ws = hub.hub.config.workspace_dir
    overlapped = ws / f"{victim}-docker"
    (overlapped / ".rediacc/docker").mkdir(parents=True)
    (overlapped / "notes.txt").write_text("the other user's file\n")
    os.chown(overlapped, 1000, 1000)
    (ws / f"{victim}-docker-docker").mkdir()
    (ws / f"{victim}-docker-docker/.networkid").write_text("32768\n")
    before = _tree(ws)
    try:
        with pytest.raises(StorageError) as info:
            hub.ensure_running(victim)
        error = info.value
        assert "administrator" in error.user_message
        assert str(overlapped) in error.log_message
        assert "owned by uid 1000" in error.log_message
        assert f"{victim}-docker-docker" in error.log_message
        assert "docs/operations.md" in error.log_message
        assert _tree(ws) == before  # nothing created, chowned or removed
        assert hub.hub.progress(victim).error
    finally:
        subprocess.run(["rm", "-rf", str(overlapped), str(ws / f"{victim}-docker-docker")])


def test_workspaces_are_out_of_reach_of_other_host_accounts(hub):
    hub, _img = hub
    user = unique_user("dave")
    dave = Env(hub, user)
    try:
        code, out = dave.sh("echo mine > /workspace/file")
        assert code == 0, out
        ws = hub.hub.config.workspace_dir
        st = ws.stat()
        assert (st.st_uid, st.st_mode & 0o7777) == (0, 0o700)
        for path in (dave.workspace, dave.workspace / "file", ws / f"{dave.spec.user}-docker"):
            probe = subprocess.run(
                ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "ls", str(path)],
                capture_output=True,
                text=True,
            )
            assert probe.returncode != 0 and "Permission denied" in probe.stderr, probe
        # the user record is written by root into its own 0700 state dir
        record = json.loads((hub.hub.users_dir / f"{dave.spec.user}.json").read_text())
        assert record["name"] == dave.spec.user
        assert (hub.hub.users_dir / f"{dave.spec.user}.json").stat().st_mode & 0o077 == 0
    finally:
        dave.close()


def test_links_planted_in_the_victims_tree_are_never_written_through(hub, tmp_path):
    """The rest of the attack: links at daemon.json, the daemon log, the network-ID marker and
    .checkpoint, planted while alice's daemon is stopped (as the attacker did through the
    overlapping workspace); alice's next start writes none of them through."""
    hub, _img = hub
    victim = unique_user("erin")
    erin = Env(hub, victim)
    erin.close()
    hub.stop(victim, checkpoint=False)
    host = tmp_path / "host"
    host.mkdir(mode=0o700)
    canary = host / "shadow"
    canary.write_text("root:secret\n")
    canary.chmod(0o600)
    (host / "dir").mkdir()
    spec = erin.spec
    root = hub.hub.config.workspace_dir / f"{spec.user}-docker"
    plants = [
        spec.config_file,
        spec.log,
        root / ".networkid",
        hub.hub.config.workspace_dir / spec.user / ".checkpoint",
    ]
    marker = (root / ".networkid").read_text()
    for path in plants:
        if path.exists() or path.is_symlink():
            os.replace(path, path.with_name(path.name + ".orig")) if path.is_file() else (
                subprocess.run(["rm", "-rf", str(path)], check=True)
            )
        path.symlink_to(host / "dir" if path.name == ".checkpoint" else canary)
    # the marker is read without following: restore its content beside the plant for the test
    (root / ".networkid").unlink()
    (root / ".networkid").write_text(marker)
    again = Env(hub, victim)
    try:
        assert canary.read_text() == "root:secret\n" and canary.stat().st_mode & 0o777 == 0o600
        assert list((host / "dir").iterdir()) == []
        assert again.env.net_id == erin.env.net_id
        assert not spec.config_file.is_symlink() and '"live-restore": true' in (
            spec.config_file.read_text()
        )
        assert not spec.log.is_symlink()
        code, out = again.sh("docker ps --format '{{.Names}}'")
        assert code == 0 and f"hub-{spec.user}" in out, out
    finally:
        again.close()
