"""The seed's example stacks, run the way their users run them: in Chromium, through the whole
product (``hub start``, per-user dockerd, policy socket, npm oidc-provider, real CRIU).

- **An ephemeral web app on an image without bash** (the seed's "Simple Web Application
  (Ephemeral)", ``node:22-alpine``): Debian 13's nodejs with bash removed
  (``scripts/build-test-image.sh nobash``; /bin/sh is dash), a dev server started with the seed's
  shape of command. It starts fresh on every login: a new process, an empty workspace.
- **The multi-template stack**: one user switches between a Python template (bash, ttyd) and a
  Node template (no bash) with ``/_hub/login?template=``, and the workspace goes along.
- **The hooks**: ``on_create`` clones a repository from a git server the test starts, and
  ``pre_dump``/``post_restore`` stop and restart a daemon that cannot be checkpointed (a
  ``docker events`` watcher: its connection to the docker socket, a unix socket outside the
  container, makes CRIU refuse the dump).

Where the git server runs: an environment reaches its own user's block and the world, nothing
else (docs/security.md: other users, the host and the host daemon's bridges are dropped). With no
world here, the server (Python's http.server over a bare repository: git's "dumb" HTTP protocol)
runs as a container on the user's own daemon, on a network at a fixed address in the user's pool
(``B.130``), and the hook finds it from ``SERVICE_IP`` (``B.2``) in POSIX sh.

Environments run as root where CRIU must dump them (this machine's root lacks
CAP_SYS_RESOURCE: docs/checkpoint.md).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

from tests.e2e import pages
from tests.support.browser import goto
from tests.support.hubprocess import CLIENT_SECRET, HubSite, new_site
from tests.support.oidc_provider import free_port, npm_oidc_provider

pytestmark = [
    pytest.mark.docker,
    pytest.mark.criu,
    pytest.mark.browser,
    pytest.mark.oidc,
    pytest.mark.slow,
    pytest.mark.timeout(420),
]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "e2e"
IDLE_TIMEOUT = 10  # seconds
ROUTES = {"app": 3000, "code": 8080, "term": 7681}
ENV_IMAGE = "rediacc-hub/env:latest"
NOBASH_IMAGE = "rediacc-hub/test-nobash:latest"
CLI_IMAGE = "rediacc-hub/test-docker-cli:latest"
# The seed's ephemeral command, with the app copied in where the seed runs `npm install`.
NODE_COMMAND = (
    "cd /workspace && cp /opt/app/server.js . && exec node server.js --host __SERVICE_IP__"
)
PY_COMMAND = (
    "ttyd --writable -t rendererType=dom --port 7681 bash & "
    "exec python3 -m http.server 8080 --bind __SERVICE_IP__ --directory /workspace"
)
# A watcher holding a connection to the docker socket: started so that tini (PID 1) is its
# parent, with every stream redirected (a hook's exec ends only when its output closes).
WATCH = (
    "(docker events --format '{{.Action}}' >> /workspace/events.log 2>&1 </dev/null & "
    "echo $! > /run/watcher.pid)"
)
PROJECT_COMMAND = f"{WATCH}; exec busybox httpd -f -p __SERVICE_IP__:8080 -h /workspace"
ON_CREATE = "git clone -q http://${SERVICE_IP%.2}.130/project.git /workspace/project"
PRE_DUMP = (
    "pid=$(cat /run/watcher.pid); kill $pid; i=0; "
    "while kill -0 $pid 2>/dev/null && [ $i -lt 50 ]; do i=$((i+1)); sleep 0.1; done; "
    "echo stopped >> /workspace/hooks.log"
)
POST_RESTORE = f"{WATCH}; echo restarted >> /workspace/hooks.log"


def labels(path: Path) -> Path:
    t = "rediacc.hub.templates"
    pairs = {
        **{f"rediacc.hub.route.{p}": str(port) for p, port in ROUTES.items()},
        "rediacc.hub.docker": "per-user",
        "rediacc.hub.template": "py",
        f"{t}.py.image": ENV_IMAGE,
        f"{t}.py.command": PY_COMMAND,
        f"{t}.py.user": "vscode",
        f"{t}.node.image": NOBASH_IMAGE,
        f"{t}.node.command": NODE_COMMAND,
        f"{t}.node.user": "1000:1000",
        # the seed's "Simple Web Application (Ephemeral)", word for word but the image and app
        f"{t}.web.image": NOBASH_IMAGE,
        f"{t}.web.command": NODE_COMMAND,
        f"{t}.web.user": "1000:1000",
        f"{t}.web.mode": "ephemeral",
        f"{t}.project.image": CLI_IMAGE,
        f"{t}.project.command": PROJECT_COMMAND,
        f"{t}.project.user": "root",
        f"{t}.project.checkpoint": "true",
        f"{t}.project.hook.on_create": ON_CREATE,
        f"{t}.project.hook.checkpoint.pre_dump": PRE_DUMP,
        f"{t}.project.hook.checkpoint.post_restore": POST_RESTORE,
    }
    lines = ["version: 1", "service: hub", "labels:"]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in pairs.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class StacksSite(HubSite):
    @property
    def flags(self) -> dict:
        return {**super().flags, "idle_timeout": f"{IDLE_TIMEOUT}s"}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    for kind in ("nobash", "docker-cli"):
        subprocess.run([str(ROOT / "scripts/build-test-image.sh"), kind], check=True)
    root = tmp_path_factory.mktemp("e2e-stacks")
    port = free_port()
    redirects = [f"http://{p}.localhost:{port}/_hub/oauth/callback" for p in ROUTES]
    client = {"client_id": "hub", "client_secret": CLIENT_SECRET, "redirect_uris": redirects}
    with npm_oidc_provider([client], groups={}) as issuer:
        base = new_site(root, issuer, "localhost", port)
        s = StacksSite(root=root, port=port, domain="localhost",
                       labels=labels(root / "hub.labels.yaml"), env=base.env)  # fmt: skip
        s.start()
        try:
            yield s
        finally:
            s.stop()
            s.cleanup()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"stacks-{name}.png"))


def login(page, site: HubSite, prefix: str, user: str, template: str) -> None:
    """Pick ``template`` at login, the seed's way; the provider's form the first time only."""
    pages.login(page, site, prefix, user, f"/_hub/login?template={template}", if_asked=True)


def record(site: HubSite, user: str) -> dict:
    path = site.root / "state" / "users" / f"{user}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def wait_record(site: HubSite, user: str, timeout: float = 90, **want) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        rec = record(site, user)
        if all(rec.get(k) == v for k, v in want.items()):
            return rec
        if time.monotonic() > deadline:
            raise AssertionError(f"{user}: {rec} is not {want}:\n{site.read_log()[-3000:]}")
        time.sleep(0.25)


def daemon(site: HubSite, user: str) -> docker.DockerClient:
    """The user's own dockerd, as the test (not the user) reaches it."""
    return docker.DockerClient(base_url=record(site, user)["docker_url"], version="1.41")


