"""Integration tests of hubcontrol.Hub against real per-user dockerd processes (LocalSupervisor).

Each test starts real daemons from /usr/sbin/dockerd with their own bridges (rdh<net_id>) in the
10.208.0.0/12 pool, transfers a busybox image from the host daemon and destroys everything it
made, data included, even on failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
import time
from pathlib import Path

import anyio
import docker
import pytest

from hubcontrol import network
from hubcontrol.embed import embedded
from hubcontrol.errors import EnvironmentError_, HookError
from hubcontrol.hub import Hub
from hubcontrol.netids import NetIdRegistry, read_marker
from tests.support.containers import run_output
from tests.support.hubcore import host_test_image, make_config, running_hub, unique_user

pytestmark = [pytest.mark.docker, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def image():
    with host_test_image() as ref:
        yield ref


_clients: list[docker.DockerClient] = []


@pytest.fixture(autouse=True)
def _close_clients():
    yield
    while _clients:
        _clients.pop().close()


def _client(url: str) -> docker.DockerClient:
    client = docker.DockerClient(base_url=url, version="1.41")
    _clients.append(client)
    return client


def http_get(ip: str, port: int, path: str = "/") -> str:
    with socket.create_connection((ip, port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.decode(errors="replace")


def wait_listening(ip: str, port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((ip, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def exec_in(client: docker.DockerClient, container_id: str, *cmd: str, user: str | None = None):
    result = client.containers.get(container_id).exec_run(list(cmd), user=user or "")
    return result.exit_code, result.output.decode(errors="replace")


def test_two_users_get_own_daemons_isolated_and_limited(tmp_path, image):
    alice, bob = unique_user("alice"), unique_user("bob")
    with running_hub(tmp_path, image) as hub:
        env_a = hub.ensure_running(alice)
        env_b = hub.ensure_running(bob)

        # own daemons, own networks, routes in the snapshot
        assert env_a.docker_url != env_b.docker_url
        assert env_a.net_id != env_b.net_id and env_a.service_ip != env_b.service_ip
        assert hub.snapshot().get(alice).target("code") == (env_a.service_ip, 8080)
        assert "200 OK" in http_get(env_a.service_ip, 8080) or "404" in http_get(
            env_a.service_ip, 8080
        )

        ca = _client(env_a.docker_url)
        cb = _client(env_b.docker_url)
        assert [c.name for c in ca.containers.list()] == [f"hub-{alice}"]
        assert [c.name for c in cb.containers.list()] == [f"hub-{bob}"]
        # the user's daemon runs `docker run` containers with a working network of their own
        out = run_output(ca, image, ["sh", "-c", "ip -4 addr show eth0"])
        assert (
            str(network.user_network(env_a.net_id, "10.208.0.0/12").bridge_subnet)[:-3].rsplit(
                ".", 1
            )[0]
            in out.decode()
        )

        # inside alice's environment: her own service answers, bob's does not, nor the host
        code, _ = exec_in(ca, env_a.container_id, "nc", "-w", "2", env_a.service_ip, "8080")
        assert code == 0
        code, _ = exec_in(ca, env_a.container_id, "nc", "-w", "2", env_b.service_ip, "8080")
        assert code != 0, "alice reached bob's environment"
        with host_listener() as (host_ip, port):
            code, _ = exec_in(ca, env_a.container_id, "nc", "-w", "2", host_ip, str(port))
            assert code != 0, "alice reached a host service"
        with host_listener("0.0.0.0") as (_, port):
            # the host's address on alice's own bridge (her gateway) is the host too
            gateway = env_a.service_ip.rsplit(".", 1)[0] + ".1"
            code, _ = exec_in(ca, env_a.container_id, "nc", "-w", "2", gateway, str(port))
            assert code != 0, "alice reached a host service through her gateway"

        # the user's daemon socket is in the environment, usable by the non-root user
        code, out = exec_in(ca, env_a.container_id, "ls", "-l", "/var/run/docker.sock")
        assert code == 0 and "/run/rediacc/env/docker.sock" in out
        code, out = exec_in(ca, env_a.container_id, "id", "-u")
        assert out.strip() == "1000"

        # limits are in force in the kernel's cgroups
        status = {row.user: row for row in hub.status()}
        limits = status[alice].daemon["limits"]
        assert limits.get("cpu.max", limits.get("cpu.cfs_quota_us", "")).startswith("50000")
        assert limits.get("memory.max", limits.get("memory.limit_in_bytes")) == str(256 << 20)
        info = ca.api.inspect_container(env_a.container_id)
        assert info["HostConfig"]["Memory"] == 256 << 20
        assert (
            info["HostConfig"]["CgroupParent"]
            == f"/rediacc.slice/hub-{alice}-{env_a.net_id}/containers"
        )
        pid = status[alice].daemon["pid"]
        assert (
            f"rediacc.slice/hub-{alice}-{env_a.net_id}/daemon"
            in Path(f"/proc/{pid}/cgroup").read_text()
        )
        env_pid = info["State"]["Pid"]  # the environment's processes sit in the limited group
        assert (
            f"rediacc.slice/hub-{alice}-{env_a.net_id}/containers/"
            in Path(f"/proc/{env_pid}/cgroup").read_text()
        )
    # destroyed: no daemon, bridge, rules or cgroup is left behind (unless another test run on
    # this host has claimed the released network ID since)
    registry = NetIdRegistry()
    for net_id in (env_a.net_id, env_b.net_id):
        if registry.owner(net_id) is None:
            assert not network.link_exists(f"rdh{net_id}")
            assert not network.link_exists(f"rdh{net_id}e")
            rules = subprocess.run(
                ["iptables", "-S", network.FORWARD_CHAIN], capture_output=True, text=True
            )
            assert f"rdh:{net_id}" not in rules.stdout
    assert not list(Path("/sys/fs/cgroup").glob(f"**/rediacc.slice/hub-{alice}-{env_a.net_id}"))


@contextlib.contextmanager
def host_listener(bind: str | None = None):
    """A TCP service on the host (its main address by default), as a hub or sshd would be."""
    route = subprocess.run(
        ["ip", "-4", "route", "get", "1.1.1.1"], capture_output=True, text=True
    ).stdout
    host_ip = bind or route.split(" src ")[1].split()[0]
    srv = socket.socket()
    srv.bind((host_ip, 0))
    srv.listen()
    try:
        yield host_ip, srv.getsockname()[1]
    finally:
        srv.close()


def test_returning_user_keeps_net_id_and_workspace_ephemeral_does_not(tmp_path, image):
    user, temp = unique_user("ret"), unique_user("eph")
    with running_hub(tmp_path, image) as hub:
        env = hub.ensure_running(user)
        client = _client(env.docker_url)
        code, _ = exec_in(client, env.container_id, "sh", "-c", "echo kept > /workspace/note")
        assert code == 0
        own = client.containers.run(image, ["sleep", "1000"], detach=True)  # the user's own
        hub.stop(user)
        assert hub.snapshot().get(user) is None
        assert not hub.hub.supervisor.is_running(hub.hub.daemon_spec(user))
        again = hub.ensure_running(user)
        assert again.net_id == env.net_id
        assert read_marker(tmp_path / "workspaces" / f"{user}-docker") == env.net_id
        client = _client(again.docker_url)
        assert exec_in(client, again.container_id, "cat", "/workspace/note") == (0, "kept\n")
        # stopped with the daemon (live-restore would have left it running), kept for the user
        assert client.containers.get(own.id).status == "exited"

        eph = hub.ensure_running(temp, "eph")
        client = _client(eph.docker_url)
        assert exec_in(client, eph.container_id, "sh", "-c", "echo gone > /workspace/note")[0] == 0
        hub.stop(temp)
        eph2 = hub.ensure_running(temp)
        client = _client(eph2.docker_url)
        assert eph2.container_id != eph.container_id
        assert exec_in(client, eph2.container_id, "cat", "/workspace/note")[0] != 0


def test_template_switch_rebuilds_and_keeps_workspace(tmp_path, image):
    user = unique_user("sw")
    with running_hub(tmp_path, image) as hub:
        env = hub.ensure_running(user)
        client = _client(env.docker_url)
        exec_in(client, env.container_id, "sh", "-c", "echo mine > /workspace/f")
        same = hub.ensure_running(user)
        assert same.container_id == env.container_id
        switched = hub.ensure_running(user, "other")
        assert switched.container_id != env.container_id and switched.template == "other"
        assert exec_in(client, switched.container_id, "cat", "/workspace/f") == (0, "mine\n")
        assert (
            client.containers.get(switched.container_id).labels["rediacc.hub.template"] == "other"
        )


def test_restarted_hub_adopts_running_environments(tmp_path, image):
    user = unique_user("adopt")
    config = make_config(tmp_path, image)
    try:
        with embedded(config) as hub:
            env = hub.ensure_running(user)
            pid = hub.status()[0].daemon["pid"]
        # the first hub is gone; its daemon and container are not
        with embedded(config) as hub:
            route = hub.snapshot().get(user)
            assert route is not None and route.service_ip == env.service_ip
            row = hub.status()[0]
            assert row.state == "running" and row.daemon["pid"] == pid
            again = hub.ensure_running(user)
            assert again.container_id == env.container_id
    finally:
        with embedded(config) as hub:
            hub.destroy(user, remove_data=True)


def test_concurrent_logins_share_one_start(tmp_path, image):
    user = unique_user("conc")
    config = make_config(tmp_path, image)

    async def main():
        hub = Hub(config, ready_timeout=20)
        results = []
        async with anyio.create_task_group() as services:
            await services.start(hub.run)
            try:
                async with anyio.create_task_group() as logins:
                    for _ in range(4):
                        logins.start_soon(_append, results, hub.ensure_running, user)
                assert len({e.container_id for e in results}) == 1
                assert len({e.net_id for e in results}) == 1
            finally:
                await hub.destroy(user, remove_data=True)
                services.cancel_scope.cancel()

    anyio.run(main)


async def _append(results, fn, *args):
    results.append(await fn(*args))


def test_hook_failure_and_dead_command_are_reported(tmp_path, image):
    user, dead = unique_user("hook"), unique_user("dead")
    with running_hub(tmp_path, image, on_create="echo hook ran as $(id -u); exit 3") as hub:
        with pytest.raises(HookError) as info:
            hub.ensure_running(user)
        assert "exit 3" in info.value.user_message and "hook ran as 1000" in info.value.log_message
        assert hub.progress(user).state == "failed" and hub.progress(user).error
        # the hook runs once: the next login gets in and does not re-run it
        assert hub.ensure_running(user).state == "running"
    with running_hub(tmp_path, image, command="echo bye; exit 7") as hub:
        with pytest.raises(EnvironmentError_) as info:
            hub.ensure_running(dead)
        assert "exited with 7" in info.value.log_message and "bye" in info.value.log_message


@pytest.mark.criu
def test_idle_stop_checkpoints_and_the_next_login_restores(tmp_path, image):
    user = unique_user("ckpt")
    # root: this host's root lacks CAP_SYS_RESOURCE, so CRIU cannot dump other users' processes
    with running_hub(tmp_path, image, checkpoint=True, user="root") as hub:
        env = hub.ensure_running(user)
        client = _client(env.docker_url)
        pid_before = client.api.inspect_container(env.container_id)["State"]["Pid"]
        hub.stop(user)  # by configuration: the template asks for checkpoints
        assert hub.status()[0].state == "checkpointed"
        assert not hub.hub.supervisor.is_running(hub.hub.daemon_spec(user))
        again = hub.ensure_running(user)
        assert again.container_id == env.container_id
        record = hub.hub.record(user)
        assert record["restored"]["checkpoint"] and "restore_error" not in record
        client = _client(again.docker_url)
        assert client.api.inspect_container(again.container_id)["State"]["Pid"] != pid_before
        assert "200 OK" in http_get(again.service_ip, 7681) or "404" in http_get(
            again.service_ip, 7681
        )


def test_shared_daemon_mode_keeps_the_fixed_address_and_rules(tmp_path, image):
    user = unique_user("shared")
    host = _client("unix:///var/run/docker.sock")
    with running_hub(tmp_path, image, docker="") as hub:
        env = hub.ensure_running(user)
        assert not env.per_user_docker and env.docker_url == "unix:///var/run/docker.sock"
        container = host.containers.get(env.container_id)
        assert container.labels["rediacc.hub.role"] == "environment"
        mounts = {m["Destination"] for m in container.attrs["Mounts"]}
        assert "/run/rediacc/env" not in mounts  # never the shared daemon's socket
        assert "200 OK" in http_get(env.service_ip, 8080) or "404" in http_get(env.service_ip, 8080)
        rules = subprocess.run(
            ["iptables", "-S", network.FORWARD_CHAIN], capture_output=True, text=True
        ).stdout
        assert f"rdh:{env.net_id}" in rules
        # the host daemon puts ACCEPT rules for its networks above ours in FORWARD; the rules
        # hooked in DOCKER-USER still keep this user from another user's environment
        victim_user = unique_user("victim")
        with running_hub(tmp_path / "per-user", image) as other_hub:
            victim = other_hub.ensure_running(victim_user)
            code, out = exec_in(host, env.container_id, "nc", "-w", "2", victim.service_ip, "8080")
            assert code != 0, f"a shared-daemon user reached another user: {out}"
            code, _ = exec_in(
                _client(victim.docker_url),
                victim.container_id,
                "nc",
                "-w",
                "2",
                env.service_ip,
                "8080",
            )
            assert code != 0, "a per-user environment reached a shared-daemon one"
            # nor any other container of the host daemon (a database, Traefik...): the world is
            # only reachable through the uplink
            net = host.networks.create(f"hubtest-{victim_user}", driver="bridge")
            try:
                other = host.containers.run(
                    image, ["httpd", "-f", "-p", "8080"], network=net.name, detach=True
                )
                try:
                    other.reload()
                    ip = other.attrs["NetworkSettings"]["Networks"][net.name]["IPAddress"]
                    wait_listening(ip, 8080)  # reachable from the host: the test can fail
                    code, _ = exec_in(
                        _client(victim.docker_url), victim.container_id, "nc", "-w", "2", ip, "8080"
                    )
                    assert code != 0, "a per-user environment reached a host daemon container"
                finally:
                    other.remove(force=True)
            finally:
                net.remove()
        hub.destroy(user, remove_data=True)
        assert not host.networks.list(names=[f"rdh{env.net_id}e"])
        assert (
            f"rdh:{env.net_id}"
            not in subprocess.run(
                ["iptables", "-S", network.FORWARD_CHAIN], capture_output=True, text=True
            ).stdout
        )


def test_a_service_that_never_listens_times_out_clearly(tmp_path, image):
    user = unique_user("slow")
    config = make_config(tmp_path, image, command="exec sleep 1000")
    with embedded(config, ready_timeout=2) as hub:
        try:
            with pytest.raises(EnvironmentError_) as info:
                hub.ensure_running(user)
            assert "did not answer on port(s) 7681, 8080 within 2 s" in info.value.user_message
            assert "__SERVICE_IP__" in info.value.log_message
            progress = hub.progress(user)
            assert progress.state == "failed" and "did not answer" in progress.error
            assert hub.snapshot().get(user) is None
        finally:
            hub.destroy(user, remove_data=True)


ENV_IMAGE = "rediacc-hub/env:latest"


@pytest.mark.slow
def test_docker_inside_the_environment_is_the_users_own(tmp_path):
    """With the real environment image (scripts/build-image.sh): docker CLI as the vscode user."""
    host = _client("unix:///var/run/docker.sock")
    try:
        host.images.get(ENV_IMAGE)
    except docker.errors.ImageNotFound:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{ENV_IMAGE} missing in CI: run scripts/build-image.sh")
        pytest.skip(f"{ENV_IMAGE} not built here (scripts/build-image.sh)")
    user = unique_user("dind")
    config = make_config(tmp_path, ENV_IMAGE, command="exec sleep infinity")
    config = dataclasses.replace(config, routes={})
    with embedded(config, ready_timeout=20) as hub:
        try:
            env = hub.ensure_running(user)
            client = _client(env.docker_url)
            code, out = exec_in(
                client, env.container_id, "docker", "ps", "--format", "{{.Names}}", user="vscode"
            )
            assert (code, out.strip()) == (0, f"hub-{user}")
            code, out = exec_in(
                client,
                env.container_id,
                "docker",
                "run",
                "--rm",
                ENV_IMAGE,
                "echo",
                "nested",
                user="vscode",
            )
            assert (code, out.strip()) == (0, "nested")
            code, out = exec_in(client, env.container_id, "docker", "images", "-q", user="vscode")
            assert len(out.split()) == 1  # only what this user's daemon holds
        finally:
            hub.destroy(user, remove_data=True)


def test_a_template_serving_only_some_routes_is_ready(tmp_path, image):
    """The seed's "lite" template serves code but not term: logins to code must not time out."""
    user, other = unique_user("lite"), unique_user("lite")
    lite = "exec httpd -f -p __SERVICE_IP__:8080 -h /"
    with running_hub(tmp_path, image, command=lite) as hub:
        started = time.monotonic()
        env = hub.ensure_running(user, route="code")  # what the proxy asks for: code only
        assert env.state == "running" and time.monotonic() - started < 15
        env = hub.ensure_running(other)  # no route: one port plus a grace for the rest
        assert env.state == "running"
        assert hub.snapshot().get(other).target("term") == (env.service_ip, 7681)


def test_switching_between_per_user_and_shared_daemon_templates(tmp_path, image):
    user = unique_user("mode")
    config = make_config(tmp_path, image)
    shared = dataclasses.replace(config.templates["default"], name="shared", docker="")
    config = dataclasses.replace(config, templates={**config.templates, "shared": shared})
    with embedded(config, ready_timeout=20) as hub:
        try:
            own = hub.ensure_running(user)
            (tmp_path / "workspaces" / user / "kept").write_text("yes")
            moved = hub.ensure_running(user, "shared")
            assert not moved.per_user_docker and moved.service_ip == own.service_ip
            assert not hub.hub.supervisor.is_running(hub.hub.daemon_spec(user))
            client = _client(moved.docker_url)
            assert exec_in(client, moved.container_id, "cat", "/workspace/kept") == (0, "yes")
            back = hub.ensure_running(user, "default")
            assert back.per_user_docker and back.service_ip == own.service_ip
            host = _client("unix:///var/run/docker.sock")
            assert not host.networks.list(names=[f"rdh{own.net_id}e"])
            assert not [c for c in host.containers.list(all=True) if c.name == f"hub-{user}"]
        finally:
            hub.destroy(user, remove_data=True)
