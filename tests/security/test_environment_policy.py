"""The policy socket in a real environment: a Hub (LocalSupervisor, real per-user dockerd) whose
environment image carries the real docker CLI; users run `docker` inside their environment, as
they would in a terminal, and the policy socket beside their daemon decides.

Checked: refused requests get the clear error and leave nothing behind; allowed work runs; a user
cannot read another user's workspace or the host's files by any of the refused routes; the
environment container itself is unprivileged; the policy socket follows the daemon across a stop
and a new start."""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import docker
import pytest
from anyio.from_thread import start_blocking_portal

from hubcontrol import mounts
from hubcontrol.embed import SyncHub
from hubcontrol.hub import Hub
from tests.security.policyhub import Env, policy_hub
from tests.support.hubcore import HOST_SOCKET, make_config, unique_user

pytestmark = [
    pytest.mark.docker,
    pytest.mark.timeout(300),
]


@pytest.fixture(scope="module")
def two_users(tmp_path_factory, image):
    with policy_hub(tmp_path_factory.mktemp("hub"), image) as hub:
        alice, bob = Env(hub, unique_user("alice")), Env(hub, unique_user("bob"))
        (bob.workspace / "secret").write_text("bob's secret\n")
        try:
            yield hub, alice, bob, image
        finally:
            alice.close()
            bob.close()


def test_the_environment_sees_the_policy_socket_not_the_daemon(two_users):
    hub, alice, bob, image = two_users
    code, out = alice.sh(
        "docker version --format '{{.Server.Version}}' && ls -l /var/run/docker.sock"
    )
    assert code == 0, out
    assert "/run/rediacc/env/docker.sock" in out
    # the raw daemon socket is nowhere in the environment's mounts
    mounts = [m["Source"] for m in alice.container.attrs["Mounts"]]
    assert str(alice.spec.socket) not in mounts and str(alice.spec.exec_root) not in mounts


def test_environment_container_is_unprivileged(two_users):
    _, alice, _, _ = two_users
    host = alice.container.attrs["HostConfig"]
    assert host["Privileged"] is False
    assert not host.get("CapAdd") and not host.get("Devices") and not host.get("DeviceRequests")
    assert not any("unconfined" in opt for opt in host.get("SecurityOpt") or [])
    assert host["PidMode"] == "" and host["UsernsMode"] == "" and host["NetworkMode"] != "host"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ("run --rm --privileged {img} true", "privileged mode"),
        ("run --rm -v /:/host {img} cat /host/etc/shadow", "bind mount of /"),
        ("run --rm -v /etc:/x {img} cat /x/shadow", "bind mount of /etc"),
        ("run --rm -v {bob}:/x {img} cat /x/secret", "only directories inside your workspace"),
        (
            "run --rm -v /workspace/../{bobname}:/x {img} cat /x/secret",
            "only directories inside your workspace",
        ),
        ("run --rm -v /workspace/.checkpoint:/x {img} ls /x", "checkpoint directory"),
        (
            "run --rm --mount type=bind,source=/run/rediacc,target=/x {img} ls /x",
            "bind mount of /run/rediacc",
        ),
        ("run --rm --pid host {img} true", "host's pid namespace"),
        ("run --rm --network host {img} true", "host's network namespace"),
        ("run --rm --cap-add SYS_ADMIN {img} true", "capability SYS_ADMIN"),
        ("run --rm --device /dev/sda {img} true", "host devices"),
        ("run --rm --security-opt seccomp=unconfined {img} true", "seccomp"),
        ("run --rm -p 127.0.0.1:7112:80 {img} true", "publishing port"),
        (
            "volume create --opt type=none --opt o=bind --opt device={bob} bobvol",
            "volume driver options",
        ),
        ("stop hub-{alicename}", "your environment"),
        ("exec --privileged hub-{alicename} true", "privileged exec"),
    ],
)
def test_refused_inside_the_environment(two_users, args, expected):
    hub, alice, bob, image = two_users
    line = args.format(
        img=image, bob=bob.workspace, bobname=bob.spec.user, alicename=alice.spec.user
    )
    before = alice.containers()
    code, out = alice.sh(f"docker {line}")
    assert code != 0, out
    assert "hub policy refused" in out and expected in out, out
    assert "bob's secret" not in out
    assert alice.containers() == before


def test_refusals_are_in_the_users_audit_log(two_users):
    from hubcontrol.auditlog import AuditLog, read_records

    hub, alice, _, image = two_users
    code, out = alice.sh(f"docker run --rm --cap-add SYS_MODULE {image} true")
    assert "capability SYS_MODULE" in out, out
    path = AuditLog(hub.hub.config.audit_dir).path(alice.user)
    records = [r for r in read_records(path) if r.get("type") == "policy"]
    assert any("SYS_MODULE" in r["attrs"]["reason"] for r in records), records[-3:]
    assert all(r["user"] == alice.user and r["net_id"] == alice.env.net_id for r in records)