def environment(site: HubSite, user: str):
    client = daemon(site, user)
    try:
        return client.containers.get(record(site, user)["container_id"]).attrs
    finally:
        client.close()


def test_ephemeral_web_app_without_bash_starts_fresh_on_every_login(site, chromium):
    context = chromium.new_context()
    page = context.new_page()
    login(page, site, "app", "erin", "web")
    page.wait_for_selector("#boot", timeout=120_000)
    first_boot = page.inner_text("#boot")
    assert page.inner_text("#notes") == ""
    page.fill("input[name=note]", "written in the first session")
    page.click("button")
    page.wait_for_selector("text=written in the first session")
    shot(page, "ephemeral-1")
    attrs = environment(site, "erin")
    assert attrs["Config"]["Entrypoint"] == ["/bin/sh", "-c"]  # the image has no bash
    assert attrs["Config"]["Labels"]["rediacc.hub.shell"] == "/bin/sh"
    assert attrs["Config"]["Labels"]["rediacc.hub.mode"] == "ephemeral"

    # idle: the environment is stopped and removed with its tmpfs workspace
    wait_record(site, "erin", timeout=IDLE_TIMEOUT + 60, state="stopped")

    # the next visit starts it fresh: a new process and an empty workspace
    goto(page, site.url("app"))
    page.wait_for_selector("#boot", timeout=120_000)
    assert page.inner_text("#boot") != first_boot
    assert page.inner_text("#notes") == ""
    assert "notes.txt" not in page.inner_text("#files").split()
    shot(page, "ephemeral-2")
    context.close()


def test_switching_templates_at_login_keeps_the_workspace(site, chromium):
    context = chromium.new_context()
    page = context.new_page()
    login(page, site, "term", "dave", "py")
    page.wait_for_selector(".xterm-rows", timeout=120_000)
    page.click(".xterm")
    page.keyboard.type("echo from-python > /workspace/keep.txt; echo do''ne\n", delay=5)
    page.wait_for_function(
        "() => document.querySelector('.xterm-rows').innerText.includes('done')", timeout=20_000
    )
    assert environment(site, "dave")["Config"]["Labels"]["rediacc.hub.shell"] == "/bin/bash"

    # to the Node template (no bash): the same workspace, seen by the app
    login(page, site, "app", "dave", "node")
    page.wait_for_selector("#files", timeout=120_000)
    assert "keep.txt" in page.inner_text("#files").split()
    page.fill("input[name=note]", "written from node")
    page.click("button")
    page.wait_for_selector("text=written from node")
    labels_now = environment(site, "dave")["Config"]["Labels"]
    assert labels_now["rediacc.hub.template"] == "node"
    assert labels_now["rediacc.hub.shell"] == "/bin/sh"
    shot(page, "switch-node")

    # and back: both files are there, served by the Python template
    login(page, site, "code", "dave", "py")
    page.wait_for_url(site.url("code", "/"), timeout=120_000)
    page.wait_for_selector("text=notes.txt", timeout=120_000)
    goto(page, site.url("code", "/keep.txt"))
    assert page.inner_text("body").strip() == "from-python"
    goto(page, site.url("code", "/notes.txt"))
    assert page.inner_text("body").strip() == "written from node"
    assert record(site, "dave")["template"] == "py"
    context.close()


