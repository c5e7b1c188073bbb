"""``hub install`` / ``hub uninstall`` into a temporary root, as an operator runs them.

The artefacts are checked the way their consumers read them: the unit with systemd's own
``systemd-analyze verify`` (this machine has systemd's tools but PID 1 is not systemd), the labels
file through the hub's configuration loader, the Traefik file as YAML against the labels.
"""

from __future__ import annotations

import configparser
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hubcli.app import app
from hubcontrol import install as inst
from hubcontrol.compose import parse_env_file
from hubcontrol.config import load_config, parse_start_flags

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "install"
ENV = {
    "DOCKER_SOCKET": "/var/run/docker.sock",
    "REDIACC_NETWORK_ID": "2816",
    "REDIACC_WORKING_DIR": "/mnt/rediacc/mounts/0123",
}


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the seed's Quick Start repo (compose file and hub/.env) and its variables."""
    dest = tmp_path / "repo"
    shutil.copytree(FIXTURES / "quickstart", dest)
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HUB_DOMAIN", raising=False)
    return dest


def run(*args: str):
    return CliRunner().invoke(app, [*args], catch_exceptions=False)


def test_install_writes_valid_artefacts(repo: Path, tmp_path: Path):
    root = tmp_path / "root"
    result = run("install", str(repo / "docker-compose.yml"), "--root", str(root))
    assert result.exit_code == 0, result.output
    assert "created" in result.output
    assert "systemctl enable --now rediacc-hub.service" in result.output  # no systemd here

    unit = root / "etc/systemd/system/rediacc-hub.service"
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(
            ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True
        )
        assert verify.returncode == 0 and str(unit) not in verify.stderr, verify.stderr
    parser = configparser.ConfigParser(strict=True, interpolation=None)
    parser.optionxform = str
    parser.read(unit)
    service = parser["Service"]
    exec_start = service["ExecStart"].split()
    assert os.path.isabs(exec_start[0]) and os.access(exec_start[0], os.X_OK)
    assert exec_start[1:] == [
        "start",
        "--docker-socket=/var/run/docker.sock",
        "--network-id=2816",
        "--port=7112",
        "--base-domain=example.com",
        "--workspace-dir=/mnt/rediacc/mounts/0123/devbox/workspaces",
        "--idle-timeout=30m",
        "--checkpoint",
        "--labels",
        "/etc/rediacc/hub/hub.labels.yaml",
    ]
    assert service["EnvironmentFile"] == "/etc/rediacc/hub/hub.env"
    assert service["Restart"] == "on-failure" and service["KillMode"] == "process"
    assert "User" not in service or service["User"] == "root"
    assert parser["Install"]["WantedBy"] == "multi-user.target"
    if shutil.which("systemctl"):  # enabled offline by systemctl --root, from the [Install] section
        wants = root / "etc/systemd/system/multi-user.target.wants/rediacc-hub.service"
        assert os.readlink(wants) == "/etc/systemd/system/rediacc-hub.service"
        assert "start at the next boot" in result.output

    # Secrets: only in the 0600 env file, never in the unit, labels or Traefik files.
    env = root / "etc/rediacc/hub/hub.env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert parse_env_file(env, environ={}) == parse_env_file(repo / "hub/.env", environ={})
    secret = parse_env_file(repo / "hub/.env", environ={})["HUB_OAUTH_CLIENT_SECRET"]
    for public in root.rglob("*"):
        if public.is_file() and public != env:
            assert secret not in public.read_text(), public
            assert stat.S_IMODE(public.stat().st_mode) & 0o022 == 0

    # The labels file (with the installed env file) loads into the same configuration.
    labels = root / "etc/rediacc/hub/hub.labels.yaml"
    installed_env = yaml.safe_load(labels.read_text())["env_files"]
    assert installed_env == ["/etc/rediacc/hub/hub.env"]
    from_compose = load_config(repo / "docker-compose.yml")
    from_labels = load_config(labels, env_file=env)
    # ... and so does the unit's own command line, as `hub start` parses it
    flags = parse_start_flags(exec_start[1:])
    assert flags.pop("labels") == "/etc/rediacc/hub/hub.labels.yaml"
    from_unit = load_config(labels, env_file=env, flags=flags)
    ignore = {"source", "service", "env_files", "warnings"}
    for name in from_compose.__dataclass_fields__:
        if name not in ignore:
            assert getattr(from_labels, name) == getattr(from_compose, name), name
            assert getattr(from_unit, name) == getattr(from_compose, name), name

    # Traefik: one router per seed route, each at the hub's port on loopback.
    traefik = yaml.safe_load(
        (root / "opt/rediacc/proxy/traefik/dynamic/rediacc-hub.yaml").read_text()
    )
    routers = traefik["http"]["routers"]
    assert set(routers) == {"hub-code", "hub-term", "hub-desktop"}
    for name, router in routers.items():
        prefix = name.removeprefix("hub-")
        assert router["rule"] == f"Host(`{prefix}.example.com`)"
        assert router["entryPoints"] == ["websecure"]
        assert router["tls"] == {"certResolver": "letsencrypt"}
        servers = traefik["http"]["services"][router["service"]]["loadBalancer"]["servers"]
        assert servers == [{"url": "http://127.0.0.1:7112"}]


