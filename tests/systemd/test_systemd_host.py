"""The production path under a real systemd: a Debian 12 whose PID 1 is systemd, booted as a
container on the host dockerd (``scripts/build-systemd-image.sh``), with the checkout mounted in.

An operator's steps, in order, each a test: ``hub install`` of a compose file (which enables and
starts ``rediacc-hub``), an OAuth login through the hub's proxy (the real npm OIDC provider on the
host, an HTTP client following the redirects as a browser does), the per-user daemon and policy
units in ``rediacc.slice`` with the template's limits as unit properties, an idle checkpoint and
a restore (real CRIU), a restart of the hub that adopts the running user, ``systemctl stop`` of
the hub that leaves the environment running, ``hub stop`` and ``hub gc`` removing the stopped
user's data-root, and ``hub uninstall``.

The container shares the host's cgroup tree (``--cgroupns=host``, as systemd in a container on
this hybrid-cgroup host needs); its network, mounts and processes are its own. Everything it
made is removed afterwards, on failure too: the container, its cgroups (systemd's and docker's
groups below the container's own), the data directory. A container that cannot boot fails the
module: this test never skips.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.support.oidc_provider import free_port, npm_oidc_provider
from tests.support.webclient import provider_login

pytestmark = [
    pytest.mark.docker,
    pytest.mark.criu,
    pytest.mark.oidc,
    pytest.mark.slow,
    pytest.mark.timeout(300),
]

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "rediacc-hub/systemd-test:latest"
DOMAIN = "hub.test"
PORT = 7112
USER = "alice"
IDLE_TIMEOUT = 15  # seconds
NET_ID = 32768 + 64 * (2000 + os.getpid() % 1000)
CLIENT_SECRET = "systemd-test-client-secret"
WORKSPACES = "/srv/hub/workspaces"
STATE = "/var/lib/rediacc/hub"  # the hub's default --state-dir (hub stop finds its token there)
# Docker's defaults plus what systemd, dockerd and CRIU need; --privileged fails on this machine
# kind (its capability bounding set lacks CAP_SYS_RESOURCE). SYS_TIME: CRIU restores the time
# namespace's clock offsets ("Unable to set a monotonic clock offset" without it).
CAPS = ("SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE", "SYS_TIME")
COMPOSE = f"""\
services:
  hub:
    env_file:
      - ./hub/.env
    command:
      - hub
      - start
      - --docker-socket=${{DOCKER_SOCKET}}
      - --port={PORT}
      - --base-domain=${{HUB_DOMAIN}}
      - --workspace-dir={WORKSPACES}
      - --idle-timeout={IDLE_TIMEOUT}s
      - --checkpoint
    labels:
      - "rediacc.install_as=systemd"
      - "rediacc.hub.route.term=7681"
      - "rediacc.hub.route.code=8080"
      - "rediacc.hub.image=rediacc-hub/env:latest"
      - "rediacc.hub.command=ttyd --writable --port 7681 bash & exec python3 -m http.server 8080 --bind __SERVICE_IP__ --directory /workspace"
      - "rediacc.hub.user=root"
      - "rediacc.hub.docker=per-user"
      - "rediacc.hub.limits.cpu=150%"
      - "rediacc.hub.limits.memory=700M"