def test_allowed_work_inside_the_environment(two_users):
    hub, alice, bob, image = two_users
    code, out = alice.sh(
        "mkdir -p /workspace/proj && cd /workspace/proj && "
        f"printf 'FROM {image}\\nRUN echo built > /built\\n' > Dockerfile && "
        "docker build -q -t mine . && "
        "docker run --rm -v $PWD:/src mine sh -c 'cat /built; echo from-container > /src/out' && "
        "docker run -d --name bg mine sh -c 'echo logged; sleep 30' && sleep 0.5 && "
        "docker logs bg && docker exec bg echo exec-ok && docker rm -f bg && docker ps -a --format '{{.Names}}'"
    )
    assert code == 0, out
    assert "built" in out and "logged" in out and "exec-ok" in out
    assert (alice.workspace / "proj" / "out").read_text() == "from-container\n"
    # bob's daemon has none of it
    assert "mine" not in str(bob.client.images.list())


VENV_LIKE_TREE = (
    "mkdir -p /workspace/venv/bin /workspace/venv/lib/real /workspace/venv/node_modules/pkg "
    "/workspace/venv/node_modules/.bin && cd /workspace/venv && "
    "printf '#!/bin/sh\\necho python-ran\\n' > bin/python3.11 && chmod 755 bin/python3.11 && "
    "busybox ln -sf python3.11 bin/python3 && busybox ln -sf python3 bin/python && "
    "echo site-packages > lib/real/site.txt && busybox ln -sfn real lib/site && "
    "busybox ln -sf /src/lib/real/site.txt lib/abs && "
    "printf '#!/bin/sh\\necho node-tool-ran\\n' > node_modules/pkg/cli.sh && "
    "chmod 755 node_modules/pkg/cli.sh && busybox ln -sf ../pkg/cli.sh node_modules/.bin/tool"
)


def test_symlinks_in_a_bound_workspace_folder_work(two_users):
    """A venv-like tree of links (a relative chain, a directory link, an absolute link valid
    where the tree is mounted, node_modules/.bin) used through `docker run -v` in a real
    environment: every link resolves in the container."""
    _, alice, _, image = two_users
    code, out = alice.sh(
        f"{VENV_LIKE_TREE} && docker run --rm -v /workspace/venv:/src {image} sh -c "
        "'/src/bin/python && cat /src/lib/site/site.txt /src/lib/abs && /src/node_modules/.bin/tool'"
    )
    assert code == 0, out
    assert out.splitlines()[-4:] == [
        "python-ran",
        "site-packages",
        "site-packages",
        "node-tool-ran",
    ]


