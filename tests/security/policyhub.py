"""A Hub whose environments get the policy socket, and a user's environment reached the way the
user is (a shell inside it), shared by the tests in tests/security/."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import tarfile
import time

import docker
from anyio.from_thread import start_blocking_portal

from hubcontrol.embed import SyncHub
from hubcontrol.hub import Hub
from hubcontrol.names import safe_name
from tests.support.hubcore import make_config
from tests.support.images import busybox_rootfs_tar


@contextlib.contextmanager
def policy_hub(tmp_path, image, **template_fields):
    """A Hub whose environments get the policy socket, destroyed with all its users' data."""
    config = make_config(tmp_path, image, **template_fields)
    with start_blocking_portal() as portal:
        hub = portal.call(lambda: Hub(config, ready_timeout=30))
        assert hub.policy_sockets is not None  # the default: environments get the policy socket
        future, _ = portal.start_task(hub.run)
        sync = SyncHub(hub, portal)
        try:
            yield sync
        finally:
            for row in sync.status():
                with contextlib.suppress(Exception):
                    sync.destroy(row.user, remove_data=True)
            future.cancel()
            hub.engine.close()


def wait_for_socket(path, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(path))
                return
            except OSError:
                time.sleep(0.1)
    raise AssertionError(f"policy socket {path} never answered")


class Env:
    """A user's environment, reached the way the user is: a shell inside it."""

    def __init__(self, hub: SyncHub, user: str):
        self.user = user
        self.env = hub.ensure_running(user)
        self.spec = hub.hub.daemon_spec(safe_name(user))
        self.workspace = hub.hub.config.workspace_dir / self.spec.user
        wait_for_socket(self.spec.env_socket_path)
        self.client = docker.DockerClient(base_url=self.env.docker_url, version="1.41")
        self.container = self.client.containers.get(self.env.container_id)

    def sh(self, script: str) -> tuple[int, str]:
        result = self.container.exec_run(
            ["sh", "-c", script], user="vscode", environment={"DOCKER_CONFIG": "/tmp/.docker"}
        )
        return result.exit_code, result.output.decode(errors="replace")

    def containers(self) -> list[str]:
        return sorted(c.id for c in self.client.containers.list(all=True))

    def close(self):
        self.client.close()


DOCKER_CLI = "/usr/bin/docker"


# The CLI is dynamically linked against glibc only (checked with ldd on this image's host).
LIBS = ["/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"]


def cli_rootfs_tar() -> bytes:
    """The hub's test environment image plus the host's docker CLI and what it links against."""
    src = io.BytesIO(busybox_rootfs_tar())
    out = io.BytesIO()
    with tarfile.open(fileobj=src) as old, tarfile.open(fileobj=out, mode="w") as new:
        for member in old.getmembers():
            new.addfile(member, old.extractfile(member) if member.isfile() else None)
        for d in ("usr", "usr/bin", "lib", "lib/x86_64-linux-gnu", "lib64"):
            if d not in old.getnames():
                info = tarfile.TarInfo(d)
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                new.addfile(info)
        for path in [DOCKER_CLI, *LIBS]:
            new.add(os.path.realpath(path), arcname=path.lstrip("/"))  # files, not host symlinks
    return out.getvalue()
