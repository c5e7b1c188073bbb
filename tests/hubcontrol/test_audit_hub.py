"""The audit trail through the real Hub: per-user dockerd started by the LocalSupervisor, a user
working through the environment's docker socket (pull, push, run, rm), a daemon stop/start and a
hub restart in the middle of activity. Counts must stay exact and the hub's own work marked."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import tarfile
import time
from pathlib import Path

import docker
import pytest

from hubcontrol.embed import embedded
from tests.support.hubcore import host_test_image, make_config, unique_user

pytestmark = [pytest.mark.docker, pytest.mark.timeout(240)]

ACTIONS = ("create", "start", "die", "destroy")


def read(path: Path) -> list[dict]:
    data = path.read_bytes() if path.exists() else b""
    assert not data or data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


def wait_destroyed(path: Path, ids: list[str], timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        got = read(path)
        if {r["resource"] for r in got if r["action"] == "destroy"} >= set(ids):
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"records for {ids} never all arrived; last: {got[-3:]}")
        time.sleep(0.05)


def user_runs(sock: Path, image: str, n: int) -> list[str]:
    """What a user does in a terminal: ``docker run --rm image true``, ``n`` times."""
    client = docker.DockerClient(base_url=f"unix://{sock}", version="1.41", timeout=60)
    try:
        ids = []
        for _ in range(n):
            c = client.containers.run(image, "true", detach=True)
            c.wait()
            c.remove()
            ids.append(c.id)
        return ids
    finally:
        client.close()


def docker_cli_tar() -> bytes:
    """The host's docker CLI and the two files it needs from glibc, for a busybox environment."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for src, dst in (
            ("/usr/bin/docker", "usr/bin/docker"),
            ("/lib/x86_64-linux-gnu/libc.so.6", "lib/x86_64-linux-gnu/libc.so.6"),
            ("/lib64/ld-linux-x86-64.so.2", "lib64/ld-linux-x86-64.so.2"),
        ):
            tar.add(os.path.realpath(src), arcname=dst)
    return buf.getvalue()


class Terminal:
    """A user's shell in their environment: ``docker`` commands run inside the environment
    container against the socket the hub gives it (``DOCKER_HOST``), as in a web terminal."""

    def __init__(self, daemon_url: str, container_id: str) -> None:
        self.client = docker.DockerClient(base_url=daemon_url, version="1.41", timeout=120)
        self.container = self.client.containers.get(container_id)
        if self.container.exec_run(["test", "-x", "/usr/bin/docker"]).exit_code != 0:
            assert self.container.put_archive("/", docker_cli_tar())

    def docker(self, *args: str) -> str:
        code, out = self.container.exec_run(["docker", *args], user="root")
        assert code == 0, f"docker {' '.join(args)}: {out.decode(errors='replace')}"
        return out.decode().strip()

    def run_and_remove(self, image: str, name: str) -> str:
        """``docker create`` + ``docker start -a`` + ``docker rm``: returns the container ID."""
        cid = self.docker("create", "--name", name, image, "true")
        self.docker("start", "-a", name)
        self.docker("rm", name)
        return cid

    def close(self) -> None:
        self.client.close()


@pytest.mark.parametrize(
    "template_fields",
    [
        pytest.param({}, id="stop-start"),
        # root: this host's root lacks CAP_SYS_RESOURCE, so CRIU cannot dump other users' processes
        pytest.param(
            {"checkpoint": True, "user": "root"}, id="checkpoint-restore", marks=pytest.mark.criu
        ),
    ],
)
def test_audit_through_the_hub_across_daemon_restart_and_hub_restart(
    tmp_path,
    registry,
    template_fields,
):
    with host_test_image() as image:
        config = dataclasses.replace(
            make_config(tmp_path, image, **template_fields), audit_dir=tmp_path / "audit"
        )
        user = unique_user("aud")
        log = tmp_path / "audit" / f"{user}.log"
        ids: list[str] = []
        remote = f"{registry}/{user}/tool"
        try:
            with embedded(config, ready_timeout=20) as hub:
                if hub.hub.policy_sockets is not None:
                    # the socket policy refuses loopback registries unless the operator allows one
                    hub.hub.policy_sockets.allowed_registries = (registry,)
                env = hub.ensure_running(user)
                sock = hub.hub.daemon_spec(user).env_socket_path
                # in their terminal, the user pushes and pulls through a registry and runs
                # containers with the docker CLI
                term = Terminal(env.docker_url, env.container_id)
                term.docker("tag", image, f"{remote}:1")
                term.docker("push", f"{remote}:1")
                term.docker("rmi", f"{remote}:1")
                term.docker("pull", f"{remote}:1")
                ids += [term.run_and_remove(f"{remote}:1", f"job{i}") for i in range(2)]
                term.close()
                wait_destroyed(log, ids)
                # the daemon stops (idle; checkpointed where the template asks) and comes back
                # (restored): the stream is re-armed
                hub.stop(user)
                hub.ensure_running(user)
                if template_fields.get("checkpoint"):
                    assert hub.hub.record(user)["restored"]["checkpoint"]
                ids += user_runs(sock, image, 2)
                wait_destroyed(log, ids)
                ids += user_runs(sock, image, 1)  # the hub "crashes" right after this
            # hub down, environment and daemon still up, the user keeps working
            ids += user_runs(sock, image, 2)
            with embedded(config, ready_timeout=20) as hub:
                ids += user_runs(sock, image, 1)
                got = wait_destroyed(log, ids)
                time.sleep(0.5)  # a late duplicate would show up now
                got = read(log)
                hub.destroy(user, remove_data=True)
        finally:
            with contextlib.suppress(Exception), embedded(config) as hub:
                hub.destroy(user, remove_data=True)

    assert all(r["user"] == user and r["net_id"] == got[0]["net_id"] for r in got)
    mine = sorted((r["resource"], r["action"]) for r in got if r["resource"] in ids)
    assert mine == sorted((i, a) for i in ids for a in ACTIONS), "a gap or a duplicate"
    assert all("origin" not in r["attrs"] for r in got if r["resource"] in ids)
    jobs = [r for r in got if r["attrs"].get("name", "").startswith("job")]
    assert len(jobs) == 8 and all(r["attrs"]["image"] == f"{remote}:1" for r in jobs)
    user_images = [(r["action"], r["resource"]) for r in got if r["type"] == "image"]
    assert ("push", f"{remote}:1") in user_images and ("pull", f"{remote}:1") in user_images
    assert all(
        "origin" not in r["attrs"] for r in got if r["type"] == "image" and remote in r["resource"]
    )
    # the user's terminal ran its docker commands as execs in the environment: theirs, even in
    # the container the hub manages (no hooks in this template: no exec is the hub's)
    execs = [r for r in got if r["action"] in ("exec_start", "exec_die")]
    assert execs and all("origin" not in r["attrs"] for r in execs)
    # the hub's own work on the daemon: the environment container's lifecycle, the probe that
    # reads the image's users, and the template image transfer, all marked
    env = [r for r in got if r["type"] == "container" and r["resource"] not in ids]
    env = [r for r in env if r not in execs]
    assert env and all(r["attrs"].get("origin") == "hub" for r in env)
    env_actions = {r["action"] for r in env}
    assert {"create", "start"} <= env_actions
    assert ("checkpoint" if template_fields.get("checkpoint") else "stop") in env_actions
    transfer = [r for r in got if r["type"] == "image" and r["action"] in ("load", "import")]
    assert transfer and all(r["attrs"].get("origin") == "hub" for r in transfer)
    assert not [r for r in got if r["type"] == "audit"], "no gap expected"
