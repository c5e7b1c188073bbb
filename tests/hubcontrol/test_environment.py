"""The environment container's options (pure) and image availability (real daemons)."""

from __future__ import annotations

import contextlib
import uuid

import docker
import pytest

from hubcontrol import environment as envs
from hubcontrol import images, network
from hubcontrol.config import Template
from hubcontrol.errors import ImageError
from tests.hubcontrol._hubcore import host_test_image, user_daemon

NET = network.user_network(32832, "10.208.0.0/12")


@pytest.mark.parametrize(
    ("command", "expanded"),
    [("serve --host __SERVICE_IP__", "serve --host 10.208.1.2"),
     ("serve --host ${SERVICE_IP} --port 8080", "serve --host 10.208.1.2 --port 8080"),
     ("a __SERVICE_IP__ b ${SERVICE_IP}", "a 10.208.1.2 b 10.208.1.2"),
     ("echo $SERVICE_IP", "echo $SERVICE_IP"),  # plain $VAR: bash expands it from the env
     ("no ip here", "no ip here")],
)  # fmt: skip
def test_service_ip_expansion(command, expanded):
    assert envs.expand_command(command, str(NET.service_ip)) == expanded


def options(template: Template, **kw) -> dict:
    args = dict(
        username="Alice", safe="alice--abc", template=template, net=NET, network_name="rdh32832e",
        workspace=None if template.ephemeral else "/ws/alice--abc", env_dir="/run/rediacc/hub/32832/env",
        cgroup_parent="/rediacc.slice/hub-alice--abc/containers", cpus=2.0, memory=1 << 30,
        owner=(1000, 1000),
    )  # fmt: skip
    args.update(kw)
    return envs.create_options(**args)


def test_persistent_environment_options():
    tpl = Template(name="py", image="img:1", command="exec app --ip __SERVICE_IP__", user="vscode",
                   workspace="/home/v/work", shm_size=123, docker="per-user")  # fmt: skip
    opts = options(tpl)
    c, h, e = opts["container"], opts["host"], opts["endpoint"]
    assert c["entrypoint"] == ["bash", "-c"] and c["command"] == ["exec app --ip 10.208.1.2"]
    assert (
        c["user"] == "vscode"
        and c["working_dir"] == "/home/v/work"
        and c["name"] == "hub-alice--abc"
    )
    assert c["labels"] == {
        "rediacc.hub.user": "Alice", "rediacc.hub.safe-name": "alice--abc",
        "rediacc.hub.template": "py", "rediacc.hub.role": "environment",
        "rediacc.hub.net-id": "32832", "rediacc.hub.mode": "persistent",
    }  # fmt: skip
    assert c["environment"]["SERVICE_IP"] == "10.208.1.2"
    assert c["environment"]["DOCKER_HOST"] == "unix:///run/rediacc/env/docker.sock"
    assert "/ws/alice--abc:/home/v/work:rw" in h["binds"]
    assert "/run/rediacc/hub/32832/env:/run/rediacc/env:ro" in h["binds"]
    assert h["tmpfs"] == {"/home/v/work/.checkpoint": "ro,size=4k,mode=0555"}
    assert h["shm_size"] == 123 and h["init"] is True and h["restart_policy"] == {"Name": "no"}
    assert h["nano_cpus"] == 2_000_000_000 and h["mem_limit"] == 1 << 30
    assert h["cgroup_parent"] == "/rediacc.slice/hub-alice--abc/containers"
    assert e == {"network": "rdh32832e", "ipv4_address": "10.208.1.2"}


def test_ephemeral_environment_gets_a_tmpfs_owned_by_its_user():
    tpl = Template(name="demo", image="img", mode="ephemeral")
    h = options(tpl, env_dir=None)["host"]
    assert h["tmpfs"]["/workspace"] == "exec,uid=1000,gid=1000"
    assert not any(b.endswith(":/workspace:rw") for b in h["binds"])
    assert "DOCKER_HOST" not in options(tpl, env_dir=None)["container"]["environment"]


def test_no_command_keeps_the_images_own():
    c = options(Template(name="d", image="img"))["container"]
    assert "entrypoint" not in c and "command" not in c


PASSWD = "root:x:0:0::/root:/bin/sh\nvscode:x:1000:1000::/home/vscode:/bin/bash\njovyan:x:1001:100::/:/bin/sh\n"
GROUP = "root:x:0:\nusers:x:100:\nvscode:x:1000:\n"


