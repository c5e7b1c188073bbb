"""`docker build` with BuildKit through the policy socket, with today's Docker CLI.

A Hub (LocalSupervisor, real per-user dockerd 20.10, real policy socket processes) whose
environments run Debian 13's docker-cli 26, docker-buildx 0.13 and docker-compose 2.26
(``scripts/build-test-image.sh docker-cli``, built once and kept while its recipe is unchanged).
That CLI builds with BuildKit by default, over the policy socket's relays of ``/session`` and
``/grpc``. Users type the commands they would in a terminal: `docker build`, `docker buildx
build`, `docker compose build`, `RUN --mount=type=cache`, and the classic builder; what stays
refused is refused by the daemon (its builder entitlements) or by the kernel (the per-user
rules), since the policy cannot read BuildKit's gRPC.
"""

from __future__ import annotations

import contextlib
import http.server
import subprocess
import threading
from pathlib import Path

import pytest

from hubcontrol import network
from tests.security.policyhub import Env, policy_hub
from tests.support.hubcore import unique_user

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "rediacc-hub/test-docker-cli:latest"
# The routes of tests/support/hubcore.py, served by busybox httpd from the home directory.
COMMAND = (
    "busybox httpd -p __SERVICE_IP__:8080 -h /home/vscode && "
    "exec busybox httpd -f -p __SERVICE_IP__:7681 -h /home/vscode"
)


