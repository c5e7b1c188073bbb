"""Root never follows a link planted at a path it writes on a user's behalf (issue 18, item 2).

Each test plants a symlink (or a FIFO, or a user-owned directory) where the hub writes, runs the
hub's real code for that path on a real filesystem, and checks that a canary outside the user's
tree is untouched and that what the hub wrote is a regular file or a root-owned directory.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from hubcontrol import checkpoint, gc, netids, safefs, storage
from hubcontrol.errors import StorageError
from hubcontrol.supervisor import DaemonSpec, log_tail, prepare_daemon_dirs, write_daemon_config


@pytest.fixture
def canary(tmp_path):
    """A root-only "host" file and directory an attacker would like root to overwrite."""
    host = tmp_path / "host"
    host.mkdir()
    secret = host / "shadow"
    secret.write_text("root:secret\n")
    secret.chmod(0o600)
    (host / "keep").mkdir()
    (host / "keep" / "data").write_text("keep me\n")
    before = {p: p.read_bytes() for p in host.rglob("*") if p.is_file()}
    yield host
    after = {p: p.read_bytes() for p in host.rglob("*") if p.is_file()}
    assert after == before, "root wrote through a planted link"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600


@pytest.fixture
def paths(tmp_path):
    ws = tmp_path / "workspaces"
    return storage.UserPaths(ws, "alice")


def _spec(paths: storage.UserPaths) -> DaemonSpec:
    return DaemonSpec(
        user=paths.user,
        net_id=32768,
        data_root=paths.data_root,
        daemon_dir=paths.daemon_dir,
        run_dir=paths.workspace_dir.parent / "run",
    )


def test_write_atomic_replaces_a_planted_link(tmp_path, canary):
    target = tmp_path / "daemon.json"
    target.symlink_to(canary / "shadow")
    safefs.write_atomic(target, '{"ok": true}\n', mode=0o600)
    assert not target.is_symlink() and json.loads(target.read_text()) == {"ok": True}
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_write_new_makes_a_file_once_and_never_writes_through_a_link(tmp_path, canary):
    made = tmp_path / "admin.token"
    assert safefs.write_new(made, "first\n", mode=0o600)
    assert not safefs.write_new(made, "second\n")  # there already: left as it is
    assert made.read_text() == "first\n" and stat.S_IMODE(made.stat().st_mode) == 0o600
    planted = tmp_path / "session.secret"
    planted.symlink_to(canary / "shadow")
    assert not safefs.write_new(planted, "x" * 64)  # a link is "there": not followed
    dangling = tmp_path / "other.secret"
    dangling.symlink_to(canary / "missing")
    assert not safefs.write_new(dangling, "x" * 64) and not (canary / "missing").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "admin.token", "host", "other.secret", "session.secret",
    ]  # fmt: skip


def test_write_atomic_below_a_base_refuses_a_linked_directory(tmp_path, canary):
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "dir").symlink_to(canary / "keep")
    with pytest.raises(safefs.UnsafePathError):
        safefs.write_atomic(tmp_path / "u/dir/data", "x", base=tmp_path)


@pytest.mark.parametrize("kind", ["link", "fifo", "dir"])
def test_open_file_refuses_what_is_not_a_regular_file(tmp_path, canary, kind):
    path = tmp_path / "dockerd.log"
    if kind == "link":
        path.symlink_to(canary / "shadow")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    # (a FIFO with no reader would block a plain open: this returns at once)
    with pytest.raises(OSError):
        safefs.open_file(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)


def test_ensure_dir_gives_a_user_made_directory_back_to_root_and_refuses_links(tmp_path, canary):
    (tmp_path / "a").mkdir()
    os.chown(tmp_path / "a", 1000, 1000)
    (tmp_path / "a").chmod(0o777)
    safefs.ensure_dir(tmp_path, "a", mode=0o700)
    st = (tmp_path / "a").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o700)
    (tmp_path / "b").symlink_to(canary / "keep")
    with pytest.raises(safefs.UnsafePathError):
        safefs.ensure_dir(tmp_path, "b/inner", mode=0o700)
    assert not (canary / "keep" / "inner").exists()


@pytest.mark.parametrize("plant", [".rediacc", ".rediacc/docker", ".rediacc/docker/data"])
def test_prepare_user_tree_never_follows_a_link_in_the_daemon_tree(paths, canary, plant):
    storage.prepare_user_tree(paths)
    target = paths.data_root_dir / plant
    os.rename(target, target.with_name(target.name + ".moved"))
    target.symlink_to(canary / "keep")
    with pytest.raises(StorageError):
        storage.prepare_user_tree(paths)
    assert sorted(p.name for p in (canary / "keep").iterdir()) == ["data"]


def test_prepare_user_tree_makes_the_workspace_dir_root_only(paths):
    paths.workspace_dir.mkdir(mode=0o755)
    storage.prepare_user_tree(paths)
    st = paths.workspace_dir.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o700)
    assert paths.workspace.is_dir() and paths.data_root.is_dir() and paths.tmpdir.is_dir()
    for d in (paths.data_root_dir / ".rediacc", paths.daemon_dir, paths.tmpdir):
        assert d.stat().st_uid == 0 and stat.S_IMODE(d.stat().st_mode) == 0o700, d


@pytest.mark.parametrize("name", ["daemon.json", "dockerd.log", "docker.pid"])
def test_daemon_files_planted_as_links_are_replaced_not_followed(paths, canary, name):
    storage.prepare_user_tree(paths)
    spec = _spec(paths)
    (paths.daemon_dir / name).symlink_to(canary / "shadow")
    prepare_daemon_dirs(spec)
    write_daemon_config(spec, {"live-restore": True})
    if name == "daemon.json":
        assert json.loads(spec.config_file.read_text()) == {"live-restore": True}
        assert not spec.config_file.is_symlink()
    # the log is read into error messages users see: a link to a host file shows nothing
    assert "secret" not in log_tail(paths.daemon_dir / name)


def test_the_network_id_marker_is_never_read_or_written_through_a_link(paths, canary):
    storage.prepare_user_tree(paths)
    marker = paths.data_root_dir / netids.MARKER
    (canary / "id").write_text("32832\n")
    marker.symlink_to(canary / "id")
    assert netids.read_marker(paths.data_root_dir) is None
    netids.write_marker(paths.data_root_dir, 32768)
    assert not marker.is_symlink() and netids.read_marker(paths.data_root_dir) == 32768
    assert (canary / "id").read_text() == "32832\n"
    (canary / "id").unlink()


def test_a_planted_checkpoint_link_is_replaced_by_a_root_only_directory(paths, canary):
    paths.workspace_dir.mkdir(mode=0o700)
    paths.workspace.mkdir()
    paths.checkpoints.symlink_to(canary / "keep")
    # removal of images never follows it...
    assert checkpoint._remove_images(paths.checkpoints, keep=None) == []
    # ...and the next checkpoint's directory replaces it with root's own
    with storage.checkpoint_dir(paths) as fd:
        st = os.fstat(fd)
    assert not paths.checkpoints.is_symlink()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o700)


def test_a_user_made_checkpoint_dir_becomes_roots(paths):
    paths.workspace_dir.mkdir(mode=0o700)
    paths.workspace.mkdir()
    paths.checkpoints.mkdir(mode=0o777)
    os.chown(paths.checkpoints, 1000, 1000)
    (paths.checkpoints / "img").mkdir()
    (paths.checkpoints / "img" / "x").symlink_to("/etc/passwd")
    assert checkpoint._remove_images(paths.checkpoints, keep=None) == ["img"]
    st = paths.checkpoints.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o700)
    assert Path("/etc/passwd").exists()


def test_checkpoint_links_in_the_data_root_are_made_without_following(paths, canary):
    storage.prepare_user_tree(paths)
    container = paths.data_root / "containers" / "c1"
    container.mkdir(parents=True)
    (container / "checkpoints").symlink_to(canary / "keep")
    checkpoint.CriuCheckpointer._link_checkpoints(paths.data_root, "c1", paths.checkpoints)
    assert os.readlink(container / "checkpoints") == str(paths.checkpoints)
    (paths.data_root / "containers" / "c2").symlink_to(canary / "keep")
    with pytest.raises(safefs.UnsafePathError):
        checkpoint.CriuCheckpointer._link_checkpoints(paths.data_root, "c2", paths.checkpoints)
    assert not (canary / "keep" / "checkpoints").exists()


def test_fingerprints_are_never_written_or_read_through_a_link(paths, canary):
    paths.workspace_dir.mkdir(mode=0o700)
    paths.workspace.mkdir()
    with storage.checkpoint_dir(paths):
        pass
    images = paths.checkpoints / "hub-1"
    images.mkdir()
    (images / checkpoint.FINGERPRINT_FILE).symlink_to(canary / "shadow")
    with pytest.raises(OSError):
        checkpoint._read_fingerprint(images, "c1")
    checkpoint._write_fingerprint(images, "c1", {})
    assert checkpoint._read_fingerprint(images, "c1") == {}


def test_remove_tree_removes_a_link_not_its_target(tmp_path, canary):
    link = tmp_path / "alice-docker"
    link.symlink_to(canary / "keep")
    storage.remove_tree(link)
    assert not os.path.lexists(link)


def test_gc_refuses_a_data_root_left_by_a_name_older_hubs_allowed(tmp_path):
    """``alice-docker-docker``: the data-root of user ``alice-docker``, whose workspace was
    alice's data-root dir; GC keeps both for the operator, and never walks alice's
    data-root dir as a workspace."""
    ws = tmp_path / "ws"
    for name, net_id in (("alice-docker", 32768), ("alice-docker-docker", 32832)):
        (ws / name).mkdir(parents=True)
        (ws / name / netids.MARKER).write_text(f"{net_id}\n")
        os.utime(ws / name / netids.MARKER, (0, 0))
    (ws / "alice-docker" / ".checkpoint" / "hub-1").mkdir(parents=True)
    probe = gc.HostProbe(claims_dir=tmp_path / "claims", sys_net=tmp_path / "sysnet")
    plan = gc.plan_gc(ws, max_age=0, probe=probe)
    by_path = {e.path.name: e for e in plan.entries}
    assert by_path["alice-docker-docker"].action is gc.Action.REFUSE
    assert "older hubs" in by_path["alice-docker-docker"].reason
    assert by_path["alice-docker"].action is gc.Action.REFUSE
    assert "workspace" in by_path["alice-docker"].reason
    assert "hub-1" not in by_path
