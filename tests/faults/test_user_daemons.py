"""A user's own processes killed under a running hub: their dockerd, their policy socket.

Each case checks what the user sees (their pages through the proxy, their docker socket), that
nothing is lost (workspace files, audit records) and that the next login works.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from hubcontrol import mounts, procs
from hubcontrol.policysocket.server import DAEMON_GONE_SECONDS, SOCKET_WATCH_SECONDS
from tests.faults.faultsite import FaultSite, dockerd_pid, policy_pid, poll
from tests.support import system_containerd
from tests.support.containers import run_output

pytestmark = [pytest.mark.docker, pytest.mark.criu, pytest.mark.oidc, pytest.mark.timeout(240)]


def env_socket(net_id: int) -> Path:
    return Path(f"/run/rediacc/hub/{net_id}/env/docker.sock")


def docker_ping(net_id: int) -> int | str:
    """What ``docker`` in the environment gets from its socket: the status of /_ping, or the
    name of the connection error."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        try:
            s.connect(str(env_socket(net_id)))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            head = s.recv(64).split(b" ")
        except OSError as e:
            return type(e).__name__
    return int(head[1]) if len(head) > 1 and head[1].isdigit() else repr(head)


def test_sigkill_of_the_users_dockerd(site: FaultSite):
    user = "dk"
    with site.login(user) as browser:
        (site.workspaces / user / "notes.txt").write_text("kept")
        net_id = site.record(user)["net_id"]
        assert docker_ping(net_id) == 200
        before = site.audit_events(user)
        daemon, policy = dockerd_pid(site, user), policy_pid(net_id)
        assert daemon and policy

        mark = site.log_mark()
        os.kill(daemon, signal.SIGKILL)
        # the hub notices and starts the environment again on a new daemon: the user's page
        # and their docker socket come back by themselves
        poll(lambda: dockerd_pid(site, user) not in (None, daemon), 30, why="no new dockerd")
        poll(lambda: docker_ping(net_id) == 200, 30, why="docker in the environment")
        assert "docker daemon died without the hub stopping it" in site.log_since(mark)
        r = poll(lambda: (r := site.page(browser, "/notes.txt")).status_code == 200 and r, 30)
        assert r.text == "kept"

    # the next login works and lands in the same environment
    with site.login(user) as browser:
        assert site.page(browser, "/notes.txt").text == "kept"
    after = site.audit_events(user)
    assert after[: len(before)] == before  # the records written before the crash are all there
    starts = [e for e in after[len(before) :] if e.get("action") == "start"]
    assert starts, "the audit stream did not come back with the daemon"


def test_sigkill_of_the_users_own_containerd_beside_a_system_containerd(
    site: FaultSite, fault_image: str
):
    """On a host with a system containerd, the user's dockerd uses a containerd the supervisor
    started for it (``supervisor.private_containerd``), which dockerd does not restart. When it
    dies the hub counts the daemon as dead: it starts the environment again on a new dockerd and
    containerd, and the new daemon runs containers."""
    import docker

    user = "ctrd"
    with system_containerd.running(), site.login(user) as browser:
        (site.workspaces / user / "notes.txt").write_text("kept")
        net_id = site.record(user)["net_id"]
        pidfile = Path(f"/run/rediacc/hub/{net_id}/containerd/containerd.pid")
        containerd, daemon = int(pidfile.read_text()), dockerd_pid(site, user)
        assert f"/run/rediacc/hub/{net_id}/containerd/" in " ".join(procs.cmdline(containerd))

        mark = site.log_mark()
        os.kill(containerd, signal.SIGKILL)
        poll(lambda: dockerd_pid(site, user) not in (None, daemon), 30, why="no new dockerd")
        poll(lambda: docker_ping(net_id) == 200, 30, why="docker in the environment")
        assert "the docker daemon's own containerd died" in site.log_since(mark)
        assert int(pidfile.read_text()) != containerd
        client = docker.DockerClient(
            base_url=f"unix:///run/rediacc/hub/{net_id}/docker.sock", version="1.41"
        )
        try:
            assert run_output(client, fault_image, ["echo", "ran"]) == b"ran\n"
        finally:
            client.close()
        r = poll(lambda: (r := site.page(browser, "/notes.txt")).status_code == 200 and r, 30)
        assert r.text == "kept"


def test_a_policy_socket_whose_daemon_is_gone_for_good_exits(site: FaultSite):
    """A daemon stopped behind the hub's back (here: SIGKILL, with the hub down so nothing
    starts it again): its policy socket exits and takes its socket file and view with it."""
    user = "gone"
    with site.login(user):
        net_id = site.record(user)["net_id"]
        (site.workspaces / user / "notes.txt").write_text("kept")
    site.stop()  # environments keep running without the hub
    try:
        os.kill(dockerd_pid(site, user), signal.SIGKILL)
        poll(
            lambda: policy_pid(net_id) is None,
            DAEMON_GONE_SECONDS + 3 * SOCKET_WATCH_SECONDS + 10,
            why="the policy socket outlived its daemon",
        )
        assert not env_socket(net_id).exists()
        assert mounts.mount_options(f"/run/rediacc/hub/{net_id}/workspace") is None
    finally:
        site.start()
    with site.login(user) as browser:  # the next login starts both again
        assert policy_pid(net_id) is not None and docker_ping(net_id) == 200
        assert site.page(browser, "/notes.txt").text == "kept"


def test_sigkill_of_the_users_policy_socket(site: FaultSite):
    user = "ps"
    with site.login(user) as browser:
        (site.workspaces / user / "notes.txt").write_text("kept")
        net_id = site.record(user)["net_id"]
        pid = policy_pid(net_id)
        mark = site.log_mark()
        os.kill(pid, signal.SIGKILL)
        # the page is served all along (the environment does not need its docker socket for
        # that); the hub starts the policy socket again, on the same daemon and environment
        r = site.page(browser, "/notes.txt")
        assert (r.status_code, r.text) == (200, "kept")
        daemon = dockerd_pid(site, user)
        poll(lambda: docker_ping(net_id) == 200, 30, why="docker in the environment")
        assert policy_pid(net_id) not in (None, pid)
        assert "the policy socket died; starting it again" in site.log_since(mark)
        assert dockerd_pid(site, user) == daemon

    with site.login(user) as browser:  # the next login works
        assert site.page(browser, "/notes.txt").text == "kept"
