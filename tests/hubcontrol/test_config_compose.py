"""Reading compose files the way docker compose does: interpolation, env files, service choice."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from hubcontrol.compose import interpolate, load_compose, parse_env_file, read_yaml
from hubcontrol.errors import ConfigError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "compose"
VARS = {"SET": "value", "EMPTY": "", "DOMAIN": "example.org"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("${SET}", "value"),
        ("$SET", "value"),
        ("$SET.x", "value.x"),
        ("${SET}x", "valuex"),
        ("a-$SET-b", "a-value-b"),
        ("${UNSET}", ""),
        ("$UNSET", ""),
        ("${UNSET:-default}", "default"),
        ("${EMPTY:-default}", "default"),
        ("${EMPTY-default}", ""),
        ("${UNSET-default}", "default"),
        ("${SET:-default}", "value"),
        ("${SET:+alt}", "alt"),
        ("${EMPTY:+alt}", ""),
        ("${EMPTY+alt}", "alt"),
        ("${UNSET+alt}", ""),
        ("$$", "$"),
        ("$${SET}", "${SET}"),
        ("$$SET", "$SET"),
        ("cost: 5$", "cost: 5$"),
        ("$ 5", "$ 5"),
        ("${UNSET:-${SET}}", "value"),
        ("${UNSET:-${ALSO_UNSET:-deep}}", "deep"),
        ("${UNSET:-a b c}", "a b c"),
        ("Host(`code.${DOMAIN:-example.com}`)", "Host(`code.example.org`)"),
        ("Host(`code.${UNSET:-example.com}`)", "Host(`code.example.com`)"),
        ("${SET:?must be set}", "value"),
        ("__SERVICE_IP__", "__SERVICE_IP__"),
    ],
)
def test_interpolate(text: str, expected: str) -> None:
    assert interpolate(text, VARS) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "${UNSET:?set it in hub/.env}",
            "required variable UNSET is missing a value: set it in hub/.env",
        ),
        ("${EMPTY:?}", "required variable EMPTY is missing a value: is empty"),
        ("${UNSET?}", "required variable UNSET is missing a value: is not set"),
        ("${UNSET:-x", "unclosed"),
        ("${1BAD}", "invalid interpolation"),
        ("${SET:x}", "invalid interpolation"),
    ],
)
def test_interpolate_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        interpolate(text, VARS)


def test_interpolate_allows_empty_when_only_unset_is_required() -> None:
    assert interpolate("${EMPTY?}", VARS) == ""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_parse_env_file_like_compose(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "x.env",
        """\
        # a comment
        PLAIN=value
        export EXPORTED=yes
        SPACED = around
        COMMENTED=value # trailing comment
        HASH=a#b
        SINGLE='literal $PLAIN # not a comment'
        DOUBLE="line1\\nline2 \\"q\\" ${PLAIN}"
        EXPANDED=${PLAIN}-x
        FROM_ENV=${OUTER}
        DEFAULTED=${NOPE:-fallback}
        MULTI="first
        second"
        EMPTY=
        INHERITED
        NOT_INHERITED

        EQUALS=a=b=c
        """,
    )
    path.write_text(path.read_text().replace("around", "around  \t"))  # trailing blanks are trimmed
    env = parse_env_file(path, {"OUTER": "outer", "INHERITED": "from-environ"})
    assert env == {
        "PLAIN": "value",
        "EXPORTED": "yes",
        "SPACED": "around",
        "COMMENTED": "value",
        "HASH": "a#b",
        "SINGLE": "literal $PLAIN # not a comment",
        "DOUBLE": 'line1\nline2 "q" value',
        "EXPANDED": "value-x",
        "FROM_ENV": "outer",
        "DEFAULTED": "fallback",
        "MULTI": "first\nsecond",
        "EMPTY": "",
        "INHERITED": "from-environ",
        "EQUALS": "a=b=c",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("GOOD=1\nthis is not\n", r"x\.env:2: not a KEY=value line"),
        ('A="never closed\n', r"x\.env:1: A: unterminated \"quoted value"),
        ("A='x' trailing\n", r"x\.env:1: A: unexpected text after the closing quote"),
        ("1A=x\n", r"x\.env:1: not a KEY=value line"),
    ],
)
def test_parse_env_file_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "x.env"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        parse_env_file(path, {})


def test_parse_env_file_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"env file .*nope\.env: not found"):
        parse_env_file(tmp_path / "nope.env", {})


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yml", "services:\n  hub:\n    labels: [a\n    b: c\n")
    with pytest.raises(ConfigError) as info:
        read_yaml(path)
    assert str(info.value).startswith(f"{path}:4:")
    assert "YAML syntax error" in str(info.value)


def test_quickstart_service(tmp_path: Path) -> None:
    environ = {
        "DOCKER_SOCKET": "unix:///var/run/docker.sock",
        "REDIACC_NETWORK_ID": "2816",
        "REDIACC_WORKING_DIR": "/mnt/r",
    }
    svc = load_compose(FIXTURES / "quickstart.yml", environ=environ)
    assert svc.name == "hub"
    assert svc.env_files == (FIXTURES / "hub" / ".env",)
    assert svc.env["HUB_OAUTH_CLIENT_ID"] == "your-client-id"
    assert svc.command == (
        "hub",
        "start",
        "--docker-socket=unix:///var/run/docker.sock",
        "--network-id=2816",
        "--port=7112",
        "--base-domain=example.com",
        "--workspace-dir=/mnt/r/devbox/workspaces",
        "--idle-timeout=30m",
        "--checkpoint",
    )
    assert svc.hub_labels["rediacc.hub.route.code"] == "8080"
    assert len(svc.hub_labels) == 7
    assert svc.traefik_labels["traefik.http.routers.hub-code.rule"] == "Host(`code.example.com`)"
    assert len(svc.traefik_labels) == 12
    assert svc.warnings == ()


def test_unset_variables_are_warnings(tmp_path: Path) -> None:
    svc = load_compose(FIXTURES / "quickstart.yml", environ={})
    assert "--docker-socket=" in svc.command
    assert any("variable DOCKER_SOCKET is not set" in w for w in svc.warnings)
    assert any("variable REDIACC_WORKING_DIR is not set" in w for w in svc.warnings)


def test_env_precedence(tmp_path: Path) -> None:
    """environ > --env-file > service env_file entries (later entries win) > project .env."""
    write(tmp_path, ".env", "A=project\nB=project\nC=project\nD=project\nONLY_PROJECT=p\n")
    write(tmp_path, "one.env", "B=one\nC=one\nD=one\n")
    write(tmp_path, "two.env", "C=two\nD=two\n")
    write(tmp_path, "extra.env", "D=extra\n")
    compose = write(
        tmp_path,
        "docker-compose.yml",
        """\
        services:
          hub:
            env_file: [one.env, two.env]
            labels:
              rediacc.install_as: systemd
              rediacc.hub.a: $A
              rediacc.hub.b: $B
              rediacc.hub.c: $C
              rediacc.hub.d: $D
              rediacc.hub.e: ${E:-none}
        """,
    )
    svc = load_compose(compose, environ={"A": "environ"})
    assert [svc.labels[f"rediacc.hub.{k}"] for k in "abcde"] == [
        "environ",
        "one",
        "two",
        "two",
        "none",
    ]
    assert "ONLY_PROJECT" not in svc.env  # the project .env is for interpolation only
    svc = load_compose(compose, environ={"A": "environ"}, env_file=tmp_path / "extra.env")
    assert [svc.labels[f"rediacc.hub.{k}"] for k in "abcd"] == ["environ", "one", "two", "extra"]
    assert svc.env["D"] == "extra"
    assert svc.env_files == (tmp_path / "one.env", tmp_path / "two.env", tmp_path / "extra.env")


def test_env_file_path_is_relative_to_compose_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(FIXTURES / "broken")  # not the compose file's directory
    svc = load_compose(Path("../jupyter.yml"), environ={})
    assert svc.path == FIXTURES / "jupyter.yml"
    assert svc.env_files == (FIXTURES / "hub" / ".env",)


def test_labels_mapping_values_become_strings(tmp_path: Path) -> None:
    compose = write(
        tmp_path,
        "c.yml",
        """\
        services:
          hub:
            labels:
              rediacc.install_as: systemd
              rediacc.hub.route.code: 8080
              rediacc.hub.checkpoint: true
              rediacc.hub.command:
        """,
    )
    svc = load_compose(compose, environ={})
    assert svc.labels["rediacc.hub.route.code"] == "8080"
    assert svc.labels["rediacc.hub.checkpoint"] == "true"
    assert svc.labels["rediacc.hub.command"] == ""


def test_list_labels_keep_equals_in_values_and_later_wins(tmp_path: Path) -> None:
    compose = write(
        tmp_path,
        "c.yml",
        """\
        services:
          hub:
            labels:
              - rediacc.install_as=systemd
              - rediacc.hub.command=exec x --opt=a=b
              - rediacc.hub.user=first
              - rediacc.hub.user=second
        """,
    )
    svc = load_compose(compose, environ={})
    assert svc.labels["rediacc.hub.command"] == "exec x --opt=a=b"
    assert svc.labels["rediacc.hub.user"] == "second"


def test_command_as_string_is_split_like_a_shell(tmp_path: Path) -> None:
    compose = write(
        tmp_path,
        "c.yml",
        """\
        services:
          hub:
            command: hub start --base-domain "${D:-x.org}" --idle-timeout=30m
            labels: [rediacc.install_as=systemd]
        """,
    )
    assert load_compose(compose, environ={}).command == (
        "hub",
        "start",
        "--base-domain",
        "x.org",
        "--idle-timeout=30m",
    )


def test_service_selection() -> None:
    path = FIXTURES / "broken" / "two-services.yml"
    with pytest.raises(
        ConfigError,
        match=r"2 services are labelled rediacc.install_as=systemd \(hub, hub-staging\); pick one with --service NAME",
    ):
        load_compose(path, environ={})
    assert (
        load_compose(path, service="hub-staging", environ={}).labels["rediacc.hub.image"]
        == "ghcr.io/org/devcontainer:next"
    )
    with pytest.raises(
        ConfigError, match="--service nope: no such service; services: hub, hub-staging"
    ):
        load_compose(path, service="nope", environ={})


def test_service_must_be_labelled(tmp_path: Path) -> None:
    path = FIXTURES / "multitemplate.yml"
    with pytest.raises(
        ConfigError,
        match=r"service db is not labelled rediacc.install_as=systemd; labelled services: hub",
    ):
        load_compose(path, service="db", environ={})
    assert load_compose(path, environ={}).name == "hub"  # db is ignored


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("services: []\n", "not a compose file: no top-level 'services:' mapping"),
        ("version: '3'\n", "not a compose file"),
        ("", "not a compose file"),
        ("services:\n  hub:\n    labels: 5\n", "no service is labelled"),
        (
            "services:\n  hub:\n    labels: [rediacc.install_as=systemd, 5]\n",
            'a label in list form must be a "key=value" string, got 5',
        ),
        (
            "services:\n  hub:\n    labels: [rediacc.install_as=systemd]\n    command: 5\n",
            "command must be a list or a string",
        ),
        (
            "services:\n  hub:\n    labels: [rediacc.install_as=systemd]\n    env_file: 5\n",
            "env_file must be a path or a list",
        ),
        (
            "services:\n  hub:\n    labels: [rediacc.install_as=systemd]\n    env_file: [nope.env]\n",
            r"env_file .*nope\.env does not exist; create it",
        ),
        (
            "services:\n  hub:\n    labels: [rediacc.install_as=systemd, 'rediacc.hub.x=${Y:?}']\n",
            "required variable Y",
        ),
    ],
)
def test_compose_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_compose(path, environ={})


def test_optional_env_file_may_be_missing(tmp_path: Path) -> None:
    svc = load_compose(FIXTURES / "multitemplate.yml", environ={})
    assert svc.env_files == (FIXTURES / "hub" / ".env",)
    assert svc.warnings == ()


def test_missing_env_file_is_a_warning_when_env_file_is_given() -> None:
    svc = load_compose(
        FIXTURES / "broken" / "missing-env-file.yml", env_file=FIXTURES / "hub" / ".env", environ={}
    )
    assert svc.env["HUB_DOMAIN"] == "example.com"
    assert any("hub/.env.prod does not exist; skipped" in w for w in svc.warnings)


def test_service_ip_survives_interpolation(tmp_path: Path) -> None:
    """The seed's command label supports ${SERVICE_IP}: the hub expands it, not the compose loader."""
    compose = write(
        tmp_path,
        "c.yml",
        """\
        services:
          hub:
            labels:
              - rediacc.install_as=systemd
              - rediacc.hub.command=exec a --host ${SERVICE_IP} --ip=$SERVICE_IP --x=$${SERVICE_IP} --y=${SERVICE_IP:-none}
        """,
    )
    svc = load_compose(compose, environ={})
    assert (
        svc.labels["rediacc.hub.command"]
        == "exec a --host ${SERVICE_IP} --ip=$SERVICE_IP --x=${SERVICE_IP} --y=none"
    )
    assert svc.warnings == ()
    svc = load_compose(compose, environ={"SERVICE_IP": "1.2.3.4"})  # set: compose semantics
    assert svc.labels["rediacc.hub.command"].startswith(
        "exec a --host 1.2.3.4 --ip=1.2.3.4 --x=${SERVICE_IP}"
    )