@pytest.mark.parametrize(
    ("spec", "ids"),
    [("vscode", (1000, 1000)), ("jovyan", (1001, 100)), ("1000:1000", (1000, 1000)),
     ("1000", (1000, 1000)), ("1234", (1234, 0)), ("1000:100", (1000, 100)),
     ("vscode:users", (1000, 100)), ("root", (0, 0)), ("nobody", None), ("vscode:nogroup", None)],
)  # fmt: skip
def test_container_user_lookup(spec, ids):
    assert envs.parse_user(spec, PASSWD, GROUP) == ids


# -- images, with real daemons ----------------------------------------------------------------


@pytest.mark.docker
def test_images_are_transferred_from_the_host_daemon_and_errors_name_the_image(tmp_path):
    host = docker.DockerClient(base_url="unix:///var/run/docker.sock", version="1.41")
    with host_test_image() as ref, user_daemon(tmp_path) as daemon:
        target = docker.DockerClient(base_url=daemon.url, version="1.41")
        try:
            assert images.ensure_image(target, ref, host) == "transfer"
            assert images.ensure_image(target, ref, host) == "present"
            missing = f"hub-test/missing-{uuid.uuid4().hex[:8]}:1"
            with pytest.raises(ImageError) as info:
                images.ensure_image(target, missing, host)
            assert missing in info.value.user_message
            assert "not in the host daemon" in info.value.log_message
            assert "pull failed" in info.value.log_message
        finally:
            target.close()
            with contextlib.suppress(Exception):
                host.close()


@pytest.mark.docker
def test_an_updated_image_sends_only_its_new_layers_and_a_stale_record_sends_all(tmp_path):
    """The host's image is rebuilt under the same tag: a daemon holding the old one gets the new
    one with only the new layer sent, and the old one goes once untagged and unused. A record of
    the stream's members that no longer fits makes the load fail; everything is then sent."""
    from tests.support.btrfs import build

    host = docker.DockerClient(base_url="unix:///var/run/docker.sock", version="1.41")
    tag = f"hub-test/update-{uuid.uuid4().hex[:8]}:1"
    made = []
    with host_test_image() as ref, user_daemon(tmp_path) as daemon:
        target = docker.DockerClient(base_url=daemon.url, version="1.41")
        try:
            made.append(build(host, f"FROM {ref}\nRUN head -c 8388608 /dev/urandom > /v1\n", tag))
            layers = images.LayerIndex()
            assert images.ensure_image(target, tag, host, layers) == "transfer"
            old = images.image_id(target, tag)
            made.append(build(host, f"FROM {tag}\nRUN echo two > /v2\n", tag))
            moved = images.update(host, target, tag, made[-1], layers)
            assert moved.skipped > 8 << 20 and moved.sent < 1 << 20
            assert images.image_id(target, tag) == made[-1]
            assert images.ensure_image(target, tag, host, layers) == "present"
            assert images.remove_unused(target, [old]) == []  # untagged, no container
            with pytest.raises(docker.errors.ImageNotFound):
                target.images.get(old)

            made.append(build(host, f"FROM {tag}\nRUN echo three > /v3\n", tag))
            # the stream's members out of order: the new layer's is among those left out
            bogus = list(reversed(images.read_layer_members(host, tag)))
            layers.put(made[-1], bogus)
            assert images.ensure_image(target, tag, host, layers) == "transfer"
            assert images.image_id(target, tag) == made[-1]
            assert layers.get(made[-1]) != bogus  # learnt again from the full stream
        finally:
            target.close()
            for image in reversed(made):
                with contextlib.suppress(docker.errors.DockerException):
                    host.images.remove(image, force=True)
            host.close()


@contextlib.contextmanager
def local_registry(tmp_path):
    """Debian's docker-registry on a free 127.0.0.1 port (daemons trust 127/8 as insecure)."""
    import socket
    import subprocess
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'registry'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        "log:\n  level: error\n"
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            assert proc.poll() is None and time.monotonic() < deadline, "registry did not start"
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.docker
def test_images_missing_on_the_host_are_pulled_from_a_registry(tmp_path):
    host = docker.DockerClient(base_url="unix:///var/run/docker.sock", version="1.41")
    with host_test_image() as ref, local_registry(tmp_path) as registry:
        remote = f"{registry}/{ref}"
        host.images.get(ref).tag(remote)
        try:
            for line in host.images.push(remote, stream=True, decode=True):
                assert "error" not in line, line
        finally:
            host.images.remove(remote)
        with user_daemon(tmp_path) as daemon:
            target = docker.DockerClient(base_url=daemon.url, version="1.41")
            try:
                assert images.ensure_image(target, remote, host) == "pull"
                assert images.ensure_image(target, remote, None) == "present"
            finally:
                target.close()
    host.close()
