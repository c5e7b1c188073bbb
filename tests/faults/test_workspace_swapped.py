"""A workspace swapped under a running environment while the hub is down.

An operator (or ``renet``) removes a user's workspace and makes it again, or unmounts the
filesystem under it and mounts one again, while the hub is stopped and the user's environment
and policy socket run on. The path is the same; the directory is not. On adoption the hub
compares by device and inode: the environment is restarted onto the current directory, so the
user sees their real files through the proxy and ``docker run -v /workspace/sub:/x`` works; an
environment that still shows the current directory is left running.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import docker
import pytest

from hubcontrol import mounts
from tests.faults.faultsite import FaultSite
from tests.support.containers import run_output

pytestmark = [pytest.mark.docker, pytest.mark.criu, pytest.mark.oidc, pytest.mark.timeout(240)]


def docker_run_bind(site: FaultSite, user: str, image: str) -> str:
    """``docker run --rm -v /workspace/sub:/x <image> cat /x/f`` from inside the environment:
    through the user's policy socket, which maps /workspace to the host."""
    net_id = site.record(user)["net_id"]
    client = docker.DockerClient(
        base_url=f"unix:///run/rediacc/hub/{net_id}/env/docker.sock", version="1.41", timeout=60
    )
    try:
        out = run_output(client, image, ["cat", "/x/f"], volumes={"/workspace/sub": {"bind": "/x"}})
    finally:
        client.close()
    return out.decode()


def started_at(site: FaultSite, user: str) -> str:
    return site.container(user)["State"]["StartedAt"]


def umount_lazily(path: Path) -> None:
    """Detach every mount at ``path`` (the hub's inert self-mount, a filesystem), as an
    unmount under running processes does."""
    while mounts.mount_options(str(path)) is not None:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_workspace_removed_and_made_again(site: FaultSite, fault_image: str):
    user = "wsnew"
    ws = site.workspaces / user
    with site.login(user) as browser:
        (ws / "sub").mkdir()
        (ws / "sub" / "f").write_text("old")
        assert docker_run_bind(site, user, fault_image) == "old"

        # a plain hub restart: the environment shows the current directory and keeps running
        before = started_at(site, user)
        site.restart()
        assert started_at(site, user) == before

        site.stop()
        umount_lazily(ws)
        ws.rename(ws.with_name(f"{user}.old"))  # removed (the old one still open in the env)
        (ws / "sub").mkdir(parents=True)
        (ws / "sub" / "f").write_text("new")  # and made again, e.g. restored from a backup
        subprocess.run(["rm", "-rf", str(ws.with_name(f"{user}.old"))], check=True)
        mark = site.log_mark()
        site.start()

        assert "restarting it onto the current directory" in site.log_since(mark)
        assert started_at(site, user) != before
        # what the user sees: the real files, in the page and in a bind mount
        r = site.page(browser, "/sub/f")
        assert (r.status_code, r.text) == (200, "new")
        assert docker_run_bind(site, user, fault_image) == "new"
        # the new directory is inert like the old one was
        assert {"nosuid", "nodev"} <= mounts.mount_options(str(ws))

    with site.login(user) as browser:  # the next login
        assert site.page(browser, "/sub/f").text == "new"


def test_workspace_filesystem_unmounted_and_mounted_again(site: FaultSite, fault_image: str):
    """The workspace is a filesystem of its own (a tmpfs here); it is unmounted under the
    running environment and a new one (restored files) mounted at the same path."""
    user = "wsmnt"
    ws = site.workspaces / user
    ws.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(ws)], check=True)
    try:
        with site.login(user) as browser:
            (ws / "sub").mkdir()
            (ws / "sub" / "f").write_text("first mount")
            assert site.page(browser, "/sub/f").text == "first mount"

            site.stop()
            umount_lazily(ws)
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(ws)], check=True)
            (ws / "sub").mkdir()
            (ws / "sub" / "f").write_text("second mount")
            site.start()

            r = site.page(browser, "/sub/f")
            assert (r.status_code, r.text) == (200, "second mount")
            assert docker_run_bind(site, user, fault_image) == "second mount"
    finally:
        # stopped (which releases the hub's inert mount), then the test's filesystem goes; the
        # module's cleanup destroys the user
        site.api().act(user, "stop")
        umount_lazily(ws)


@pytest.mark.parametrize(
    ("case", "expected"),
    [("same", True), ("made anew", False), ("no such bind", None), ("no process", None)],
)
def test_shows_workspace_compares_device_and_inode(tmp_path, case, expected):
    """The decision on its own: this test process stands for the container (its root is /)."""
    from hubcontrol.environment import shows_workspace

    ws = tmp_path / "ws"
    ws.mkdir()
    seen = tmp_path / "seen"  # what the container's bind shows
    if case == "same":
        seen = ws
    else:
        seen.mkdir()
    info = {
        "State": {"Pid": 0 if case == "no process" else os.getpid()},
        "Mounts": [
            {
                "Type": "bind",
                "Source": str(tmp_path / "elsewhere" if case == "no such bind" else ws),
                "Destination": str(seen),
            }
        ],
    }
    assert shows_workspace(info, ws) is expected