def run_as_nobody(path) -> subprocess.CompletedProcess:
    """Execute ``path`` as an unprivileged host account (nobody). The file is opened by root
    and run through its descriptor, so directory permissions on the way do not matter: only
    the file and the mount it lives on decide what the setuid bit does."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", f"/proc/self/fd/{fd}"],
            pass_fds=(fd,),
            capture_output=True,
            text=True,
            timeout=30,
        )
    finally:
        os.close(fd)


def test_workspace_plants_are_inert_to_the_host(two_users, tmp_path):
    """The issue's attack: a root template plants a setuid-root binary and a device node of the
    host's disk in the workspace; a host account tries them. The workspace is nosuid,nodev on
    the host (and so in the environment and every bind from it), and the environment has no
    CAP_MKNOD."""
    _, alice, _, image = two_users
    host_view = mounts.mount_options(os.path.realpath(alice.workspace))
    assert host_view is not None and {"nosuid", "nodev"} <= host_view
    code, out = alice.sh("grep ' /workspace ' /proc/self/mountinfo")
    assert code == 0 and {"nosuid", "nodev"} <= set(out.split()[5].split(",")), out
    assert alice.container.attrs["HostConfig"]["CapDrop"] == ["MKNOD"]

    # a setuid-root copy of id(1), made so by root in the environment (docker exec as root)
    shutil.copy("/usr/bin/id", alice.workspace / "id-suid")  # brought in like any download
    planted = alice.container.exec_run(
        ["sh", "-c", "chown 0:0 /workspace/id-suid && chmod 4755 /workspace/id-suid"], user="root"
    )
    assert planted.exit_code == 0, planted.output
    assert os.stat(alice.workspace / "id-suid").st_mode & 0o7777 == 0o4755
    control = Path("/var/tmp") / f"id-suid-{os.getpid()}"  # the same bits off the workspace
    shutil.copy("/usr/bin/id", control)
    try:
        control.chmod(0o4755)
        assert "euid=0" in run_as_nobody(control).stdout  # the check can tell
    finally:
        control.unlink()
    r = run_as_nobody(alice.workspace / "id-suid")
    assert "uid=65534" in r.stdout and "euid=0" not in r.stdout, r.stdout + r.stderr

    # a device node of the host's root disk: not from the environment (no CAP_MKNOD) ...
    dev = os.stat("/").st_dev
    major, minor = str(os.major(dev)), str(os.minor(dev))
    made = alice.container.exec_run(
        ["busybox", "mknod", "-m", "666", "/workspace/disk", "b", major, minor], user="root"
    )
    assert made.exit_code != 0 and b"not permitted" in made.output, made.output
    # ... and one made by a container of the user (which may have CAP_MKNOD) in a bound folder
    code, out = alice.sh(
        f"mkdir -p /workspace/devs && docker run --rm -v /workspace/devs:/d {image} "
        f"busybox mknod -m 666 /d/disk b {major} {minor} && ls -l /workspace/devs/disk && "
        "head -c 1 /workspace/devs/disk"
    )
    assert "brw-rw-rw-" in out and "Permission denied" in out, out
    node = alice.workspace / "devs" / "disk"
    for who in ("root", "nobody"):
        with pytest.raises(PermissionError):
            if who == "root":
                os.close(os.open(node, os.O_RDONLY))
            else:
                r = subprocess.run(
                    [
                        "setpriv",
                        "--reuid=65534",
                        "--regid=65534",
                        "--clear-groups",
                        "head",
                        "-c",
                        "1",
                        str(node),
                    ],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                if r.returncode != 0:
                    raise PermissionError(r.stderr)


def test_policy_socket_follows_the_daemon_across_stop_and_start(two_users):
    hub, alice, _, image = two_users
    pid_before = (alice.spec.exec_root / "policy.pid").read_text()
    hub.stop(alice.user)
    deadline = time.monotonic() + 15
    while (alice.spec.exec_root / "policy.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not (alice.spec.exec_root / "policy.pid").exists()
    again = Env(hub, alice.user)
    try:
        assert (alice.spec.exec_root / "policy.pid").read_text() != pid_before
        code, out = again.sh(
            f"docker run --rm {image} echo back && docker run --rm --privileged {image} true"
        )
        assert "back" in out and "privileged mode" in out, out
    finally:
        again.close()


@pytest.mark.criu
def test_checkpoint_and_restore_with_the_policy_in_place(tmp_path, image):
    """The environment used its docker socket and has a `docker events` stream open through it,
    is checkpointed (daemon and policy socket gone), restored, and its docker socket is the
    policy socket again."""
    user = unique_user("ckpt")
    # root: this host's root lacks CAP_SYS_RESOURCE, so CRIU cannot dump other users' processes
    config = make_config(tmp_path, image, checkpoint=True, user="root")
    with start_blocking_portal() as portal:
        hub = portal.call(lambda: Hub(config, ready_timeout=30))
        future, _ = portal.start_task(hub.run)
        sync = SyncHub(hub, portal)
        try:
            env = Env(sync, user)
            code, out = env.sh(f"docker run --rm {image} echo before")
            assert code == 0 and "before" in out, out
            # a user's open stream through the policy socket while the environment is suspended
            env.container.exec_run(
                ["sh", "-c", "docker events > /tmp/events.log 2>&1"],
                user="vscode",
                environment={"DOCKER_CONFIG": "/tmp/.docker"},
                detach=True,
            )
            time.sleep(1)
            assert "docker events" in env.container.exec_run(["ps"]).output.decode()
            pid_before = env.container.attrs["State"]["Pid"]
            env.close()
            sync.stop(user)
            assert sync.hub.record(user)["state"] == "checkpointed"
            assert not (env.spec.exec_root / "policy.pid").exists() or not os.path.exists(
                f"/proc/{(env.spec.exec_root / 'policy.pid').read_text().strip()}"
            )
            again = Env(sync, user)
            try:
                assert again.container.id == env.container.id
                assert again.container.attrs["State"]["Pid"] != pid_before
                assert "restore_error" not in sync.hub.record(user)
                code, out = again.sh(
                    f"docker run --rm {image} echo after; docker run --rm --privileged {image} true"
                )
                assert "after" in out and "privileged mode" in out, out
            finally:
                again.close()
        finally:
            with contextlib.suppress(Exception):
                sync.destroy(user, remove_data=True)
            future.cancel()
            hub.engine.close()


def test_build_cannot_fetch_another_users_service(two_users):
    """Alice's daemon, as root on the host, would fetch Bob's unauthenticated service for her."""
    hub, alice, bob, image = two_users
    bob.container.exec_run(["sh", "-c", "echo bob-secret > /home/vscode/secret"], user="root")
    code, out = alice.sh(
        "mkdir -p /workspace/steal && cd /workspace/steal && "
        f"printf 'FROM {image}\\nADD http://{bob.env.service_ip}:8080/secret /stolen\\n' > Dockerfile && "
        "docker build -q -t stolen . && docker run --rm stolen cat /stolen"
    )
    assert "bob-secret" not in out, "alice's build read bob's service"
    assert code != 0 and "connection refused" in out.lower(), out  # refused, not failed otherwise
    # the control: the same build from alice's own service (her own block) works
    alice.container.exec_run(["sh", "-c", "echo alice-own > /home/vscode/own"], user="root")
    code, out = alice.sh(
        "cd /workspace/steal && "
        f"printf 'FROM {image}\nADD http://{alice.env.service_ip}:8080/own /own\n' > Dockerfile && "
        "docker build -q -t own . && docker run --rm own cat /own"
    )
    assert code == 0 and "alice-own" in out, out


@contextlib.contextmanager
def loopback_listener():
    """An HTTP server on 127.0.0.1 (a host service no user may reach); yields its port."""
    body = b"host-only-secret\n"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # the http.server API
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_daemon_cannot_reach_host_loopback_but_pulls_from_the_allowed_registry(
    tmp_path,
    image,
    registry,
):
    """The daemon's own connections (a build's ADD) to a host loopback service are refused by
    RDH-OUTPUT, while a pull from the local registry the operator allows still works."""
    host = docker.DockerClient(base_url=f"unix://{HOST_SOCKET}", version="1.41", timeout=120)
    remote = f"{registry}/{unique_user('reg')}/env"
    host.images.get(image).tag(remote, "1")
    try:
        for line in host.api.push(remote, "1", stream=True, decode=True):
            assert "error" not in line, line
        with loopback_listener() as port, policy_hub(tmp_path, image) as hub:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                assert r.read() == b"host-only-secret\n"  # the control: the service is up
            hub.hub.policy_sockets.allowed_registries = (registry,)
            env = Env(hub, unique_user("loop"))
            try:
                code, out = env.sh(
                    f"docker pull -q {remote}:1 && docker run --rm {remote}:1 echo pulled-ok"
                )
                assert code == 0 and "pulled-ok" in out, out
                code, out = env.sh(
                    "mkdir -p /workspace/lo && cd /workspace/lo && "
                    f"printf 'FROM {image}\nADD http://127.0.0.1:{port}/ /got\n' > Dockerfile && "
                    "docker build -q -t lo . && docker run --rm lo cat /got"
                )
                assert "host-only-secret" not in out, "the daemon fetched a host loopback service"
                assert code != 0 and "connection refused" in out.lower(), out
            finally:
                env.close()
    finally:
        with contextlib.suppress(docker.errors.DockerException):
            host.images.remove(f"{remote}:1")
        host.close()


def test_docker_sessions_survive_a_hub_restart(tmp_path, image):
    """The policy socket is its own process: a hub restart leaves it, and a `docker logs -f`
    running in the environment through it, untouched; the new hub adopts it."""
    config = make_config(tmp_path, image)
    user = unique_user("restart")

    @contextlib.contextmanager
    def hub_process():
        with start_blocking_portal() as portal:
            hub = portal.call(lambda: Hub(config, ready_timeout=30))
            future, _ = portal.start_task(hub.run)
            try:
                yield SyncHub(hub, portal)
            finally:
                future.cancel()
                hub.engine.close()

    try:
        with hub_process() as first:
            env = Env(first, user)
            pid = (env.spec.exec_root / "policy.pid").read_text()
            code, out = env.sh(
                f"docker run -d --name ticker {image} sh -c 'while true; do echo tick; sleep 0.2; done'"
            )
            assert code == 0, out
            env.container.exec_run(
                ["sh", "-c", "docker logs -f ticker > /workspace/follow.log 2>&1"],
                user="vscode",
                environment={"DOCKER_CONFIG": "/tmp/.docker"},
                detach=True,
            )
            time.sleep(1)
            env.close()
        # no hub now: the environment, its daemon and its policy socket keep running
        follow = env.workspace / "follow.log"
        before = follow.read_text().count("tick")
        time.sleep(1)
        assert follow.read_text().count("tick") > before
        with hub_process() as second:
            again = Env(second, user)
            try:
                assert (again.spec.exec_root / "policy.pid").read_text() == pid
                mid = follow.read_text().count("tick")
                time.sleep(1)
                assert follow.read_text().count("tick") > mid  # the same stream, still flowing
                code, out = again.sh(f"docker run --rm --privileged {image} true")
                assert "privileged mode" in out, out
            finally:
                again.close()
                second.destroy(user, remove_data=True)
    finally:
        with contextlib.suppress(Exception), hub_process() as cleanup:
            cleanup.destroy(user, remove_data=True)