def git_repository(tmp: Path) -> Path:
    """A bare repository with one commit, ready for git's dumb HTTP protocol."""
    work, bare = tmp / "work", tmp / "git" / "project.git"
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.test",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.test",
           "HOME": str(tmp), "PATH": "/usr/bin:/bin"}  # fmt: skip
    work.mkdir(parents=True)
    (work / "README.md").write_text("cloned from the test's git server\n")
    for args in (["init", "-q", "-b", "main", str(work)],
                 ["-C", str(work), "add", "README.md"],
                 ["-C", str(work), "commit", "-q", "-m", "first"],
                 ["clone", "-q", "--bare", str(work), str(bare)],
                 ["-C", str(bare), "update-server-info"]):  # fmt: skip
        subprocess.run(["git", *args], check=True, env=env)
    return bare.parent


def start_git_server(site: HubSite, user: str, repos: Path) -> None:
    """http.server over ``repos`` on the user's own daemon, at B.130 of the user's block."""
    service_ip = ipaddress.ip_address(record(site, user)["service_ip"])  # B.2
    block = ipaddress.ip_network(f"{service_ip}/24", strict=False)
    client = daemon(site, user)
    try:
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(
            subnet=str(ipaddress.ip_network(f"{block[128]}/26")), gateway=str(block[129]))])  # fmt: skip
        client.networks.create("gitnet", driver="bridge", ipam=ipam)
        client.api.create_container(
            ENV_IMAGE,
            ["python3", "-m", "http.server", "80", "--directory", "/srv/git"],
            name="gitd",
            host_config=client.api.create_host_config(binds=[f"{repos}:/srv/git:ro"]),
            networking_config=client.api.create_networking_config(
                {"gitnet": client.api.create_endpoint_config(ipv4_address=str(block[130]))}
            ),
        )
        client.api.start("gitd")
    finally:
        client.close()


def docker_event(site: HubSite, user: str) -> None:
    """Something for the watcher to see: a container created and removed on the user's daemon."""
    client = daemon(site, user)
    try:
        c = client.api.create_container(ENV_IMAGE, ["true"])
        client.api.remove_container(c["Id"])
    finally:
        client.close()


def test_hooks_clone_a_repository_and_carry_a_daemon_across_checkpoints(site, chromium, tmp_path):
    context = chromium.new_context()
    page = context.new_page()
    login(page, site, "code", "carol", "py")
    page.wait_for_selector("text=Directory listing", timeout=120_000)
    start_git_server(site, "carol", git_repository(tmp_path))

    # the project template: on_create clones, the command starts the watcher and a file server
    login(page, site, "code", "carol", "project")
    page.wait_for_url(site.url("code", "/"), timeout=120_000)
    goto(page, site.url("code", "/project/README.md"))  # the progress page until it is there
    page.wait_for_selector("text=cloned from the test's git server", timeout=120_000)
    rec = record(site, "carol")
    assert rec["on_create"]["exit_code"] == 0 and rec["template"] == "project"
    workspace = site.root / "workspaces" / "carol"
    docker_event(site, "carol")
    deadline = time.monotonic() + 20
    while "create" not in (workspace / "events.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "create" in (workspace / "events.log").read_text()
    page.close()

    # idle: pre_dump stops the watcher, CRIU dumps, the daemon stops
    rec = wait_record(site, "carol", timeout=IDLE_TIMEOUT + 90, state="checkpointed")
    assert (workspace / "hooks.log").read_text().split() == ["stopped"]
    assert not rec.get("checkpoint_error"), rec

    # back: restored, and post_restore started the watcher again
    page = context.new_page()
    goto(page, site.url("code", "/project/README.md"))
    page.wait_for_selector("text=cloned from the test's git server", timeout=120_000)
    rec = wait_record(site, "carol", timeout=30, state="running")
    assert "processes restored with their memory" in rec["restored"]["detail"], rec
    assert not rec["restored"]["hook_error"], rec
    assert (workspace / "hooks.log").read_text().split() == ["stopped", "restarted"]
    before = (workspace / "events.log").read_text().count("destroy")
    docker_event(site, "carol")
    deadline = time.monotonic() + 20
    while (workspace / "events.log").read_text().count("destroy") == before:
        assert time.monotonic() < deadline, (workspace / "events.log").read_text()
        time.sleep(0.2)
    shot(page, "hooks-restored")
    context.close()
