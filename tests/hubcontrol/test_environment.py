"""The environment container's options (pure) and image availability (real daemons)."""

from __future__ import annotations

import contextlib
import uuid

import docker
import pytest

from hubcontrol import environment as envs
from hubcontrol import images, network
from hubcontrol.config import Template
from hubcontrol.errors import EnvironmentError_, ImageError
from tests.support.hubcore import host_test_image, user_daemon

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
        owner=(1000, 1000), shell="/bin/bash",
    )  # fmt: skip
    args.update(kw)
    return envs.create_options(**args)


def test_persistent_environment_options():
    tpl = Template(name="py", image="img:1", command="exec app --ip __SERVICE_IP__", user="vscode",
                   workspace="/home/v/work", shm_size=123, docker="per-user")  # fmt: skip
    opts = options(tpl)
    c, h, e = opts["container"], opts["host"], opts["endpoint"]
    assert c["entrypoint"] == ["/bin/bash", "-c"]
    assert c["command"] == ["exec app --ip 10.208.1.2"]
    assert (
        c["user"] == "vscode"
        and c["working_dir"] == "/home/v/work"
        and c["name"] == "hub-alice--abc"
    )
    assert c["labels"] == {
        "rediacc.hub.user": "Alice", "rediacc.hub.safe-name": "alice--abc",
        "rediacc.hub.template": "py", "rediacc.hub.role": "environment",
        "rediacc.hub.net-id": "32832", "rediacc.hub.mode": "persistent",
        "rediacc.hub.shell": "/bin/bash",
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
    c = options(Template(name="d", image="img"), shell=None)["container"]
    assert "entrypoint" not in c and "command" not in c


def test_the_command_runs_with_the_images_shell():
    tpl = Template(name="web", image="node:22-alpine", command="cd /workspace && exec npm start")
    c = options(tpl, shell="/bin/sh")["container"]
    assert c["entrypoint"] == ["/bin/sh", "-c"]
    assert c["labels"]["rediacc.hub.shell"] == "/bin/sh"
    with pytest.raises(ValueError, match="shell"):
        options(tpl, shell=None)


@pytest.mark.parametrize(
    ("fields", "needed"),
    [({}, False), ({"command": "x"}, True), ({"on_create": "x"}, True),
     ({"pre_dump": "x"}, True), ({"post_restore": "x"}, True)],
)  # fmt: skip
def test_a_shell_is_needed_for_a_command_or_any_hook(fields, needed):
    assert envs.needs_shell(Template(name="t", image="i", **fields)) is needed


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
def test_an_environment_network_whose_bridge_was_deleted_is_made_again(tmp_path):
    """On the host daemon (a template without a per-user daemon) the environment network outlives
    its bridge when `hub gc` releases the network ID and deletes the ID's bridges: the daemon
    keeps the network, and no container could join it. The next start on that ID replaces it."""
    from hubcontrol.netids import NetIdRegistry

    registry = NetIdRegistry()
    root = tmp_path / "u-docker"
    net_id = registry.allocate(root)
    net = network.user_network(net_id, "10.208.0.0/12")
    host = docker.DockerClient(base_url="unix:///var/run/docker.sock", version="1.41")
    try:
        assert envs.ensure_env_network(host, net) == net.env_bridge
        first = host.networks.get(net.env_bridge).id
        assert envs.ensure_env_network(host, net) == net.env_bridge  # a working one is kept
        assert host.networks.get(net.env_bridge).id == first
        # what gc.s host cleanup does (gc.remove_daemon_leftovers)
        network.delete_link(net.env_bridge)
        assert envs.ensure_env_network(host, net) == net.env_bridge
        assert host.networks.get(net.env_bridge).id != first
        with host_test_image() as ref:
            out = host.containers.run(
                ref, ["ip", "-4", "-o", "addr", "show", "eth0"], network=net.env_bridge,
                remove=True,
            )  # fmt: skip
        assert str(net.env_subnet.network_address)[:-1] in out.decode(), out
    finally:
        envs.remove_env_network(host, net)
        registry.release(net_id, root)
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


ENV_IMAGE = "rediacc-hub/env:latest"  # scripts/build-image.sh: Debian 13 with bash


@pytest.mark.docker
def test_the_shell_is_read_from_the_image_recorded_and_used_by_hooks():
    """bash where the image has it (Debian's merged /usr: /bin -> usr/bin), sh where it does
    not (busybox: /bin/sh -> busybox); hooks use the recorded one, and containers without the
    record (made by an older hub) are probed the same way."""
    host = docker.DockerClient(base_url="unix:///var/run/docker.sock", version="1.41")
    created = []
    try:
        env = envs.probe_image(host, ENV_IMAGE, "vscode")
        assert env == envs.ImageFacts(owner=(1000, 1000), shell="/bin/bash")
        assert envs.probe_image(host, ENV_IMAGE, "1000:1000", want_shell=False).shell is None
        with host_test_image() as ref:
            facts = envs.probe_image(host, ref, "vscode")
            assert facts == envs.ImageFacts(owner=(1000, 1000), shell="/bin/sh")
            tpl = Template(name="t", image=ref, command="exec sleep 60", user="vscode")
            assert envs.template_facts(host, tpl) == facts
            for labels in ({envs.LABEL_SHELL: facts.shell}, {}):
                c = host.api.create_container(
                    ref, ["/bin/sh", "-c", "exec sleep 60"], labels=labels, user="vscode"
                )
                created.append(c["Id"])
                host.api.start(c["Id"])
                code, out = envs.run_hook(host, c["Id"], "echo $0 in $PWD", "vscode", "/tmp",
                                          "10.208.1.2")  # fmt: skip
                assert (code, out.strip()) == (0, "/bin/sh in /tmp")
            assert envs.container_shell(host, created[0]) == "/bin/sh"
    finally:
        for cid in created:
            host.api.remove_container(cid, force=True)
        host.close()


@pytest.mark.docker
def test_template_facts_are_probed_once_per_image_id(monkeypatch):
    """The hub keeps each image's facts by image ID: the next user of a template is not probed
    again (a probe is a container created and files read out of it, 32 times over when 32
    users log in at once), and a tag moved to another image is probed afresh."""
    host = docker.DockerClient(base_url="unix:///var/run/docker.sock", version="1.41")
    ref = f"hub-test/facts:{uuid.uuid4().hex[:8]}"
    probes = []
    real = envs.probe_image
    monkeypatch.setattr(envs, "probe_image", lambda *a, **kw: probes.append(a[1]) or real(*a, **kw))
    cache = envs.ImageFactsCache()
    tpl = Template(name="t", image=ref, command="exec sleep 60", user="vscode")
    try:
        host.images.get(ENV_IMAGE).tag(ref)
        env_id = host.images.get(ENV_IMAGE).id
        bash = envs.ImageFacts(owner=(1000, 1000), shell="/bin/bash")
        assert envs.template_facts(host, tpl, cache) == bash
        assert envs.template_facts(host, tpl, cache) == bash
        assert probes == [env_id]  # once, and by ID: a retag during the probe changes nothing
        with host_test_image() as busybox:
            host.images.get(busybox).tag(ref)  # the same name, another image
            facts = envs.template_facts(host, tpl, cache)
            assert facts == envs.ImageFacts(owner=(1000, 1000), shell="/bin/sh")
            assert probes == [env_id, host.images.get(busybox).id]
    finally:
        with contextlib.suppress(docker.errors.DockerException):
            host.images.remove(ref, force=True)
        host.close()


@pytest.mark.docker
def test_an_image_without_any_shell_is_refused_by_name(tmp_path):
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"root:x:0:0::/:/nonexistent\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    host = docker.DockerClient(base_url="unix:///var/run/docker.sock", version="1.41")
    ref = f"hub-test/noshell:{uuid.uuid4().hex[:8]}"
    host.api.import_image_from_data(buf.getvalue(), repository=ref.split(":")[0],
                                    tag=ref.split(":")[1])  # fmt: skip
    try:
        assert envs.probe_image(host, ref, "root").shell is None
        tpl = Template(name="distroless", image=ref, user="root")
        assert envs.template_facts(host, tpl).shell is None  # no command, no hooks: fine
        with pytest.raises(EnvironmentError_) as info:
            envs.template_facts(host, Template(name="distroless", image=ref, on_create="x"))
        assert ref in info.value.user_message and "no shell" in info.value.user_message
        assert "/bin/bash" in info.value.log_message and "/bin/sh" in info.value.log_message
    finally:
        host.images.remove(ref, force=True)
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


@pytest.mark.parametrize(
    ("cpus", "available", "want"),
    [
        (None, 2, None),  # no limit
        (0.5, 2, 0.5),
        (2.0, 2, 2.0),
        (4.0, 2, 2.0),  # the seed's Jupyter example (400%) on a 2-core host: docker refuses 4
        (4.0, 0, 1.0),  # a host that reports no CPUs still gets a valid limit
    ],
)
def test_container_cpus_are_capped_at_the_host(cpus, available, want):
    assert envs.container_cpus(cpus, available) == want
