"""Every ``hub start`` flag is declared once (``hubcontrol.config.flags.START_FLAGS``), and that one
declaration is what parses it, what ``config_as_dict`` reports and what ``hub config check`` and
``hub start --help`` show.

A new ``HubConfig`` field fails ``test_each_flag_field_is_declared_once`` until it is either
declared as a flag or listed in ``NOT_FROM_FLAGS``; a new flag fails it until it has a sample here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hubcli.app import app
from hubcontrol.config import (
    START_FLAGS,
    HubConfig,
    LabelsFile,
    config_as_dict,
    dump_labels_file,
    load_config,
)

SECRET = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
ENV = "\n".join(
    [
        "HUB_OAUTH_CLIENT_ID=id",
        "HUB_OAUTH_CLIENT_SECRET=secret",
        "HUB_OAUTH_AUTHORIZE_URL=https://auth.example.com/authorize",
        "HUB_OAUTH_TOKEN_URL=https://auth.example.com/token",
        "HUB_OAUTH_USERINFO_URL=https://auth.example.com/userinfo",
        "HUB_OAUTH_USERINFO_PATH=preferred_username",
        f"HUB_SESSION_SECRET={SECRET}",
        "",
    ]
)

# HubConfig fields that no flag sets: labels, variables, and where the configuration came from.
NOT_FROM_FLAGS = {
    "routes",
    "templates",
    "default_template",
    "oauth",
    "session_secret",
    "allowed_groups",
    "admin_users",
    "source",
    "service",
    "env_files",
    "warnings",
}

# flag -> (its command-line argument, the HubConfig value, the JSON value, the `config check` text);
# every value differs from the field's default, so a flag that sets nothing fails.
SAMPLES: dict[str, tuple[str, object, object, str]] = {
    "docker-socket": (
        "--docker-socket=unix:///run/other/docker.sock",
        "/run/other/docker.sock",
        "/run/other/docker.sock",
        "/run/other/docker.sock",
    ),
    "network-id": ("--network-id=2816", 2816, 2816, "2816"),
    "port": ("--port=7200", 7200, 7200, "7200"),
    "base-domain": (
        "--base-domain=Hub.Example.ORG",
        "hub.example.org",
        "hub.example.org",
        "hub.example.org",
    ),
    "workspace-dir": ("--workspace-dir=/srv/ws", Path("/srv/ws"), "/srv/ws", "/srv/ws"),
    "idle-timeout": ("--idle-timeout=90m", 5400.0, 5400.0, "1h30m"),
    "checkpoint": ("--checkpoint", True, True, "true"),
    "container-image": (
        "--container-image=registry.example/env:2",
        "registry.example/env:2",
        "registry.example/env:2",
        "registry.example/env:2",
    ),
    "audit-dir": ("--audit-dir=/srv/audit", Path("/srv/audit"), "/srv/audit", "/srv/audit"),
    "state-dir": ("--state-dir=/srv/state", Path("/srv/state"), "/srv/state", "/srv/state"),
    "user-subnet-pool": (
        "--user-subnet-pool=10.64.0.0/16",
        "10.64.0.0/16",
        "10.64.0.0/16",
        "10.64.0.0/16",
    ),
    "supervisor": ("--supervisor=local", "local", "local", "local"),
    "workers": ("--workers=4", 4, 4, "4"),
    "userns-remap": ("--userns-remap", True, True, "true"),
    "users-cpu-weight": ("--users-cpu-weight=50", 50, 50, "50"),
}
FLAG_FIELDS = {name: f.attr for name, f in START_FLAGS.items() if f.attr is not None}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("HUB_"):
            monkeypatch.delenv(name)


def labels_file(tmp_path: Path, *flags: str) -> Path:
    """A hub.labels.yaml whose `hub start` command carries ``flags``, with an env file."""
    (tmp_path / "hub.env").write_text(ENV)
    path = tmp_path / "hub.labels.yaml"
    dump_labels_file(
        LabelsFile(
            labels={"rediacc.hub.route.code": "8080", "rediacc.hub.image": "env:1"},
            command=("hub", "start", *flags),
            env_files=(tmp_path / "hub.env",),
        ),
        path,
    )
    return path


def test_each_flag_field_is_declared_once() -> None:
    fields = {f.name for f in dataclasses.fields(HubConfig)}
    attrs = Counter(FLAG_FIELDS.values())
    assert [a for a, n in attrs.items() if n > 1] == [], "a HubConfig field with two flags"
    assert set(attrs) <= fields, "a flag sets no HubConfig field"
    assert set(attrs).isdisjoint(NOT_FROM_FLAGS)
    assert set(attrs) | NOT_FROM_FLAGS == fields, (
        "a HubConfig field is neither a flag's attr nor in NOT_FROM_FLAGS"
    )
    assert set(SAMPLES) == set(FLAG_FIELDS), "every flag that sets a field needs a sample here"
    assert all(f.name == name and not name.startswith("-") for name, f in START_FLAGS.items())


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_flag_sets_its_field_and_is_reported(name: str, tmp_path: Path) -> None:
    argument, value, as_json, shown = SAMPLES[name]
    attr = FLAG_FIELDS[name]
    assert getattr(HubConfig(), attr) != value, "the sample must differ from the default"

    config = load_config(labels_file(tmp_path, argument))
    assert getattr(config, attr) == value
    assert config_as_dict(config)["hub"][attr] == as_json

    check = CliRunner().invoke(app, ["config", "check", str(tmp_path / "hub.labels.yaml")])
    assert check.exit_code == 0, check.output
    assert re.search(rf"^\s*--{name}\s+{re.escape(shown)}\s*$", check.stdout, re.M), check.stdout
    data = json.loads(
        CliRunner()
        .invoke(app, ["config", "check", str(tmp_path / "hub.labels.yaml"), "--json"])
        .stdout
    )
    assert data["hub"][attr] == as_json


def test_config_check_shows_every_flag_field_once(tmp_path: Path) -> None:
    """The defaults, too: one row per flag field, in declaration order; unset ones say so."""
    check = CliRunner().invoke(app, ["config", "check", str(labels_file(tmp_path))])
    assert check.exit_code == 0, check.output
    rows = re.findall(r"^\s*(--[a-z-]+)\s+(.*?)\s*$", check.stdout, re.M)
    assert [flag for flag, _ in rows] == [f"--{n}" for n in FLAG_FIELDS]
    shown = dict(rows)
    assert shown["--network-id"] == "(not set)" and shown["--container-image"] == "(not set)"
    assert shown["--idle-timeout"] == "0s (never)" and shown["--checkpoint"] == "false"
    data = json.loads(
        CliRunner()
        .invoke(app, ["config", "check", str(tmp_path / "hub.labels.yaml"), "--json"])
        .stdout
    )
    assert list(data["hub"]) == list(FLAG_FIELDS.values())


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("--port=http", "flag --port=http: 'http' is not a port"),
        ("--idle-timeout=30", "flag --idle-timeout=30: '30' has no unit"),
        ("--workers=0", "flag --workers=0: 0 is out of range"),
        ("--supervisor=runit", "flag --supervisor=runit: 'runit' is not a supervisor"),
        ("--container-image=a b", "flag --container-image=a b: 'a b' contains white space"),
    ],
)
def test_bad_flag_value_names_flag_and_value(argument: str, message: str, tmp_path: Path) -> None:
    check = CliRunner().invoke(app, ["config", "check", str(labels_file(tmp_path, argument))])
    assert check.exit_code == 2
    assert f"error: {message}" in check.stderr


def test_no_switch_turns_a_switch_off(tmp_path: Path) -> None:
    config = load_config(labels_file(tmp_path, "--checkpoint", "--no-checkpoint"))
    assert config.checkpoint is False


def test_start_help_lists_every_flag() -> None:
    result = CliRunner().invoke(app, ["start", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for name, flag in START_FLAGS.items():
        assert f"--{name}: {flag.help}" in text, name