def test_install_is_idempotent_and_updates_on_change(repo: Path, tmp_path: Path):
    root = tmp_path / "root"
    compose = repo / "docker-compose.yml"
    assert run("install", str(compose), "--root", str(root)).exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    again = run("install", str(compose), "--root", str(root))
    assert again.exit_code == 0 and "nothing changed" in again.output
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == before

    env = repo / "hub/.env"
    env.write_text(env.read_text().replace("your-client-secret", "rotated-secret"))
    changed = run("install", str(compose), "--root", str(root))
    assert changed.exit_code == 0
    assert "updated" in changed.output and "try-restart" in changed.output
    assert "rotated-secret" in (root / "etc/rediacc/hub/hub.env").read_text()
    assert (root / "etc/systemd/system/rediacc-hub.service").stat().st_mtime_ns == before[
        root / "etc/systemd/system/rediacc-hub.service"
    ]


def test_dry_run_writes_nothing_and_hides_secrets(repo: Path, tmp_path: Path):
    root = tmp_path / "root"
    result = run("install", str(repo / "docker-compose.yml"), "--root", str(root), "--dry-run")
    assert result.exit_code == 0, result.output
    assert not root.exists()
    assert "ExecStart=" in result.output and "hub-code" in result.output
    assert "HUB_OAUTH_CLIENT_SECRET=<redacted>" in result.output
    assert "your-client-secret" not in result.output


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda t: t.replace("rediacc.hub.route.code=8080", "rediacc.hub.route.code=eighty"),
            "rediacc.hub.route.code",
        ),
        (lambda t: t.replace('"rediacc.install_as=systemd"', '"x=y"'), "install_as"),
        (
            lambda t: t.replace("loadbalancer.server.port=7112", "loadbalancer.server.port=abc", 1),
            "1-65535",
        ),
        (lambda t: t.replace("    labels:\n", "    labels: [\n", 1), "docker-compose.yml:17:"),
    ],
)
def test_install_refuses_bad_compose_files(repo: Path, tmp_path: Path, edit, message):
    compose = repo / "docker-compose.yml"
    compose.write_text(edit(compose.read_text()))
    root = tmp_path / "root"
    result = CliRunner().invoke(app, ["install", str(compose), "--root", str(root)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not root.exists()


def test_install_refuses_missing_oauth_settings(repo: Path, tmp_path: Path):
    env = repo / "hub/.env"
    env.write_text("\n".join(x for x in env.read_text().splitlines() if "CLIENT_SECRET" not in x))
    result = CliRunner().invoke(
        app, ["install", str(repo / "docker-compose.yml"), "--root", str(tmp_path / "r")]
    )
    assert result.exit_code == 2
    assert "HUB_OAUTH_CLIENT_SECRET" in result.output


def test_uninstall_removes_artefacts_and_keeps_user_data(repo: Path, tmp_path: Path):
    root = tmp_path / "root"
    compose = repo / "docker-compose.yml"
    assert run("install", str(compose), "--root", str(root)).exit_code == 0
    data_root = root / "srv/ws/alice-docker"
    data_root.mkdir(parents=True)
    (data_root / ".networkid").write_text("32768\n")
    (root / "srv/ws/alice").mkdir()

    dry = run("uninstall", str(compose), "--root", str(root), "--dry-run")
    assert dry.exit_code == 0 and "would be removed" in dry.output
    assert (root / "etc/systemd/system/rediacc-hub.service").exists()

    result = run("uninstall", str(compose), "--root", str(root))
    assert result.exit_code == 0, result.output
    for path in inst.ALL_PATHS:
        assert not inst.under_root(root, path).exists()
    assert (
        "preserved" in result.output
        and "/mnt/rediacc/mounts/0123/devbox/workspaces" in result.output
    )
    assert "systemctl disable --now rediacc-hub.service" in result.output
    assert (data_root / ".networkid").exists() and (root / "srv/ws/alice").is_dir()
    assert not [p for p in root.rglob("*.wants/*")]  # no dangling enablement links
    assert not (root / "etc/rediacc/hub").exists()

    # Uninstalling twice, or after the repo is gone, is fine.
    shutil.rmtree(repo)
    again = CliRunner().invoke(app, ["uninstall", str(compose), "--root", str(root)])
    assert again.exit_code == 0, again.output
    assert "absent" in again.output


def test_reinstall_without_traefik_labels_removes_old_routes(repo: Path, tmp_path: Path):
    root = tmp_path / "root"
    traefik = root / "opt/rediacc/proxy/traefik/dynamic/rediacc-hub.yaml"
    assert run("install", str(repo / "docker-compose.yml"), "--root", str(root)).exit_code == 0
    assert traefik.exists()
    result = run("install", str(FIXTURES / "jupyter/docker-compose.yml"), "--root", str(root))
    assert result.exit_code == 0, result.output
    assert not traefik.exists() and "removed" in result.output
    assert "route 'notebook'" in result.output  # the warning about the missing router
    assert "--port=7200" in (root / "etc/systemd/system/rediacc-hub.service").read_text()


def test_uninstall_warns_about_daemons_that_keep_running(repo: Path, tmp_path: Path):
    # A stand-in process named dockerd with the user's --data-root: GC's detection reads /proc
    # command lines (tests/hubcontrol/test_gc_host.py detects a real dockerd the same way).
    ws = tmp_path / "ws"
    data = ws / "zoe-docker/.rediacc/docker/data"
    data.mkdir(parents=True)
    (ws / "zoe-docker/.networkid").write_text("288768\n")
    compose = repo / "docker-compose.yml"
    compose.write_text(
        compose.read_text().replace("${REDIACC_WORKING_DIR}/devbox/workspaces", str(ws))
    )
    root = tmp_path / "root"
    assert run("install", str(compose), "--root", str(root)).exit_code == 0
    sleeper = subprocess.Popen(
        [
            "bash",
            "-c",
            # the real interpreter: a pyenv shim would re-exec and lose argv[0]
            f'exec -a dockerd {os.path.realpath(sys.executable)} -c "import time; time.sleep(60)" '
            f"--data-root {data}",
        ]
    )
    try:
        deadline = time.monotonic() + 5
        while b"dockerd" not in Path(f"/proc/{sleeper.pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        result = run("uninstall", str(compose), "--root", str(root))
        assert result.exit_code == 0, result.output
        assert (
            "user zoe keeps running" in result.output
            and f"dockerd pid {sleeper.pid}" in result.output
        )
    finally:
        sleeper.kill()
        sleeper.wait()


def test_install_refuses_unset_variables_in_the_command(repo: Path, tmp_path: Path, monkeypatch):
    monkeypatch.delenv("REDIACC_WORKING_DIR")
    result = CliRunner().invoke(
        app, ["install", str(repo / "docker-compose.yml"), "--root", str(tmp_path / "r")]
    )
    assert result.exit_code == 2
    assert "variable REDIACC_WORKING_DIR is not set, but the hub's command uses it" in result.output
    assert "--workspace-dir=${REDIACC_WORKING_DIR}/devbox/workspaces" in result.output
    assert not (tmp_path / "r").exists()


def test_gc_timer_is_opt_in_and_left_alone_by_default(repo: Path, tmp_path: Path):
    root = tmp_path / "root"
    compose = str(repo / "docker-compose.yml")
    service = root / "etc/systemd/system/rediacc-hub-gc.service"
    timer = root / "etc/systemd/system/rediacc-hub-gc.timer"
    result = run("install", compose, "--root", str(root), "--gc-timer", "--gc-max-age", "2w")
    assert result.exit_code == 0, result.output
    assert "systemctl enable --now rediacc-hub-gc.timer" in result.output
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(
            ["systemd-analyze", "verify", str(service), str(timer)], capture_output=True, text=True
        )
        assert verify.returncode == 0 and "rediacc-hub-gc" not in verify.stderr, verify.stderr
    exec_start = configparser.ConfigParser(interpolation=None)
    exec_start.read(service)
    argv = exec_start["Service"]["ExecStart"].split()
    assert argv[1:] == ["gc", "/mnt/rediacc/mounts/0123/devbox/workspaces", "--max-age=2w"]
    assert os.access(argv[0], os.X_OK)
    assert "OnCalendar=daily" in timer.read_text() and "Persistent=true" in timer.read_text()

    # a plain re-install (an upgrade) keeps the timer; --no-gc-timer removes it
    assert run("install", compose, "--root", str(root)).exit_code == 0
    assert service.exists() and timer.exists()
    removed = run("install", compose, "--root", str(root), "--no-gc-timer")
    assert removed.exit_code == 0, removed.output
    assert "systemctl disable --now rediacc-hub-gc.timer" in removed.output
    assert not service.exists() and not timer.exists()

    bad = CliRunner().invoke(
        app, ["install", compose, "--root", str(root), "--gc-timer", "--gc-max-age", "30"]
    )
    assert bad.exit_code == 2 and "--gc-max-age" in bad.output

    assert run("install", compose, "--root", str(root), "--gc-timer").exit_code == 0
    gone = run("uninstall", compose, "--root", str(root))
    assert gone.exit_code == 0 and not service.exists() and not timer.exists()
    assert "systemctl disable --now rediacc-hub-gc.timer" in gone.output
