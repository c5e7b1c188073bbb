"""Shared helpers for the Hub core's integration tests: a test image and a Hub config.

The image is busybox-static (tests/support/images.py), with ``sh`` and no bash, so templates'
commands and hooks run with ``/bin/sh`` (hubcontrol.shells); it is imported into the HOST daemon
under a tag unique to this test run, and the Hub transfers it into each per-user daemon the way
production does.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker

from hubcontrol.config import HubConfig, Template
from hubcontrol.embed import embedded
from tests.support.images import busybox_rootfs_tar

HOST_SOCKET = "/var/run/docker.sock"
# Two route ports served by busybox httpd on SERVICE_IP; httpd without -f daemonizes.
COMMAND = "httpd -p __SERVICE_IP__:8080 -h ${HOME:-/} && exec httpd -f -p ${SERVICE_IP}:7681 -h /"
ROUTES = {"code": 8080, "term": 7681}


@contextlib.contextmanager
def host_test_image(
    repository: str = "hub-test/hubcore",
    rootfs: Callable[[], bytes] = busybox_rootfs_tar,
    timeout: int = 120,
) -> Iterator[str]:
    """Import ``rootfs()`` (the busybox test image by default) into the host daemon under a tag
    of this run; yields its reference, removes it after."""
    client = docker.DockerClient(base_url=f"unix://{HOST_SOCKET}", version="1.41", timeout=timeout)
    tag = f"t{os.getpid()}-{uuid.uuid4().hex[:6]}"
    client.api.import_image_from_data(rootfs(), repository=repository, tag=tag)
    ref = f"{repository}:{tag}"
    try:
        yield ref
    finally:
        with contextlib.suppress(docker.errors.DockerException):
            client.images.remove(ref, force=True)
        client.close()


def make_config(tmp: Path, image: str, **template_fields) -> HubConfig:
    fields = {"command": COMMAND, "docker": "per-user", "cpu": "50%", "memory": "256M"}
    fields.update(template_fields)
    default = Template(name="default", image=image, **fields)
    other = Template(name="other", image=image, **fields)
    eph = Template(name="eph", image=image, **{**fields, "mode": "ephemeral"})
    return HubConfig(
        routes=ROUTES,
        templates={"default": default, "other": other, "eph": eph},
        docker_socket=HOST_SOCKET,
        workspace_dir=tmp / "workspaces",
        state_dir=tmp / "state",
        audit_dir=tmp / "audit",
        supervisor="local",
    )


def unique_user(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def user_daemon(tmp: Path, user: str | None = None):
    """A real per-user dockerd (LocalSupervisor) on a host-wide claimed net ID; removed after."""
    import subprocess

    from hubcontrol import network
    from hubcontrol.netids import NetIdRegistry
    from hubcontrol.supervisor import DaemonSpec
    from hubcontrol.supervisor.local import LocalSupervisor

    user = user or unique_user("d")
    registry = NetIdRegistry()
    root = tmp / f"{user}-docker"
    net_id = registry.allocate(root)
    net = network.user_network(net_id, "10.208.0.0/12")
    daemon_dir = root / ".rediacc" / "docker"
    spec = DaemonSpec(user=user, net_id=net_id, data_root=daemon_dir / "data",
                      daemon_dir=daemon_dir, network_config=network.daemon_network_config(net))  # fmt: skip
    supervisor = LocalSupervisor()
    try:
        network.ensure_bridge(net.bridge, net.bridge_address)
        supervisor.start(spec)
        yield spec
    finally:
        supervisor.stop(spec)
        network.delete_link(net.bridge)
        subprocess.run(["rm", "-rf", str(spec.exec_root), str(root)], check=False)
        registry.release(net_id, root)


@contextlib.contextmanager
def running_hub(tmp_path: Path, image: str, **template_fields):
    """A Hub in a background loop; every user it touched is destroyed with its data afterwards."""
    config = make_config(tmp_path, image, **template_fields)
    with embedded(config, ready_timeout=20) as hub:
        try:
            yield hub
        finally:
            for row in hub.status():
                with contextlib.suppress(Exception):
                    hub.destroy(row.user, remove_data=True)
