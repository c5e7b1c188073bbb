"""``hub doctor`` and the same checks before ``hub start`` and ``hub install``, as an operator runs
them: the real ``hub`` executable on this host, and on a PATH where dockerd is missing (a host
that lacks a prerequisite) so the checks must stop the command and name the fix."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hubcli.exitcodes import EXIT_HOST, EXIT_USAGE

ROOT = Path(__file__).resolve().parents[2]
HUB = [sys.executable, "-c", "from hubcli.app import main; main()"]
VENDOR = ROOT.parent / "shared" / "vendor" / "criu"

LABELS = """version: 1
service: hub
labels:
  rediacc.hub.route.term: "7681"
  rediacc.hub.image: rediacc-hub/env:latest
"""
ENV = """HUB_DOMAIN=localhost
HUB_OAUTH_CLIENT_ID=hub
HUB_OAUTH_CLIENT_SECRET=s3cret
HUB_OAUTH_AUTHORIZE_URL=http://127.0.0.1:1/auth
HUB_OAUTH_TOKEN_URL=http://127.0.0.1:1/token
HUB_OAUTH_USERINFO_URL=http://127.0.0.1:1/me
HUB_OAUTH_USERINFO_PATH=preferred_username
HUB_SESSION_SECRET=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
"""


def hub(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200")
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [*HUB, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )


@pytest.fixture
def no_dockerd(tmp_path: Path) -> str:
    """A PATH with the host's tools except dockerd: a host where docker.io is not installed."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("stat", "containerd", "iptables", "ip6tables", "btrfs"):
        found = shutil.which(tool)
        assert found, f"{tool} missing on this host"
        (bindir / tool).symlink_to(found)
    return str(bindir)


@pytest.fixture
def config(tmp_path: Path) -> list[str]:
    (tmp_path / "hub.labels.yaml").write_text(LABELS)
    (tmp_path / "hub.env").write_text(ENV)
    return [
        f"--labels={tmp_path / 'hub.labels.yaml'}",
        f"--env-file={tmp_path / 'hub.env'}",
        f"--workspace-dir={tmp_path / 'ws'}",
        f"--state-dir={tmp_path / 'state'}",
        f"--audit-dir={tmp_path / 'audit'}",
    ]


def test_doctor_on_this_host_passes_and_warns_about_cap_sys_resource(tmp_path: Path) -> None:
    result = hub("doctor", "--json", "--checkpoint", f"--workspace-dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["checkpoint"] is True
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert statuses["cgroups"] == statuses["CRIU"] == statuses["dockerd"] == "ok"
    assert statuses["CAP_SYS_RESOURCE"] == "warn"


def test_doctor_table_names_the_missing_piece_and_its_fix(tmp_path: Path, no_dockerd: str):
    result = hub("doctor", f"--workspace-dir={tmp_path}", path=no_dockerd)
    assert result.returncode == EXIT_HOST, result.stdout + result.stderr
    row = next(line for line in result.stdout.splitlines() if "dockerd" in line)
    assert "fail" in row and "apt-get install -y docker.io" in row, result.stdout
    assert "1 failed" in result.stderr


def test_doctor_reads_checkpointing_and_workspace_from_the_labels(
    tmp_path: Path, config: list[str]
) -> None:
    (tmp_path / "hub.labels.yaml").write_text(LABELS + '  rediacc.hub.checkpoint: "true"\n')
    result = hub("doctor", "--json", config[0], config[1])
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["checkpoint"] is True
    assert report["workspace_dir"] == "/var/lib/rediacc/hub/workspaces"  # the default
    assert "CRIU" in [c["name"] for c in report["checks"]]
    bad = hub("doctor", f"--labels={tmp_path / 'nope.yaml'}")
    assert bad.returncode == EXIT_USAGE and "nope.yaml" in bad.stderr


def test_start_stops_on_a_failed_check_before_starting_anything(
    tmp_path: Path, config: list[str], no_dockerd: str
) -> None:
    result = hub("start", *config, path=no_dockerd)
    assert result.returncode == EXIT_HOST, result.stderr
    assert "error: dockerd: dockerd not found on PATH" in result.stderr
    assert "fix: apt-get install -y docker.io" in result.stderr
    assert "hub start stopped: this host lacks what the hub needs" in result.stderr
    assert not (tmp_path / "state").exists()


def test_start_skip_checks_goes_past_them(
    tmp_path: Path, config: list[str], no_dockerd: str
) -> None:
    # --workers 2 on a port something listens on: the first thing after the checks refuses,
    # which shows the start went past them without starting anything
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = hub(
            "start", *config, f"--port={port}", "--workers=2", "--skip-checks", path=no_dockerd
        )
    assert "--skip-checks: the host's prerequisites were not checked" in result.stderr
    assert "dockerd not found" not in result.stderr
    assert f"--port={port} is in use" in result.stderr, result.stderr


def test_install_stops_on_a_failed_check(tmp_path: Path, config: list[str], no_dockerd: str):
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(
        "services:\n  hub:\n    image: x\n    labels:\n      rediacc.install_as: systemd\n"
        '      rediacc.hub.route.term: "7681"\n'
        "      rediacc.hub.image: rediacc-hub/env:latest\n"
        f"    command: hub start --workspace-dir={tmp_path / 'ws'}\n"
        f"    env_file: {tmp_path / 'hub.env'}\n"
    )
    # --dry-run at the real root: the checks run (the files are for this host) and nothing is
    # written whatever happens
    result = hub("install", str(compose), "--dry-run", path=no_dockerd)
    assert result.returncode == EXIT_HOST, result.stdout + result.stderr
    assert "hub install stopped" in result.stderr and "docker.io" in result.stderr
    # under another --root the files are for another machine: this host is not checked
    other = hub("install", str(compose), "--dry-run", f"--root={tmp_path / 'r'}", path=no_dockerd)
    assert other.returncode == 0, other.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ((), "missing COMPOSE_FILE"),
        (("--criu-debs=/x",), "--criu-debs is only used with --setup-host"),
        (("--setup-host", "--root=/tmp/x"), "cannot be combined with --root"),
        (("--setup-host", "--dry-run"), "hub doctor` shows what it would fix"),
    ],
)
def test_install_usage_errors(args: tuple[str, ...], says: str) -> None:
    result = hub("install", *args)
    assert result.returncode == EXIT_USAGE
    assert says in result.stderr


def test_setup_host_on_a_prepared_host_changes_nothing() -> None:
    # this machine was prepared by scripts/setup-host.sh, which runs the same steps
    result = hub("install", "--setup-host", f"--criu-debs={VENDOR}")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("│")]
    outcomes = {row.split("│")[1].strip(): row.split("│")[2].strip() for row in rows}
    assert outcomes == {
        "operating system": "present",
        "Debian packages": "present",
        "CRIU": "present",
        "criu check": "present",
        "runc.conf": "present",
        "io_uring": "present",
    }, result.stdout