@contextlib.contextmanager
def host_listener(address: str):
    """An HTTP server of the host on ``address`` (no user may reach it); yields its port."""
    body = b"host-only-secret\n"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # the http.server API
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer((address, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def cli_image():
    subprocess.run([str(ROOT / "scripts/build-test-image.sh"), "docker-cli"], check=True)
    return IMAGE


@pytest.fixture(scope="module")
def users(tmp_path_factory, cli_image):
    with policy_hub(tmp_path_factory.mktemp("hub"), cli_image, command=COMMAND) as hub:
        alice, bob = Env(hub, unique_user("alice")), Env(hub, unique_user("bob"))
        try:
            yield hub, alice, bob
        finally:
            alice.close()
            bob.close()


def build_dir(env: Env, name: str, dockerfile: str, extra: str = "") -> str:
    """A shell prefix making /tmp/<name> with this Dockerfile and entering it."""
    text = dockerfile.replace("\\", "\\\\").replace("\n", "\\n").replace("'", "'\"'\"'")
    return f"mkdir -p /tmp/{name} && cd /tmp/{name} && printf '{text}' > Dockerfile && {extra}"


def test_docker_build_is_buildkit_and_cache_mounts_persist(users):
    """The CLI's default `docker build` is buildx with BuildKit, through /session and /grpc;
    a cache mount keeps its files between builds; every RUN step runs in the user's own
    containers cgroup (limits apply), not at the host's root."""
    _, alice, _ = users
    dockerfile = (
        f"FROM {IMAGE}\nARG N\n"
        "RUN --mount=type=cache,target=/cache echo run-$N >> /cache/runs && "
        "cp /cache/runs /runs && cat /proc/self/cgroup > /cgroup\n"
    )
    build = "docker build --progress=plain --build-arg N={} -t cached . 2>&1"
    code, out = alice.sh(build_dir(alice, "cache", dockerfile, build.format(1)))
    assert code == 0, out
    # buildx on the daemon's own BuildKit (the "docker" driver), BuildKit's own progress lines
    assert 'building with "default" instance using docker driver' in out, out
    assert "[internal] load build definition from Dockerfile" in out, out
    code, out = alice.sh(
        f"cd /tmp/cache && {build.format(2)} && docker run --rm cached cat /runs /cgroup"
    )
    assert code == 0, out
    lines = out.strip().splitlines()
    # the second build saw the first one's file
    assert [line for line in lines if line.startswith("run-")] == ["run-1", "run-2"], out
    unified = [line for line in lines if line.startswith("0::")]
    assert unified and f"hub-{alice.spec.user}-" in unified[-1], out
    assert "/containers/buildkit/" in unified[-1], out


def test_buildx_compose_and_the_classic_builder_work(users):
    _, alice, _ = users
    dockerfile = f"FROM {IMAGE}\nRUN echo built-by-$BUILDER > /who\n"
    compose = "services:\\n  app:\\n    build: .\\n    image: composed\\n"
    code, out = alice.sh(
        build_dir(alice, "tools", dockerfile.replace("$BUILDER", "buildx"),
                  "docker buildx build -q -t bx . && docker run --rm bx cat /who")
    )  # fmt: skip
    assert code == 0 and "built-by-buildx" in out, out
    code, out = alice.sh(
        build_dir(alice, "tools", dockerfile.replace("$BUILDER", "compose"),
                  f"printf '{compose}' > compose.yaml && docker compose build -q 2>&1 && "
                  "docker run --rm composed cat /who")
    )  # fmt: skip
    assert code == 0 and "built-by-compose" in out, out
    code, out = alice.sh(
        build_dir(alice, "tools", dockerfile.replace("$BUILDER", "classic"),
                  "DOCKER_BUILDKIT=0 docker build -q -t classic . 2>&1 && "
                  "docker run --rm classic cat /who")
    )  # fmt: skip
    assert code == 0 and "built-by-classic" in out, out
    assert "legacy builder is deprecated" in out  # it really was the classic builder


@pytest.mark.parametrize(
    ("flags", "entitlement"),
    [("--network=host", "network.host"),
     ("--allow network.host --network=host", "network.host"),
     ("--allow security.insecure", "security.insecure")],
)  # fmt: skip
def test_host_network_and_insecure_builds_are_refused_by_the_daemon(users, flags, entitlement):
    """A RUN step in the host's network namespace would pass every per-user rule, an insecure one
    is privileged: the daemon (its builder entitlements) refuses both. (Dockerfile's own
    `RUN --network=host` / `--security=insecure` ask for the same entitlements; the 20.10
    daemon's built-in Dockerfile frontend does not parse them, and a newer frontend image would
    come from a registry.)"""
    _, alice, _ = users
    with host_listener("127.0.0.1") as port:
        dockerfile = f"FROM {IMAGE}\nRUN busybox wget -q -T 3 -O- http://127.0.0.1:{port}/\n"
        code, out = alice.sh(
            build_dir(alice, "ent", dockerfile, f"docker buildx build --no-cache {flags} . 2>&1")
        )
    assert code != 0, out
    assert f"granting entitlement {entitlement} is not allowed by build daemon configuration" in out
    assert "host-only-secret" not in out


def test_a_buildkit_build_cannot_reach_another_user_or_the_host(users):
    """Build steps run on the user's bridge (RDH-FORWARD / RDH-INPUT) and what the daemon fetches
    for ADD meets RDH-OUTPUT: bob's service and a host service stay out of reach; alice's own
    service is reachable (the control)."""
    hub, alice, bob = users
    bob.container.exec_run(["sh", "-c", "echo bob-secret > /home/vscode/secret"], user="root")
    alice.container.exec_run(["sh", "-c", "echo alice-own > /home/vscode/own"], user="root")
    net = network.user_network(alice.env.net_id, hub.hub.config.user_subnet_pool)
    with host_listener("0.0.0.0") as port:
        # the host's address on alice's own bridge, where a 0.0.0.0 listener would answer
        host = f"http://{net.bridge_address.ip}:{port}/"
        bob_url = f"http://{bob.env.service_ip}:8080/secret"
        for what, dockerfile in (
            ("RUN", f"FROM {IMAGE}\nRUN busybox wget -q -T 3 -O- {bob_url}\n"),
            ("ADD", f"FROM {IMAGE}\nADD {bob_url} /stolen\nRUN cat /stolen\n"),
            ("host", f"FROM {IMAGE}\nRUN busybox wget -q -T 3 -O- {host}\n"),
        ):
            code, out = alice.sh(
                build_dir(
                    alice, "reach", dockerfile, "docker build --no-cache --progress=plain . 2>&1"
                )
            )
            assert code != 0, f"{what}: {out}"
            assert "bob-secret" not in out and "host-only-secret" not in out, f"{what}: {out}"
            assert "timed out" in out or "connection refused" in out.lower(), f"{what}: {out}"
    own = f"http://{alice.env.service_ip}:8080/own"
    code, out = alice.sh(
        build_dir(alice, "reach", f"FROM {IMAGE}\nRUN busybox wget -q -O- {own}\n",
                  "docker build --no-cache --progress=plain . 2>&1")
    )  # fmt: skip
    assert code == 0 and "alice-own" in out, out
