"""``hub config check`` over compose files written from the seed's examples, and broken variants.

Every fixture in tests/fixtures/compose/ is checked the way a new user would run the command;
broken variants carry ``# expect: ...`` lines naming the messages they must produce.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from hubcli.commands import config as config_command
from hubcontrol.config import LabelsFile, dump_labels_file, load_compose

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "compose"
BROKEN = sorted((FIXTURES / "broken").glob("*.yml"))
RENET_ENV = {
    "DOCKER_SOCKET": "unix:///var/run/docker.sock",
    "REDIACC_NETWORK_ID": "2816",
    "REDIACC_WORKING_DIR": "/mnt/rediacc/mounts/repo-guid",
}
SECRETS = ("your-client-secret", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")

SEED_TEMPLATE = {
    "command": None,
    "user": "vscode",
    "workspace": "/workspace",
    "shm_size": 1073741824,
    "docker": "",
    "cpu": None,
    "memory": None,
    "on_create": None,
    "pre_dump": None,
    "post_restore": None,
    "checkpoint": False,
    "mode": "persistent",
    "cap_add": [],
}
SEED_HUB = {
    "docker_socket": "/var/run/docker.sock",
    "network_id": None,
    "port": 7112,
    "base_domain": "example.com",
    "workspace_dir": "/var/lib/rediacc/hub/workspaces",
    "idle_timeout": 0.0,
    "checkpoint": False,
    "container_image": None,
    "audit_dir": "/var/log/rediacc/hub",
    "state_dir": "/var/lib/rediacc/hub",
    "user_subnet_pool": "10.208.0.0/12",
    "supervisor": "auto",
    "workers": 1,
    "userns_remap": False,
    "users_cpu_weight": 20,
}
QUICKSTART_COMMAND = "start-desktop.sh & ttyd --writable --port 7681 bash & exec openvscode-server --host __SERVICE_IP__ --port 8080"
FULLDEV_COMMAND = (
    "start-desktop.sh & ttyd --writable --port 7681 bash --login & exec openvscode-server --host __SERVICE_IP__ "
    "--port 8080 --without-connection-token"
)
RENET_FLAGS = {
    "docker_socket": "/var/run/docker.sock",
    "network_id": 2816,
    "workspace_dir": "/mnt/rediacc/mounts/repo-guid/devbox/workspaces",
    "idle_timeout": 1800.0,
    "checkpoint": True,
}

EXPECTED = {
    "quickstart.yml": {
        "hub": {**SEED_HUB, **RENET_FLAGS},
        "routes": {"code": 8080, "term": 7681, "desktop": 6080},
        "default_template": "default",
        "templates": {
            "default": {
                **SEED_TEMPLATE,
                "name": "default",
                "image": "ghcr.io/your-org/devcontainer:latest",
                "command": QUICKSTART_COMMAND,
                "docker": "per-user",
                "checkpoint": True,
            }
        },
    },
    "multitemplate.yml": {
        "hub": {
            **SEED_HUB,
            "workspace_dir": "/srv/workspaces",
            "idle_timeout": 5400.0,
            "checkpoint": True,
        },
        "routes": {"code": 8080, "term": 7681, "desktop": 6080, "jupyter": 8888},
        "default_template": "fulldev",
        "templates": {
            name: {
                **SEED_TEMPLATE,
                "docker": "per-user",
                "memory": "8G",
                "on_create": "git clone https://github.com/org/repo /workspace/project",
                "checkpoint": True,
                **fields,
            }
            for name, fields in {
                "fulldev": {
                    "name": "fulldev",
                    "image": "ghcr.io/org/devcontainer:latest",
                    "command": FULLDEV_COMMAND,
                },
                "lite": {
                    "name": "lite",
                    "image": "ghcr.io/org/devcontainer:lite",
                    "command": "exec openvscode-server --host __SERVICE_IP__ --port 8080",
                },
                "python": {
                    "name": "python",
                    "image": "python:3.12-slim",
                    "command": "pip install jupyterlab && exec jupyter lab --ip=__SERVICE_IP__ --port=8888",
                    "user": "1000:1000",
                },
            }.items()
        },
    },
    "devenv.yml": {
        "hub": {**SEED_HUB, **RENET_FLAGS},
        "routes": {"code": 8080, "term": 7681, "desktop": 6080},
        "default_template": "default",
        "templates": {
            "default": {
                **SEED_TEMPLATE,
                "name": "default",
                "image": "ghcr.io/your-org/devcontainer:latest",
                "command": FULLDEV_COMMAND,
                "docker": "per-user",
                "cpu": "200%",
                "memory": "8G",
                "checkpoint": True,
                "pre_dump": "start-desktop.sh stop",
                "post_restore": "start-desktop.sh",
            }
        },
    },
    "jupyter.yml": {
        "hub": SEED_HUB,
        "routes": {"notebook": 8888},
        "default_template": "default",
        "templates": {
            "default": {
                **SEED_TEMPLATE,
                "name": "default",
                "image": "jupyter/datascience-notebook:latest",
                "command": "exec jupyter lab --ip=__SERVICE_IP__ --port=8888 --no-browser --NotebookApp.token='' --NotebookApp.password=''",
                "user": "1000:100",
                "workspace": "/home/jovyan/work",
                "cpu": "400%",
                "memory": "16G",
            }
        },
    },
    "ephemeral.yml": {
        "hub": SEED_HUB,
        "routes": {"app": 3000},
        "default_template": "default",
        "templates": {
            "default": {
                **SEED_TEMPLATE,
                "name": "default",
                "image": "node:22-alpine",
                "command": "cd /workspace && npm install && exec npm run dev -- --host __SERVICE_IP__",
                "user": "1000:1000",
                "mode": "ephemeral",
            }
        },
    },
}


@pytest.fixture
def app() -> typer.Typer:
    """Just the config command (the full app is exercised by the subprocess test)."""
    app = typer.Typer()

    @app.callback()
    def _root() -> None: ...

    config_command.register(app)
    return app


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("HUB_", "REDIACC_")) or name == "DOCKER_SOCKET":
            monkeypatch.delenv(name)


def run(app: typer.Typer, *args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, ["config", "check", *map(str, args)], env=env)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_seed_example_resolves_to_seed_values(app: typer.Typer, name: str) -> None:
    result = run(app, FIXTURES / name, "--json", env=RENET_ENV)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    expected = EXPECTED[name]
    assert data["valid"] is True and data["errors"] == [] and data["schema_version"] == 1
    assert data["hub"] == expected["hub"]
    assert data["routes"] == expected["routes"]
    assert list(data["routes"]) == list(expected["routes"])  # label order is kept
    assert data["default_template"] == expected["default_template"]
    assert data["templates"] == expected["templates"]
    assert data["source"] == {
        "path": str(FIXTURES / name),
        "service": "hub",
        "env_files": [str(FIXTURES / "hub" / ".env")],
    }
    assert data["oauth"] == {
        "client_id": "your-client-id",
        "client_secret": "***",
        "authorize_url": "https://auth.example.com/authorize",
        "token_url": "https://auth.example.com/token",
        "userinfo_url": "https://auth.example.com/userinfo",
        "userinfo_path": "preferred_username",
        "groups_path": "groups",
        "redirect_uri": None,
        "scopes": [],
    }
    assert data["session_secret"] == "***"
    assert data["allowed_groups"] == [] and data["admin_users"] == []
    for secret in SECRETS:
        assert secret not in result.output


def test_quickstart_without_renet_variables_warns(app: typer.Typer) -> None:
    result = run(app, FIXTURES / "quickstart.yml", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["hub"]["docker_socket"] == "/var/run/docker.sock"  # empty flag: default
    assert data["hub"]["network_id"] is None
    assert data["hub"]["workspace_dir"] == "/devbox/workspaces"
    assert (
        "warning: variable DOCKER_SOCKET is not set; substituting an empty string" in result.stderr
    )
    assert data["warnings"] == [
        line.removeprefix("warning: ") for line in result.stderr.splitlines()
    ]


def test_human_output(app: typer.Typer) -> None:
    result = run(app, FIXTURES / "multitemplate.yml", env=RENET_ENV)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith(f"valid: {FIXTURES / 'multitemplate.yml'} (service hub)")
    for needle in (
        "--idle-timeout        1h30m",
        "--network-id          (not set)",
        "jupyter.example.com",
        "template fulldev (default)",
        "template python",
        "1G (1073741824 bytes)",
        "cpu unlimited, memory 8G",
        "HUB_OAUTH_CLIENT_SECRET    ***",
        "HUB_SESSION_SECRET         ***",
        "HUB_OAUTH_USERINFO_PATH    preferred_username",
    ):
        assert needle in out, needle
    for secret in SECRETS:
        assert secret not in result.output


def test_nextcloud_env_file(app: typer.Typer) -> None:
    result = run(
        app, FIXTURES / "ephemeral.yml", "--env-file", FIXTURES / "env" / "nextcloud.env", "--json"
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["hub"]["base_domain"] == "dev.example.org"  # --env-file wins over hub/.env
    assert data["oauth"]["userinfo_path"] == "ocs.data.id"
    assert (
        data["oauth"]["userinfo_url"]
        == "https://cloud.example.com/ocs/v2.php/cloud/user?format=json"
    )
    assert data["oauth"]["scopes"] == ["openid", "profile", "email"]
    assert data["oauth"]["client_secret"] == "***"
    assert data["allowed_groups"] == ["admins", "devs", "ops"] and data["admin_users"] == [
        "alice",
        "bob",
    ]
    assert data["source"]["env_files"] == [
        str(FIXTURES / "hub" / ".env"),
        str(FIXTURES / "env" / "nextcloud.env"),
    ]
    assert "s3cr3t" not in result.output


def test_github_env_file(app: typer.Typer) -> None:
    result = run(
        app, FIXTURES / "jupyter.yml", "--env-file", FIXTURES / "env" / "github.env", "--json"
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["oauth"]["scopes"] == ["read:user"] and data["oauth"]["userinfo_path"] == "login"


def expectations(path: Path) -> list[str]:
    return [
        line.removeprefix("# expect: ")
        for line in path.read_text().splitlines()
        if line.startswith("# expect: ")
    ]


@pytest.mark.parametrize("path", BROKEN, ids=[p.stem for p in BROKEN])
def test_broken_variant_fails_naming_the_culprit(app: typer.Typer, path: Path) -> None:
    expected = expectations(path)
    assert expected, f"{path} has no '# expect:' line"
    result = run(app, path)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if not line.startswith("warning: ")]
    assert errors and all(line.startswith("error: ") for line in errors), result.stderr
    for needle in expected:
        assert any(needle in line for line in errors), f"{needle!r} not in:\n{result.stderr}"


@pytest.mark.parametrize("path", BROKEN[:3], ids=[p.stem for p in BROKEN[:3]])
def test_broken_variant_json(app: typer.Typer, path: Path) -> None:
    result = run(app, path, "--json")
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert data["valid"] is False and data["schema_version"] == 1
    assert data["errors"] == [line.removeprefix("error: ") for line in result.stderr.splitlines()]


@pytest.mark.parametrize(
    ("env_file", "culprits"),
    [
        (
            "missing-oauth.env",
            [
                "variable HUB_OAUTH_CLIENT_SECRET is not set",
                "variable HUB_OAUTH_USERINFO_PATH is not set",
            ],
        ),
        (
            "short-secret.env",
            ["variable HUB_SESSION_SECRET: 16 bytes is too short; at least 32 bytes are needed"],
        ),
        ("seed-verbatim.env", ["variable HUB_SESSION_SECRET: 23 bytes is too short"]),
    ],
)
def test_broken_env_files(
    app: typer.Typer, tmp_path: Path, env_file: str, culprits: list[str]
) -> None:
    # A compose file without env_file, so only --env-file provides variables.
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(
        (FIXTURES / "ephemeral.yml").read_text().replace("    env_file:\n      - ./hub/.env\n", "")
    )
    result = run(app, compose, "--env-file", FIXTURES / "env" / env_file)
    assert result.exit_code == 2, result.output
    errors = result.stderr.splitlines()
    assert len(errors) == len(culprits)
    for culprit in culprits:
        assert any(line.startswith(f"error: {culprit}") for line in errors), result.stderr


def test_service_flag_picks_one(app: typer.Typer) -> None:
    result = run(
        app, FIXTURES / "broken" / "two-services.yml", "--service", "hub-staging", "--json"
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["hub"]["port"] == 7113 and data["hub"]["base_domain"] == "staging.example.com"
    assert data["templates"]["default"]["image"] == "ghcr.io/org/devcontainer:next"
    assert data["source"]["service"] == "hub-staging"


def test_labels_file_checks_like_its_compose_file(
    app: typer.Typer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in RENET_ENV.items():
        monkeypatch.setenv(key, value)
    labels = tmp_path / "hub.labels.yaml"
    dump_labels_file(LabelsFile.from_compose(load_compose(FIXTURES / "devenv.yml")), labels)
    for key in RENET_ENV:
        monkeypatch.delenv(key)
    from_compose = json.loads(run(app, FIXTURES / "devenv.yml", "--json", env=RENET_ENV).stdout)
    result = run(app, labels, "--json")
    assert result.exit_code == 0, result.output
    from_labels = json.loads(result.stdout)
    for key in ("hub", "routes", "templates", "default_template", "oauth"):
        assert from_labels[key] == from_compose[key], key
    assert from_labels["source"]["path"] == str(labels)


def test_missing_file(app: typer.Typer, tmp_path: Path) -> None:
    result = run(app, tmp_path / "nope.yml")
    assert result.exit_code == 2
    assert result.stderr == f"error: {tmp_path / 'nope.yml'}: file not found\n"


def test_installed_console_script() -> None:
    """The installed ``hub`` entry point (the real, full app) in a subprocess."""
    hub = Path(sys.executable).parent / "hub"
    assert hub.exists(), "the package is not installed in this venv (pip install -e .)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")} | RENET_ENV
    ok = subprocess.run(
        [hub, "config", "check", FIXTURES / "quickstart.yml", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["routes"] == {"code": 8080, "term": 7681, "desktop": 6080}
    bad = subprocess.run(
        [hub, "config", "check", FIXTURES / "broken" / "mode.yml"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert bad.returncode == 2
    assert (
        "error: label rediacc.hub.mode=temporary: 'temporary' is not a mode; expected persistent or ephemeral"
        in bad.stderr
    )


def test_missing_env_file_option(app: typer.Typer, tmp_path: Path) -> None:
    result = run(app, FIXTURES / "jupyter.yml", "--env-file", tmp_path / "nope.env")
    assert result.exit_code == 2
    assert result.stderr == f"error: env file {tmp_path / 'nope.env'}: not found\n"


def test_service_option_on_a_labels_file(app: typer.Typer, tmp_path: Path) -> None:
    labels = tmp_path / "hub.labels.yaml"
    labels.write_text(
        "version: 1\nservice: hub\nlabels: {rediacc.hub.route.code: '8080', rediacc.hub.image: x}\n"
    )
    result = run(app, labels, "--service", "other")
    assert result.exit_code == 2
    assert "--service other: this labels file is for service hub" in result.stderr


def test_unset_required_oauth_in_a_clean_environment(app: typer.Typer, tmp_path: Path) -> None:
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(
        (FIXTURES / "ephemeral.yml").read_text().replace("    env_file:\n      - ./hub/.env\n", "")
    )
    result = run(app, compose)
    assert result.exit_code == 2
    names = [
        line.split()[2] for line in result.stderr.splitlines() if line.startswith("error: variable")
    ]
    assert names == [
        "HUB_OAUTH_CLIENT_ID",
        "HUB_OAUTH_CLIENT_SECRET",
        "HUB_OAUTH_AUTHORIZE_URL",
        "HUB_OAUTH_TOKEN_URL",
        "HUB_OAUTH_USERINFO_URL",
        "HUB_OAUTH_USERINFO_PATH",
    ]


@pytest.mark.docker
def test_shells_are_shown_and_bash_only_commands_warned(app: typer.Typer, tmp_path: Path) -> None:
    """Each template's shell is read from its image in the host daemon (never pulled): bash in
    the environment image, sh in a busybox image, where bash syntax is warned about; an image the
    daemon lacks gets the general warning that the shell is chosen at start."""
    from tests.support.hubcore import host_test_image

    with host_test_image() as busybox:
        labels = tmp_path / "hub.labels.yaml"
        labels.write_text(
            "version: 1\nservice: hub\nlabels:\n"
            "  rediacc.hub.route.app: '3000'\n"
            "  rediacc.hub.image: rediacc-hub/env:latest\n"
            "  rediacc.hub.command: 'if [[ -d /workspace ]]; then exec python3 -m http.server; fi'\n"
            f"  rediacc.hub.templates.alpine.image: {busybox}\n"
            "  rediacc.hub.templates.alpine.command: 'exec httpd -f -p __SERVICE_IP__:3000'\n"
            "  rediacc.hub.templates.alpine.hook.on_create: 'mkdir -p /workspace/{src,bin}'\n"
            "  rediacc.hub.templates.gone.image: hub-test/not-here:1\n"
            "  rediacc.hub.templates.gone.command: 'source ~/.env && exec ttyd bash'\n"
        )
        env = ("--env-file", FIXTURES / "hub" / ".env")
        result = run(app, labels, *env, "--json")
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["shells"] == {
            "default": {
                "image": "rediacc-hub/env:latest",
                "image_seen": True,
                "shell": "/bin/bash",
            },
            "alpine": {"image": busybox, "image_seen": True, "shell": "/bin/sh"},
            "gone": {"image": "hub-test/not-here:1", "image_seen": False, "shell": None},
        }
        warned = [w for w in data["warnings"] if w.startswith("template ")]
        assert warned == [
            f"template alpine: its hook on_create uses bash (brace expansion {{a,b}}), but image "
            f"{busybox} has no bash and it runs with /bin/sh; rewrite it for sh or use an image "
            "with bash",
            "template gone: its command uses bash-only syntax (bash builtins (source, declare, "
            "let, shopt, ...)); it works only if image hub-test/not-here:1 has bash: the shell "
            "is chosen when the environment starts (bash where the image has it, else sh) (image "
            "hub-test/not-here:1 is not in the daemon at /var/run/docker.sock)",
        ]
        assert [f"warning: {w}" for w in warned] == [
            line for line in result.stderr.splitlines() if line.startswith("warning: template ")
        ]
        human = run(app, labels, *env)
        shown = re.findall(r"^  shell +(.*?) *$", human.stdout, re.M)
        assert shown[:2] == ["/bin/bash", "/bin/sh"], human.stdout
        assert shown[2].startswith("chosen at start: bash where the image has it, else sh")
        quiet = run(app, labels, *env, "--no-images", "--json")
        assert json.loads(quiet.stdout)["shells"] == {}
        assert "warning: template" not in quiet.stderr