"""


def run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode:
        raise AssertionError(
            f"{shlex.join(argv)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


@dataclass
class SystemdHost:
    """The booted container and what the tests learn about it on the way."""

    name: str
    cid: str
    ip: str
    data: Path  # host directory mounted at /srv/hub
    issuer: str
    timings: dict[str, float] = field(default_factory=dict)
    client: httpx.Client | None = None

    def sh(
        self, command: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        """Run ``command`` with /bin/sh in the container (as root, as an operator would)."""
        return run("docker", "exec", self.name, "sh", "-c", command, check=check, timeout=timeout)

    def out(self, command: str) -> str:
        return self.sh(command).stdout.strip()

    def show(self, unit: str, *props: str) -> dict[str, str]:
        args = " ".join(f"-p {p}" for p in props)
        text = self.out(f"systemctl show {args} {shlex.quote(unit)}")
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def record(self, user: str = USER) -> dict:
        return json.loads(self.out(f"cat {STATE}/users/{user}.json"))

    def docker(self, net_id: int, command: str) -> str:
        """The docker CLI against the user's own daemon, inside the container."""
        return self.out(f"docker -H unix:///run/rediacc/hub/{net_id}/docker.sock {command}")

    def url(self, prefix: str, path: str = "/") -> str:
        return f"http://{prefix}.{DOMAIN}:{PORT}{path}"

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(
                    f"http://{self.ip}:{PORT}/_hub/health",
                    headers={"Host": f"term.{DOMAIN}:{PORT}"},
                    timeout=2,
                )
                if r.status_code == 200 and r.json().get("ready"):
                    return
            time.sleep(0.3)
        logs = self.sh("journalctl -u rediacc-hub --no-pager | tail -40", check=False).stdout
        raise AssertionError(f"the hub did not answer /_hub/health within {timeout} s:\n{logs}")

    def wait_state(self, state: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        rec: dict = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(AssertionError, ValueError):
                rec = self.record()
                if rec.get("state") == state:
                    return rec
            time.sleep(0.5)
        raise AssertionError(f"{USER} did not reach state {state!r} in {timeout} s: {rec}")


class HubTransport(httpx.HTTPTransport):
    """Sends ``*.hub.test`` to the hub in the container, keeping the Host header and the URL the
    cookie jar sees (Python does not resolve the test domain)."""

    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host.endswith("." + DOMAIN):
            request = httpx.Request(
                request.method,
                request.url.copy_with(host=self.address),
                headers=request.headers,
                stream=request.stream,
            )
        return super().handle_request(request)


def bridge_gateway() -> str:
    """The host's address on docker's default bridge: the container reaches the provider there."""
    out = run("docker", "network", "inspect", "bridge", "-f", "{{json .IPAM.Config}}").stdout
    gateways = [c.get("Gateway") for c in json.loads(out) if c.get("Gateway")]
    if gateways:
        return gateways[0]
    return json.loads(run("ip", "-j", "-4", "addr", "show", "docker0").stdout)[0]["addr_info"][0][
        "local"
    ]


def cgroup_leftovers(cid: str) -> list[Path]:
    """The container's groups in every hierarchy (--cgroupns=host shares them with the host)."""
    root = Path("/sys/fs/cgroup")
    return [p for p in root.glob(f"*/docker/{cid}") if p.is_dir()] + [
        p for p in [root / "docker" / cid] if p.is_dir()
    ]


def remove_cgroups(cid: str, timeout: float = 10) -> list[Path]:
    """Remove what systemd and the inner daemons made below the container's groups, deepest
    first (docker removes only its own group, and only when it is empty); the groups left."""
    deadline = time.monotonic() + timeout
    while True:
        for top in cgroup_leftovers(cid):
            dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            for d in [*dirs, top]:
                with contextlib.suppress(OSError):
                    d.rmdir()
        left = cgroup_leftovers(cid)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


@pytest.fixture(scope="module")
def host(tmp_path_factory) -> Iterator[SystemdHost]:
    if run("docker", "image", "inspect", IMAGE, check=False).returncode:
        pytest.fail(
            f"the image {IMAGE} is missing: run scripts/build-systemd-image.sh (test.sh does)"
        )
    data = tmp_path_factory.mktemp("systemd-host")
    (data / "repo/hub").mkdir(parents=True)
    name = f"rdh-systemd-{os.getpid()}"
    gateway = bridge_gateway()
    port = free_port()
    clients = [
        {
            "client_id": "hub",
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [
                f"http://{p}.{DOMAIN}:{PORT}/_hub/oauth/callback" for p in ("term", "code")
            ],
        }
    ]
    t0 = time.monotonic()
    cid = ""
    with npm_oidc_provider(clients=clients, host=gateway, port=port) as issuer:
        try:
            argv = ["docker", "run", "-d", "--name", name, "--hostname", "hub-systemd"]
            for cap in CAPS:
                argv += ["--cap-add", cap]
            argv += [
                "--security-opt", "seccomp=unconfined",
                "--security-opt", "apparmor=unconfined",
                # /proc/sys writable: CRIU restores a container's hostname through
                # /proc/sys/kernel/hostname ("Read-only file system" otherwise)
                "--security-opt", "systempaths=unconfined",
                "--cgroupns=host",
                "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw",
                "--tmpfs", "/run", "--tmpfs", "/run/lock",
                # the checkout (the venv in the image has it on its path), CRIU as setup-host.sh
                # installed it, the data directory on the host's filesystem (overlay on overlay
                # would fail dockerd), the host daemon as --docker-socket (the image source)
                "-v", f"{ROOT}:/opt/rediacc-hub/src:ro",
                "-v", "/opt/rediacc/criu:/opt/rediacc/criu:ro",
                "-v", f"{data}:/srv/hub",
                "-v", "/var/run/docker.sock:/run/host-docker.sock",
                IMAGE,
            ]  # fmt: skip
            cid = run(*argv).stdout.strip()
            ip = run(
                "docker", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", name
            ).stdout.strip()
            box = SystemdHost(name=name, cid=cid, ip=ip, data=data, issuer=issuer)
            deadline = time.monotonic() + 60
            state = ""
            while time.monotonic() < deadline:
                state = box.sh("systemctl is-system-running", check=False).stdout.strip()
                if state in ("running", "degraded"):
                    break
                time.sleep(0.3)
            failed = box.sh("systemctl --failed --no-legend --plain", check=False).stdout
            assert state == "running", f"systemd in the container is {state!r}; failed: {failed}"
            box.timings["boot"] = time.monotonic() - t0
            # CRIU's log of the last dump or restore where the test can keep it (containerd
            # deletes its own copy with the task): copied to the test artifacts at the end
            box.sh(
                "printf 'tcp-established\\nlog-file /srv/hub/criu-last.log\\n' > /etc/criu/runc.conf"
            )
            yield box
        finally:
            if cid:
                if box_logs := run(
                    "docker", "exec", name, "journalctl", "--no-pager", "-n", "300",
                    check=False, timeout=30,
                ).stdout:  # fmt: skip
                    artifacts = os.environ.get("HUB_TEST_ARTIFACTS")
                    if artifacts:
                        Path(artifacts, "systemd-host-journal.txt").write_text(box_logs)
                        with contextlib.suppress(OSError):
                            Path(artifacts, "systemd-host-criu.log").write_bytes(
                                (data / "criu-last.log").read_bytes()
                            )
                # systemd stops its units (the daemons, their containers) on SIGRTMIN+3
                run("docker", "kill", "-s", "SIGRTMIN+3", name, check=False)
                run("docker", "wait", name, check=False, timeout=40)
            run("docker", "rm", "-f", name, check=False)
            left = remove_cgroups(cid) if cid else []
            subprocess.run(["rm", "-rf", "--one-file-system", str(data)], check=False)
            assert not left, f"cgroups left by the systemd container: {left}"


@pytest.fixture(scope="module")
def state() -> dict:
    """What one test finds and a later one checks (the tests run in file order)."""
    return {}


def test_hub_install_enables_and_starts_the_hub(host: SystemdHost):
    (host.data / "repo/docker-compose.yml").write_text(COMPOSE)
    env = {
        "DOCKER_SOCKET": "unix:///run/host-docker.sock",
        "HUB_DOMAIN": DOMAIN,
        "HUB_OAUTH_CLIENT_ID": "hub",
        "HUB_OAUTH_CLIENT_SECRET": CLIENT_SECRET,
        "HUB_OAUTH_AUTHORIZE_URL": f"{host.issuer}/auth",
        "HUB_OAUTH_TOKEN_URL": f"{host.issuer}/token",
        "HUB_OAUTH_USERINFO_URL": f"{host.issuer}/me",
        "HUB_OAUTH_USERINFO_PATH": "preferred_username",
        "HUB_SESSION_SECRET": "5e" * 32,
    }
    (host.data / "repo/hub/.env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    t0 = time.monotonic()
    out = host.out("cd /srv/hub/repo && hub install docker-compose.yml")
    assert "started: rediacc-hub.service" in out, out
    assert host.out("systemctl is-enabled rediacc-hub") == "enabled"
    assert host.out("systemctl is-active rediacc-hub") == "active"
    # the one process every request goes through gets 3x another service's CPU share
    assert host.show("rediacc-hub.service", "CPUWeight") == {"CPUWeight": "300"}
    host.wait_healthy()
    host.timings["install"] = time.monotonic() - t0


def test_login_through_the_proxy(host: SystemdHost, state: dict):
    t0 = time.monotonic()
    # a decoy: a unit with the name older hubs gave alice's daemon, running something else (as
    # another hub's, or a stale one, would); the hub must neither adopt nor stop it
    host.sh(
        "systemd-run --quiet --unit=rediacc-hub-dockerd-alice.service --slice=rediacc.slice "
        "sleep infinity"
    )
    # alice comes back to a data-root an earlier hub left (its marker holds her network ID): the
    # unit names must carry that ID. It is far from 32768, the first ID, which hubs of other
    # tests on this host hand out: their policy-socket and daemon paths then never coincide.
    host.sh(
        f"install -d -m 0755 {WORKSPACES}/{USER}-docker && "
        f"echo {NET_ID} > {WORKSPACES}/{USER}-docker/.networkid"
    )
    client = httpx.Client(
        transport=HubTransport(host.ip),
        follow_redirects=True,
        headers={"Accept": "text/html", "Sec-Fetch-Mode": "navigate"},
        timeout=60,
    )
    host.client = client
    r = client.get(host.url("code"))
    assert r.url.host == host.issuer.split("//")[1].split(":")[0], r.url
    r = provider_login(client, r, USER)
    assert r.url.host == f"code.{DOMAIN}", r.url
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        p = client.get(host.url("code", "/_hub/api/progress"), headers={"Sec-Fetch-Mode": "cors"})
        if p.status_code == 200 and p.json().get("ready"):
            break
        assert p.json().get("state") != "failed", p.json()
        time.sleep(0.5)
    r = client.get(host.url("code"))
    # the environment's own page: python's directory listing of the user's workspace
    assert r.status_code == 200 and "Directory listing for /" in r.text, r.text[:300]
    rec = host.record()
    assert rec["state"] == "running" and rec["net_id"] == NET_ID, rec
    state["net_id"] = rec["net_id"]
    host.timings["login and first start"] = time.monotonic() - t0


def test_daemon_and_policy_units_in_rediacc_slice_with_the_limits(host: SystemdHost, state: dict):
    host.client.get(host.url("code"))  # activity: the idle timer starts again
    net_id = state["net_id"]
    daemon = f"rediacc-hub-dockerd-{USER}-{net_id}.service"
    policy = f"rediacc-hub-policy-{USER}-{net_id}.service"
    containers = f"rediacc-hub-{USER}\\x2d{net_id}.slice"
    d = host.show(daemon, "ActiveState", "Slice", "CPUQuotaPerSecUSec", "MainPID", "ControlGroup")
    assert d["ActiveState"] == "active" and d["Slice"] == "rediacc.slice", d
    assert d["CPUQuotaPerSecUSec"] == "1.500000s", d  # rediacc.hub.limits.cpu=150%
    p = host.show(policy, "ActiveState", "Slice", "BindsTo")
    assert p["ActiveState"] == "active" and p["Slice"] == "rediacc.slice", p
    assert daemon in p["BindsTo"], p
    s = host.show(containers, "ActiveState", "Slice", "MemoryMax", "CPUQuotaPerSecUSec", "TasksMax")
    assert s["ActiveState"] == "active" and s["Slice"] == "rediacc-hub.slice", s
    assert s["MemoryMax"] == str(700 << 20), s  # rediacc.hub.limits.memory=700M
    assert s["CPUQuotaPerSecUSec"] == "1.500000s" and s["TasksMax"].isdigit(), s
    # all users together yield the CPU to the host's services (--users-cpu-weight, default 20)
    assert host.show("rediacc.slice", "CPUWeight") == {"CPUWeight": "20"}
    # the environment container is a scope in the user's slice (the limits bite there)
    cid = host.docker(net_id, f"inspect -f '{{{{.Id}}}}' hub-{USER}")
    scope = host.show(f"docker-{cid}.scope", "Slice", "ActiveState")
    assert scope == {"Slice": containers, "ActiveState": "active"}, scope
    # dockerd runs in the unit's "daemon" group, which the rules for its own traffic match
    group = host.out(f"sed -n 's/^0:://p' /proc/{d['MainPID']}/cgroup")
    assert group == f"{d['ControlGroup']}/daemon", (group, d["ControlGroup"])
    rules = host.out("iptables -S RDH-OUTPUT")
    assert f'--path "{group.lstrip("/")}"' in rules or f"--path {group.lstrip('/')}" in rules, rules
    # beside the system containerd (docker.io runs containerd.service), the user's dockerd has a
    # containerd of its own, in the same group, whose shims run its containers there too; the
    # system containerd holds nothing of the user's
    assert host.out("systemctl is-active containerd.service") == "active"
    argv = host.out(f"tr '\\0' '\\n' < /proc/{d['MainPID']}/cmdline").splitlines()
    own = f"/run/rediacc/hub/{net_id}/containerd"
    assert argv[argv.index("--containerd") + 1] == f"{own}/containerd.sock", argv
    pid = host.out(f"cat {own}/containerd.pid")
    assert host.out(f"sed -n 's/^0:://p' /proc/{pid}/cgroup") == group
    shims = host.out(f"pgrep -f '[c]ontainerd-shim-runc-v2 .*-address {own}/containerd.sock'")
    assert shims, "no shim of the user's own containerd"
    for shim in shims.split():
        assert host.out(f"sed -n 's/^0:://p' /proc/{shim}/cgroup") == group
    assert host.out("ctr --address /run/containerd/containerd.sock namespaces ls -q") == ""
    # the decoy with the old unit name is untouched, and no unit without the network ID was made
    assert host.out("systemctl is-active rediacc-hub-dockerd-alice.service") == "active"
    units = host.out("ls /run/systemd/system")
    assert daemon in units and f"{USER}.service" not in units.replace(daemon, ""), units


def test_idle_checkpoint_and_restore(host: SystemdHost, state: dict):
    net_id = state["net_id"]
    t0 = time.monotonic()
    rec = host.wait_state("checkpointed", IDLE_TIMEOUT + 30)
    assert "checkpoint_error" not in rec, rec
    host.timings["idle checkpoint (incl. the idle wait)"] = time.monotonic() - t0
    daemon = f"rediacc-hub-dockerd-{USER}-{net_id}.service"
    # the idle stop took the daemon down, and its runtime units with it
    assert host.show(daemon, "ActiveState")["ActiveState"] in ("inactive", "failed")
    assert daemon not in host.out("ls /run/systemd/system")
    # ... and the user's own containerd after it (ExecStopPost)
    own = f"/run/rediacc/hub/{net_id}/containerd/containerd.toml"
    assert not host.sh(f"pgrep -f '[c]ontainerd --config {own}'", check=False).stdout.strip()
    t0 = time.monotonic()
    r = host.client.get(host.url("code"))
    deadline = time.monotonic() + 90
    while "Directory listing" not in r.text and time.monotonic() < deadline:
        time.sleep(0.5)
        r = host.client.get(host.url("code"))
    assert r.status_code == 200 and "Directory listing" in r.text, r.text[:300]
    host.timings["restore on the next request"] = time.monotonic() - t0
    rec = host.record()
    # restored, not started afresh: the hub verified that the restored processes are the dumped
    # ones, with their memory (docs/checkpoint.md); a failed restore would have set restore_error
    # and started a new container on the same workspace
    assert rec["state"] == "running" and "restore_error" not in rec, rec
    assert "restored with their memory" in rec["restored"]["detail"], rec["restored"]
    host.timings["restore by CRIU"] = rec["restored"]["seconds"]


def test_hub_restart_adopts_the_running_user(host: SystemdHost, state: dict):
    net_id = state["net_id"]
    daemon = f"rediacc-hub-dockerd-{USER}-{net_id}.service"
    policy = f"rediacc-hub-policy-{USER}-{net_id}.service"
    before = (
        host.show(daemon, "MainPID")["MainPID"],
        host.show(policy, "MainPID")["MainPID"],
        host.docker(net_id, f"inspect -f '{{{{.State.StartedAt}}}}' hub-{USER}"),
    )
    t0 = time.monotonic()
    host.sh("systemctl restart rediacc-hub")
    host.wait_healthy()
    r = host.client.get(host.url("code"))
    assert r.status_code == 200 and "Directory listing" in r.text, r.text[:300]
    host.timings["hub restart until served"] = time.monotonic() - t0
    after = (
        host.show(daemon, "MainPID")["MainPID"],
        host.show(policy, "MainPID")["MainPID"],
        host.docker(net_id, f"inspect -f '{{{{.State.StartedAt}}}}' hub-{USER}"),
    )
    assert after == before, (before, after)


def test_systemctl_stop_of_the_hub_leaves_environments_running(host: SystemdHost, state: dict):
    net_id = state["net_id"]
    service_ip = host.record()["service_ip"]
    host.sh("systemctl stop rediacc-hub")
    assert host.sh("systemctl is-active rediacc-hub", check=False).stdout.strip() == "inactive"
    daemon = f"rediacc-hub-dockerd-{USER}-{net_id}.service"
    assert host.show(daemon, "ActiveState")["ActiveState"] == "active"
    status = host.out(
        "python3 -c 'import urllib.request, sys; "
        f'print(urllib.request.urlopen("http://{service_ip}:8080/", timeout=5).status)\''
    )
    assert status == "200"
    host.sh("systemctl start rediacc-hub")
    host.wait_healthy()


def test_hub_gc_removes_a_stopped_users_data_root(host: SystemdHost, state: dict):
    net_id = state["net_id"]
    # the decoy of the login test goes: a unit of that name would count as configured (a unit
    # file in /run/systemd/transient), and GC keeps what is in doubt
    host.sh("systemctl stop rediacc-hub-dockerd-alice.service")
    t0 = time.monotonic()
    assert host.out(f"hub stop {USER}").startswith(f"{USER}: "), "hub stop failed"
    rec = host.record()
    assert rec["state"] in ("stopped", "checkpointed"), rec
    # no unit of the stopped user is left, not even a runtime file: nothing keeps GC away
    assert f"-{net_id}" not in host.out("ls /run/systemd/system")
    time.sleep(1.5)  # older than --max-age=1s
    out = host.sh(f"hub gc {WORKSPACES} --max-age=1s --json", check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    entries = json.loads(out.stdout)["entries"]
    root = next(e for e in entries if e["kind"] == "data-root" and e["user"] == USER)
    assert root["action"] == "remove", f"{root['action']}: {root['reason']}"
    assert root["outcome"].startswith("removed"), root["outcome"]
    assert not (host.data / f"workspaces/{USER}-docker").exists()
    assert (host.data / f"workspaces/{USER}").is_dir()  # the workspace itself is never GC's
    host.timings["hub stop and gc"] = time.monotonic() - t0


def test_hub_uninstall(host: SystemdHost):
    out = host.out("cd /srv/hub/repo && hub uninstall docker-compose.yml")
    assert "preserved" in out, out
    assert host.sh("systemctl is-active rediacc-hub", check=False).stdout.strip() == "inactive"
    assert host.sh("test -e /etc/systemd/system/rediacc-hub.service", check=False).returncode
    assert (host.data / f"workspaces/{USER}").is_dir()
    print("timings (s):", {k: round(v, 1) for k, v in host.timings.items()})
