"""One user cannot make their own daemon hold unbounded memory through the policy socket.

The outside test's attacks (issue 16: 400 creates with 900 KB labels took an unlimited dockerd
from 178 MB to 1.36 GB), run with docker-py and the real docker CLI through the real policy
socket process against a real scratch dockerd: each is refused with an error naming the limit and
how to stay under it, and the daemon does not grow. What the policy cannot see (images) is held by
the daemon's own cgroup allowance: tests/hubcontrol/test_supervisor.py.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
from pathlib import Path

import docker
import pytest

from hubcontrol import dockerpolicy
from tests.support.policysocket import policy_socket

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]
IMG = "hub-test/busybox:latest"
DAEMON_INDEX = 63  # its bridge hubt63, apart from the other modules' daemons


@pytest.fixture(scope="module")
def sock(busybox_daemon):
    with policy_socket(busybox_daemon) as s:
        yield s


@pytest.fixture
def user(sock, busybox_daemon):
    """docker-py as the user sees it: through the policy socket. Every container it leaves is
    removed afterwards (on the daemon's own socket)."""
    client = docker.DockerClient(base_url=sock.url, version="1.41", timeout=60)
    try:
        yield client
    finally:
        client.close()
        for c in busybox_daemon.api.containers.list(all=True):
            c.remove(force=True)


def docker_cli(sock, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["docker", *args], env=sock.env(), capture_output=True, text=True, timeout=60
    )


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) << 10
    raise AssertionError(f"no VmRSS for {pid}")


def test_creates_with_big_labels_are_refused_and_the_daemon_does_not_grow(
    busybox_daemon, sock, user
):
    before = rss(busybox_daemon.proc.pid)
    big = "x" * (900 << 10)
    for i in range(400):
        with pytest.raises(docker.errors.APIError) as info:
            user.api.create_container(IMG, ["true"], labels={"big": f"{big}{i:03d}"})
        assert info.value.status_code == 403
        assert "hub policy refused 900 KiB of labels on a container" in str(info.value)
    assert busybox_daemon.api.containers.list(all=True) == []
    assert rss(busybox_daemon.proc.pid) - before < 64 << 20  # unlimited, it grew by 1.2 GB


def test_the_cli_names_each_limit_and_how_to_stay_under_it(sock, user, tmp_path):
    labels = tmp_path / "labels"
    # (the CLI reads a label file by lines of at most 64 KiB)
    labels.write_text("".join(f"l{i:02d}=" + "x" * 5116 + "\n" for i in range(20)))
    r = docker_cli(sock, "create", "--label-file", str(labels), IMG, "true")
    assert r.returncode != 0
    assert (
        "Error response from daemon: hub policy refused 100 KiB of labels on a container: "
        "at most 64 KiB of labels (keys and values) per container"
    ) in r.stderr
    env = tmp_path / "env"
    env.write_text("".join(f"V{i}={'x' * 1000}\n" for i in range(100)))
    r = docker_cli(sock, "run", "--rm", "--env-file", str(env), IMG, "true")
    assert r.returncode != 0
    assert "hub policy refused an environment (Env) of 98 KiB for a container" in r.stderr
    assert "pass large values in a file in your workspace" in r.stderr
    r = docker_cli(sock, "create", "--name", "n" * 300, IMG, "true")
    assert "hub policy refused a container name of 300 characters: at most 255" in r.stderr
    # under every limit, the same command works
    labels.write_text("small=" + "x" * (10 << 10) + "\n")
    r = docker_cli(sock, "run", "--rm", "--label-file", str(labels), IMG, "true")
    assert r.returncode == 0, r.stderr


def test_the_container_count_is_capped_even_for_concurrent_creates(busybox_daemon, sock, user):
    cap = dockerpolicy.MAX_CONTAINERS
    for _ in range(cap - 10):
        user.api.create_container(IMG, ["true"])

    def create(_: int) -> str:
        try:
            user.api.create_container(IMG, ["true"])
            return "created"
        except docker.errors.APIError as e:
            return str(e)

    # 30 at once when 10 fit: a count and its create are one step in the policy socket
    with concurrent.futures.ThreadPoolExecutor(max_workers=30) as pool:
        results = list(pool.map(create, range(30)))
    assert results.count("created") == 10
    assert len(busybox_daemon.api.containers.list(all=True)) == cap
    refusals = [r for r in results if r != "created"]
    assert all(
        f"you have {cap} containers, the most one user may have ({cap})" in r for r in refusals
    )
    r = docker_cli(sock, "run", "--rm", IMG, "true")
    assert r.returncode != 0 and "docker container prune" in r.stderr
    # removing stopped containers makes room again
    r = docker_cli(sock, "container", "prune", "--force")
    assert r.returncode == 0, r.stderr
    r = docker_cli(sock, "run", "--rm", IMG, "true")
    assert r.returncode == 0, r.stderr
