"""Per-user directories on a real loop-mounted BTRFS filesystem and on a plain one."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest

from hubcontrol import storage
from hubcontrol.embed import embedded
from tests.support.hubcore import host_test_image, make_config, unique_user


def test_user_paths_follow_the_seed():
    p = storage.UserPaths(Path("/w"), "alice")
    assert p.workspace == Path("/w/alice")
    assert p.checkpoints == Path("/w/alice/.checkpoint")
    assert p.data_root_dir == Path("/w/alice-docker")
    assert p.data_root == Path("/w/alice-docker/.rediacc/docker/data")
    assert p.daemon_config == Path("/w/alice-docker/.rediacc/docker/daemon.json")
    assert p.pidfile == Path("/w/alice-docker/.rediacc/docker/docker.pid")


def test_plain_directories_elsewhere(tmp_path):
    assert storage.filesystem_type(tmp_path / "not" / "yet") == storage.filesystem_type(tmp_path)
    root = tmp_path / "u-docker"
    assert storage.ensure_data_root_dir(root) is False
    assert root.is_dir() and not storage.is_subvolume(root)
    (root / "f").write_text("x")
    storage.remove_tree(root)
    assert not root.exists()


@contextlib.contextmanager
def btrfs_mount(tmp_path: Path):
    """A 256 MiB BTRFS image, loop-mounted; unmounted and deleted afterwards."""
    image, mnt = tmp_path / "btrfs.img", tmp_path / "btrfs"
    subprocess.run(["truncate", "-s", "256M", str(image)], check=True)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True, capture_output=True)
    try:
        yield mnt
    finally:
        storage.unmount_under(mnt / "workspaces")
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        image.unlink(missing_ok=True)


@pytest.mark.docker
def test_data_root_is_a_subvolume_on_btrfs(tmp_path):
    with btrfs_mount(tmp_path) as mnt:
        assert storage.filesystem_type(mnt) == "btrfs"
        root = mnt / "workspaces" / "alice-docker"
        assert storage.ensure_data_root_dir(root) is True
        assert storage.is_subvolume(root)
        assert storage.ensure_data_root_dir(root) is True  # idempotent
        listing = subprocess.run(
            ["btrfs", "subvolume", "list", str(mnt)], capture_output=True, text=True
        ).stdout
        assert "workspaces/alice-docker" in listing
        (root / ".rediacc").mkdir()
        storage.remove_tree(root)
        assert not root.exists()
        listing = subprocess.run(
            ["btrfs", "subvolume", "list", str(mnt)], capture_output=True, text=True
        ).stdout
        assert "alice-docker" not in listing


@pytest.mark.docker
def test_a_user_daemon_on_btrfs_runs_in_its_subvolume(tmp_path):
    user = unique_user("bt")
    with btrfs_mount(tmp_path) as mnt, host_test_image() as ref:
        config = make_config(mnt, ref)
        with embedded(config, ready_timeout=20) as hub:
            try:
                env = hub.ensure_running(user)
                assert env.state == "running"
                assert storage.is_subvolume(mnt / "workspaces" / f"{user}-docker")
                assert hub.hub.record(user)["subvolume"] is True
            finally:
                hub.destroy(user, remove_data=True)
        assert not (mnt / "workspaces" / f"{user}-docker").exists()