def test_yaml_anchors_and_merge_keys(tmp_path: Path) -> None:
    compose = write(
        tmp_path,
        "c.yml",
        """\
        x-hub-labels: &hub-labels
          rediacc.install_as: systemd
          rediacc.hub.route.code: 8080
        services:
          hub:
            labels:
              <<: *hub-labels
              rediacc.hub.image: img:1
        """,
    )
    assert load_compose(compose, environ={}).hub_labels == {
        "rediacc.hub.route.code": "8080",
        "rediacc.hub.image": "img:1",
    }


def test_env_file_errors_never_echo_values(tmp_path: Path) -> None:
    path = tmp_path / "x.env"
    path.write_text("HUB_SESSION_SECRET 0123456789abcdef0123456789abcdef\n")
    with pytest.raises(ConfigError) as info:
        parse_env_file(path, {})
    assert "x.env:1: not a KEY=value line (it starts with 'HUB_SESSION_SECRET')" in str(info.value)
    assert "0123456789abcdef" not in str(info.value)


def test_duplicate_keys_are_refused_like_compose(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "c.yml",
        """\
        services:
          hub:
            labels:
              rediacc.hub.image: a
              rediacc.hub.user: vscode
              rediacc.hub.image: b
        """,
    )
    with pytest.raises(ConfigError) as info:
        read_yaml(path)
    assert str(info.value) == (
        f"{path}:6:7: YAML syntax error: duplicate key 'rediacc.hub.image' (first defined at line 4) "
        "(while constructing a mapping started at line 4)"
    )
