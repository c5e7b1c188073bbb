"""build_config, parse_start_flags, hub.labels.yaml and load_config: every label, flag, variable."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hubcontrol.compose import load_compose
from hubcontrol.config import (
    DEFAULT_SHM_SIZE,
    START_FLAGS,
    HubConfig,
    LabelsFile,
    Template,
    build_config,
    config_as_dict,
    dump_labels_file,
    load_config,
    load_labels_file,
    parse_start_flags,
)
from hubcontrol.errors import ConfigError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "compose"
SECRET = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
OAUTH = {
    "HUB_OAUTH_CLIENT_ID": "id",
    "HUB_OAUTH_CLIENT_SECRET": "secret",
    "HUB_OAUTH_AUTHORIZE_URL": "https://auth.example.com/authorize",
    "HUB_OAUTH_TOKEN_URL": "https://auth.example.com/token",
    "HUB_OAUTH_USERINFO_URL": "https://auth.example.com/userinfo",
    "HUB_OAUTH_USERINFO_PATH": "preferred_username",
    "HUB_SESSION_SECRET": SECRET,
}
MINIMAL = {"rediacc.hub.route.code": "8080", "rediacc.hub.image": "img:1"}


def build(labels=None, flags=None, env=None, **kw) -> HubConfig:
    return build_config(
        MINIMAL if labels is None else labels, flags or {}, {**OAUTH, **(env or {})}, **kw
    )


def problems(labels=None, flags=None, env=None, **kw) -> list[str]:
    with pytest.raises(ConfigError) as info:
        build(labels, flags, env, **kw)
    return info.value.problems


# --------------------------------------------------------------------------- flags


@pytest.mark.parametrize(
    ("argv", "flags"),
    [
        (["hub", "start"], {}),
        ([], {}),
        (["start", "--port=7112"], {"port": "7112"}),
        (["/usr/local/bin/hub", "start", "--port", "7112"], {"port": "7112"}),
        (["hubcli", "start", "--checkpoint"], {"checkpoint": True}),
        (["--checkpoint", "--idle-timeout", "30m"], {"checkpoint": True, "idle_timeout": "30m"}),
        (["--checkpoint=false"], {"checkpoint": False}),
        (["--checkpoint", "--no-checkpoint"], {"checkpoint": False}),
        (
            ["--docker-socket=unix:///var/run/docker.sock"],
            {"docker_socket": "unix:///var/run/docker.sock"},
        ),
        (
            ["--network-id=2816", "--base-domain", "example.com"],
            {"network_id": "2816", "base_domain": "example.com"},
        ),
        (["--workspace-dir=/a=b"], {"workspace_dir": "/a=b"}),
        (["--docker-socket="], {"docker_socket": ""}),
        (["--port=1", "--port=2"], {"port": "2"}),
        (
            [f"--{name}=v" for name, f in START_FLAGS.items() if not f.switch],
            {f.key: "v" for f in START_FLAGS.values() if not f.switch},
        ),
    ],
)
def test_parse_start_flags(argv: list[str], flags: dict) -> None:
    assert parse_start_flags(argv) == flags


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--prot=1"], "unknown flag --prot; did you mean --port?"),
        (["--idle_timeout=30m"], "unknown flag --idle_timeout; did you mean --idle-timeout?"),
        (["--port"], "--port needs a value: --port=VALUE or --port VALUE"),
        (["--port", "--checkpoint"], "--port needs a value"),
        (["--checkpoint=maybe"], "--checkpoint: 'maybe' is not a boolean"),
        (["hub", "stop", "alice"], r"is not 'hub start \[flags\]'"),
        (["mitmdump", "-s", "x.py"], r"is not 'hub start \[flags\]'"),
        (["start", "7112"], "unexpected argument '7112'"),
    ],
)
def test_parse_start_flags_rejects(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_start_flags(argv)


def test_parse_start_flags_reports_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        parse_start_flags(["--prot", "1", "--bogus", "--port"])
    assert len(info.value.problems) == 3


# --------------------------------------------------------------------------- defaults


def test_seed_defaults() -> None:
    config = build()
    assert config.routes == {"code": 8080}
    assert config.default_template == "default"
    t = config.templates["default"]
    assert t == Template(name="default", image="img:1", checkpoint=False)  # the flag, resolved
    assert (t.user, t.workspace, t.shm_size, t.docker, t.mode, t.checkpoint) == (
        "vscode",
        "/workspace",
        1073741824,
        "",
        "persistent",
        False,
    )
    assert (t.command, t.cpu, t.memory, t.on_create, t.pre_dump, t.post_restore) == (None,) * 6
    assert config.port == 7112
    assert config.idle_timeout == 0.0
    assert config.checkpoint is False
    assert config.docker_socket == "/var/run/docker.sock"
    assert config.docker_url == "unix:///var/run/docker.sock"
    assert config.network_id is None
    assert config.container_image is None
    assert config.base_domain == "example.com"
    assert config.supervisor == "auto"
    assert (
        config.oauth is not None and config.oauth.scopes == () and config.oauth.redirect_uri is None
    )
    assert config.allowed_groups == frozenset() and config.admin_users == frozenset()
    assert any("neither --base-domain nor HUB_DOMAIN" in w for w in config.warnings)


def test_every_flag() -> None:
    config = build(
        flags={
            "docker-socket": "unix:///run/d.sock",
            "network_id": "2816",
            "port": "8000",
            "base_domain": "Hub.Example.org",
            "workspace_dir": "/srv/ws",
            "idle_timeout": "1h30m",
            "checkpoint": True,
            "container_image": "ignored-because-label:1",
            "audit_dir": "/var/log/x",
            "state_dir": "/var/lib/x",
            "user_subnet_pool": "10.64.0.0/16",
            "supervisor": "local",
            "labels": "/etc/rediacc/hub/hub.labels.yaml",
            "env_file": "/etc/rediacc/hub/.env",
        }
    )
    assert (config.docker_socket, config.network_id, config.port, config.base_domain) == (
        "/run/d.sock",
        2816,
        8000,
        "hub.example.org",
    )
    assert (config.workspace_dir, config.idle_timeout, config.checkpoint) == (
        Path("/srv/ws"),
        5400.0,
        True,
    )
    assert (config.audit_dir, config.state_dir, config.user_subnet_pool, config.supervisor) == (
        Path("/var/log/x"),
        Path("/var/lib/x"),
        "10.64.0.0/16",
        "local",
    )
    assert config.container_image == "ignored-because-label:1"
    assert config.templates["default"].image == "img:1"  # the label wins over --container-image
    assert config.templates["default"].checkpoint is True  # inherited from --checkpoint


def test_typed_flag_values_are_accepted() -> None:
    config = build(
        flags={
            "port": 9000,
            "idle_timeout": 60,
            "network_id": 2816,
            "workspace_dir": Path("/w"),
            "checkpoint": False,
        }
    )
    assert (config.port, config.idle_timeout, config.network_id, config.workspace_dir) == (
        9000,
        60.0,
        2816,
        Path("/w"),
    )


def test_empty_flags_mean_not_given() -> None:
    config = build(flags={"docker_socket": "", "network_id": "", "workspace_dir": None})
    assert config.docker_socket == "/var/run/docker.sock" and config.network_id is None


def test_container_image_is_the_default_image() -> None:
    config = build({"rediacc.hub.route.code": "8080"}, flags={"container_image": "fallback:2"})
    assert config.templates["default"].image == "fallback:2"


def test_base_domain_from_hub_domain() -> None:
    assert build(env={"HUB_DOMAIN": "dev.example.org"}).base_domain == "dev.example.org"
    assert (
        build(flags={"base_domain": "flag.org"}, env={"HUB_DOMAIN": "env.org"}).base_domain
        == "flag.org"
    )


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            {"port": "0"},
            "flag --port=0: 0 is out of range; expected a whole number from 1 to 65535",
        ),
        ({"port": "http"}, "flag --port=http: 'http' is not a port"),
        ({"network_id": "abc"}, "flag --network-id=abc: 'abc' is not a whole number"),
        ({"idle_timeout": "30"}, "flag --idle-timeout=30: '30' has no unit"),
        ({"idle_timeout": -5}, "flag --idle-timeout=-5: '-5' is not a duration"),
        (
            {"docker_socket": "tcp://h:2375"},
            "flag --docker-socket=tcp://h:2375: 'tcp://h:2375': only unix sockets",
        ),
        (
            {"workspace_dir": "relative/ws"},
            "flag --workspace-dir=relative/ws: 'relative/ws' is not an absolute path",
        ),
        (
            {"base_domain": "bad_domain"},
            "flag --base-domain=bad_domain: 'bad_domain' is not a domain name",
        ),
        ({"checkpoint": "perhaps"}, "flag --checkpoint=perhaps: 'perhaps' is not a boolean"),
        (
            {"user_subnet_pool": "10.0.0.1/16"},
            "flag --user-subnet-pool=10.0.0.1/16: '10.0.0.1/16' is not an IPv4 network",
        ),
        ({"user_subnet_pool": "10.0.0.0/25"}, "smaller than one /24"),
        (
            {"supervisor": "docker"},
            "flag --supervisor=docker: 'docker' is not a supervisor; expected one of auto, systemd, local",
        ),
        ({"container_image": "a b"}, "flag --container-image=a b: 'a b' contains white space"),
        ({"prot": "1"}, "unknown flag --prot; did you mean --port?"),
    ],
)
def test_bad_flags(flags: dict, message: str) -> None:
    assert message in "\n".join(problems(flags=flags))


def test_bad_hub_domain_names_the_variable() -> None:
    assert problems(env={"HUB_DOMAIN": "a..b"})[0].startswith(
        "variable HUB_DOMAIN=a..b: 'a..b' is not a domain name"
    )


# --------------------------------------------------------------------------- labels


def test_every_flat_label() -> None:
    config = build(
        {
            "rediacc.hub.route.code": "8080",
            "rediacc.hub.route.term": "7681",
            "rediacc.hub.route.Desktop": "6080",
            "rediacc.hub.image": "ghcr.io/org/dev:latest",
            "rediacc.hub.command": "exec code --host __SERVICE_IP__ --port 8080",
            "rediacc.hub.user": "1000:100",
            "rediacc.hub.workspace": "/home/jovyan/work/",
            "rediacc.hub.shm_size": "2G",
            "rediacc.hub.docker": "per-user",
            "rediacc.hub.limits.cpu": "200%",
            "rediacc.hub.limits.memory": "8G",
            "rediacc.hub.hook.on_create": "git clone x",
            "rediacc.hub.hook.checkpoint.pre_dump": "start-desktop.sh stop",
            "rediacc.hub.hook.checkpoint.post_restore": "start-desktop.sh",
            "rediacc.hub.checkpoint": "true",
            "rediacc.hub.mode": "ephemeral",
            "rediacc.install_as": "systemd",
            "traefik.http.routers.hub-code.rule": "Host(`code.example.com`)",
            "com.example.other": "ignored",
        },
        flags={"idle_timeout": "30m"},
    )
    assert dict(config.routes) == {"code": 8080, "term": 7681, "desktop": 6080}
    assert config.templates["default"] == Template(
        name="default",
        image="ghcr.io/org/dev:latest",
        command="exec code --host __SERVICE_IP__ --port 8080",
        user="1000:100",
        workspace="/home/jovyan/work",
        shm_size=2 << 30,
        docker="per-user",
        cpu="200%",
        memory="8G",
        on_create="git clone x",
        pre_dump="start-desktop.sh stop",
        post_restore="start-desktop.sh",
        checkpoint=True,
        mode="ephemeral",
    )
    assert config.templates["default"].per_user_docker and config.templates["default"].ephemeral


def test_named_templates_inherit_from_the_flat_template() -> None:
    config = build(
        {
            "rediacc.hub.route.code": "8080",
            "rediacc.hub.template": "fulldev",
            "rediacc.hub.docker": "per-user",
            "rediacc.hub.limits.memory": "8G",
            "rediacc.hub.templates.fulldev.image": "ghcr.io/org/devcontainer:latest",
            "rediacc.hub.templates.fulldev.user": "vscode",
            "rediacc.hub.templates.python.image": "python:3.12-slim",
            "rediacc.hub.templates.python.user": "1000:1000",
            "rediacc.hub.templates.python.limits.memory": "16G",
            "rediacc.hub.templates.python.hook.on_create": "pip install jupyterlab",
            "rediacc.hub.templates.python.mode": "ephemeral",
        }
    )
    assert config.default_template == "fulldev"
    assert list(config.templates) == ["fulldev", "python"]  # no flat image: no "default" template
    py = config.templates["python"]
    assert (py.image, py.user, py.docker, py.memory, py.on_create, py.mode, py.shm_size) == (
        "python:3.12-slim",
        "1000:1000",
        "per-user",
        "16G",
        "pip install jupyterlab",
        "ephemeral",
        DEFAULT_SHM_SIZE,
    )
    assert config.templates["fulldev"].memory == "8G"
    assert config.template(None).name == "fulldev"
    assert config.template("python") is py
    with pytest.raises(
        ConfigError, match="unknown template 'nope'; defined templates: fulldev, python"
    ):
        config.template("nope")


def test_flat_template_is_kept_beside_named_ones() -> None:
    config = build({**MINIMAL, "rediacc.hub.templates.lite.command": "exec lite"})
    assert list(config.templates) == ["default", "lite"]
    assert config.templates["lite"].image == "img:1"  # inherited
    assert config.default_template == "default"


def test_named_template_called_default_overrides_flat_fields() -> None:
    config = build(
        {**MINIMAL, "rediacc.hub.user": "flat", "rediacc.hub.templates.default.user": "named"}
    )
    assert list(config.templates) == ["default"]
    assert (
        config.templates["default"].user == "named" and config.templates["default"].image == "img:1"
    )


def test_checkpoint_label_overrides_the_flag_per_template() -> None:
    config = build(
        {**MINIMAL, "rediacc.hub.templates.nockpt.checkpoint": "false"},
        flags={"checkpoint": True, "idle_timeout": "30m"},
    )
    assert config.templates["default"].checkpoint is True
    assert config.templates["nockpt"].checkpoint is False
    config = build({**MINIMAL, "rediacc.hub.checkpoint": "true"}, flags={"idle_timeout": "30m"})
    assert config.checkpoint is False and config.templates["default"].checkpoint is True


def test_checkpoint_without_idle_timeout_warns() -> None:
    config = build(flags={"checkpoint": True})
    assert any("--idle-timeout is 0" in w for w in config.warnings)


def test_empty_labels_mean_unset() -> None:
    config = build({**MINIMAL, "rediacc.hub.user": "", "rediacc.hub.command": "  "})
    assert (
        config.templates["default"].user == "vscode" and config.templates["default"].command is None
    )


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (
            {"rediacc.hub.imag": "x"},
            "label rediacc.hub.imag: unknown label; did you mean rediacc.hub.image?",
        ),
        (
            {"rediacc.hub.routes.term": "1"},
            "label rediacc.hub.routes.term: unknown label; did you mean rediacc.hub.route.term?",
        ),
        ({"rediacc.hub.limits.memroy": "8G"}, "did you mean rediacc.hub.limits.memory?"),
        ({"rediacc.hub.hook.on_start": "x"}, "did you mean rediacc.hub.hook.on_create?"),
        (
            {"rediacc.hub.template.python.image": "x"},
            "did you mean rediacc.hub.templates.python.image?",
        ),
        (
            {"rediacc.hub.templates.python.limit.cpu": "x"},
            "did you mean rediacc.hub.templates.python.limits.cpu?",
        ),
        ({"rediacc.hub.limit.cpu": "1%"}, "did you mean rediacc.hub.limits.cpu?"),
        ({"rediacc.hub.shm-size": "1G"}, "did you mean rediacc.hub.shm_size?"),
        ({"rediacc.hub.hook.pre_dump": "x"}, "did you mean rediacc.hub.hook.checkpoint.pre_dump?"),
        (
            {"rediacc.hub.zzzzzzzzzzzzzz": "x"},
            "unknown label; valid labels: rediacc.hub.template, rediacc.hub.route.<prefix>, rediacc.hub.image",
        ),
        (
            {"rediacc.hub.route.code": "eighty"},
            "label rediacc.hub.route.code=eighty: 'eighty' is not a port; expected a whole number from 1 to 65535",
        ),
        (
            {"rediacc.hub.route.code": "70000"},
            "label rediacc.hub.route.code=70000: 70000 is out of range",
        ),
        ({"rediacc.hub.route.code": ""}, "label rediacc.hub.route.code=: '' is not a port"),
        (
            {"rediacc.hub.route.my_app": "3000"},
            "label rediacc.hub.route.my_app: route prefix 'my_app' is not a DNS label",
        ),
        (
            {"rediacc.hub.route.": "3000"},
            "label rediacc.hub.route.: route prefix '' is not a DNS label",
        ),
        (
            {"rediacc.hub.route.CODE": "1"},
            "label rediacc.hub.route.CODE: route prefix 'code' is defined twice",
        ),
        (
            {"rediacc.hub.templates.py.imagee": "x"},
            "template py has no field 'imagee'; did you mean rediacc.hub.templates.py.image?",
        ),
        ({"rediacc.hub.templates.py.limits": "x"}, "template py has no field 'limits'"),
        ({"rediacc.hub.templates.py": "x"}, "template py has no field ''"),
        ({"rediacc.hub.templates.p y.image": "x"}, "template name 'p y' is not valid"),
        (
            {"rediacc.hub.mode": "temporary"},
            "label rediacc.hub.mode=temporary: 'temporary' is not a mode; expected persistent or ephemeral",
        ),
        (
            {"rediacc.hub.templates.x.mode": "Ephemeral"},
            "label rediacc.hub.templates.x.mode=Ephemeral: 'Ephemeral' is not a mode",
        ),
        ({"rediacc.hub.limits.cpu": "2"}, "label rediacc.hub.limits.cpu=2: '2' has no % sign"),
        ({"rediacc.hub.limits.cpu": "0%"}, "would allow no CPU time"),
        (
            {"rediacc.hub.limits.memory": "8g"},
            "label rediacc.hub.limits.memory=8g: '8g': systemd only accepts upper-case suffixes; use 8G",
        ),
        ({"rediacc.hub.limits.memory": "8GB"}, "'8GB' is not a size"),
        ({"rediacc.hub.shm_size": "0"}, "label rediacc.hub.shm_size=0: '0' is zero"),
        ({"rediacc.hub.shm_size": "1 gig"}, "'1 gig' is not a size"),
        (
            {"rediacc.hub.docker": "dind"},
            "label rediacc.hub.docker=dind: 'dind' is not a docker mode; expected per-user",
        ),
        (
            {"rediacc.hub.checkpoint": "maybe"},
            "label rediacc.hub.checkpoint=maybe: 'maybe' is not a boolean; expected true or false",
        ),
        ({"rediacc.hub.workspace": "work"}, "'work' is not an absolute directory other than /"),
        ({"rediacc.hub.workspace": "/"}, "not an absolute directory other than /"),
        (
            {"rediacc.hub.user": "vs code"},
            "label rediacc.hub.user=vs code: 'vs code' contains white space",
        ),
        (
            {"rediacc.hub.template": "pyhton", "rediacc.hub.templates.python.image": "p"},
            "label rediacc.hub.template=pyhton: no such template; defined templates: python, default",
        ),
    ],
)
def test_bad_labels(labels: dict, message: str) -> None:
    assert message in "\n".join(problems({**MINIMAL, **labels}))


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (
            {"rediacc.hub.route.code": "8080"},
            "the default template has no image: set the label rediacc.hub.image=IMAGE or pass --container-image=IMAGE",
        ),
        (
            {"rediacc.hub.route.code": "8080", "rediacc.hub.templates.py.user": "x"},
            "template py has no image: set rediacc.hub.templates.py.image, rediacc.hub.image or --container-image",
        ),
        (
            {"rediacc.hub.route.code": "8080", "rediacc.hub.template": "py"},
            "label rediacc.hub.template=py: no such template; defined templates: (none)",
        ),
        (
            {"rediacc.hub.image": "x"},
            "no routes: add at least one label rediacc.hub.route.<prefix>=<port>",
        ),
    ],
)
def test_missing_pieces(labels: dict, message: str) -> None:
    assert message in "\n".join(problems(labels))


def test_every_problem_is_reported_at_once() -> None:
    found = problems(
        {
            "rediacc.hub.route.code": "x",
            "rediacc.hub.mode": "y",
            "rediacc.hub.imag": "z",
            "rediacc.hub.image": "i",
        },
        flags={"port": "0"},
        env={"HUB_OAUTH_CLIENT_ID": "", "HUB_SESSION_SECRET": "short"},
    )
    assert len(found) == 6
    assert [p.split(" ")[1].split("=")[0].rstrip(":") for p in found] == [
        "--port",
        "rediacc.hub.route.code",
        "rediacc.hub.mode",
        "rediacc.hub.imag",
        "HUB_OAUTH_CLIENT_ID",
        "HUB_SESSION_SECRET",
    ]


# --------------------------------------------------------------------------- environment


def test_every_variable() -> None:
    config = build(
        env={
            "HUB_DOMAIN": "example.org",
            "HUB_OAUTH_REDIRECT_URI": "https://code.example.org/_hub/oauth/callback",
            "HUB_OAUTH_SCOPES": "openid  profile\temail",
            "HUB_ALLOWED_GROUPS": "devs, admins,,",
            "HUB_ADMIN_USERS": "alice,bob",
        }
    )
    o = config.oauth
    assert o is not None
    assert (
        o.client_id,
        o.client_secret,
        o.authorize_url,
        o.token_url,
        o.userinfo_url,
        o.userinfo_path,
    ) == (
        "id",
        "secret",
        "https://auth.example.com/authorize",
        "https://auth.example.com/token",
        "https://auth.example.com/userinfo",
        "preferred_username",
    )
    assert o.redirect_uri == "https://code.example.org/_hub/oauth/callback"
    assert o.scopes == ("openid", "profile", "email")
    assert config.session_secret == SECRET
    assert config.allowed_groups == {"devs", "admins"} and config.admin_users == {"alice", "bob"}
    assert config.base_domain == "example.org"


@pytest.mark.parametrize(
    ("var", "_attr"),
    [(v, a) for v, a in __import__("hubcontrol.config", fromlist=["x"]).OAUTH_REQUIRED],
)
def test_missing_oauth_variable_is_named(var: str, _attr: str) -> None:
    found = problems(env={var: ""})
    assert found == [
        f"variable {var} is not set; it is required (put it in hub/.env, see docs/configuration.md)"
    ]


def test_oauth_optional_when_not_required() -> None:
    config = build_config(MINIMAL, {}, {}, require_oauth=False)
    assert config.oauth is None and config.session_secret is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"HUB_OAUTH_TOKEN_URL": "auth.example.com/token"},
            "variable HUB_OAUTH_TOKEN_URL=auth.example.com/token: not an http(s) URL",
        ),
        (
            {"HUB_OAUTH_AUTHORIZE_URL": "ftp://x/y"},
            "variable HUB_OAUTH_AUTHORIZE_URL=ftp://x/y: not an http(s) URL",
        ),
        (
            {"HUB_OAUTH_USERINFO_PATH": "ocs..id"},
            "variable HUB_OAUTH_USERINFO_PATH=ocs..id: not a dot-path",
        ),
        (
            {"HUB_OAUTH_REDIRECT_URI": "/_hub/cb"},
            "variable HUB_OAUTH_REDIRECT_URI=/_hub/cb: not an http(s) URL",
        ),
        (
            {"HUB_SESSION_SECRET": "64-character-hex-string"},
            "variable HUB_SESSION_SECRET: 23 bytes is too short; at least 32 bytes are needed",
        ),
        ({"HUB_SESSION_SECRET": "ab" * 31}, "variable HUB_SESSION_SECRET: 31 bytes is too short"),
    ],
)
def test_bad_variables(env: dict, message: str) -> None:
    found = "\n".join(problems(env=env))
    assert message in found
    assert "ab" * 31 not in found  # never echo the secret


def test_missing_session_secret_is_a_warning() -> None:
    config = build(env={"HUB_SESSION_SECRET": ""})
    assert config.session_secret is None
    assert any("HUB_SESSION_SECRET is not set" in w for w in config.warnings)


def test_misspelt_variable_warns() -> None:
    config = build(env={"HUB_OAUTH_SCOPE": "read:user", "HUB_SOMETHING_ELSE": "x"})
    assert [w for w in config.warnings if "did you mean" in w] == [
        "variable HUB_OAUTH_SCOPE is not used by the hub; did you mean HUB_OAUTH_SCOPES?"
    ]


# --------------------------------------------------------------------------- hub.labels.yaml


def test_labels_file_round_trip(tmp_path: Path) -> None:
    environ = {
        "DOCKER_SOCKET": "/var/run/docker.sock",
        "REDIACC_NETWORK_ID": "2816",
        "REDIACC_WORKING_DIR": "/mnt/r",
    }
    svc = load_compose(FIXTURES / "devenv.yml", environ=environ)
    target = tmp_path / "etc" / "hub.labels.yaml"
    text = dump_labels_file(LabelsFile.from_compose(svc), target)
    assert target.read_text() == text
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    assert "HUB_OAUTH_CLIENT_SECRET" not in text and "your-client-secret" not in text
    loaded = load_labels_file(target)
    assert loaded == LabelsFile.from_compose(svc)
    assert (
        loaded.labels == svc.hub_labels
        and loaded.command == svc.command
        and loaded.source == svc.path
    )
    from_compose = load_config(FIXTURES / "devenv.yml", environ=environ)
    from_labels = load_config(target, environ={})
    assert dataclasses.replace(from_labels, source=None, warnings=()) == dataclasses.replace(
        from_compose, source=None, warnings=()
    )


def test_labels_file_format(tmp_path: Path) -> None:
    path = tmp_path / "hub.labels.yaml"
    path.write_text(
        "version: 1\nservice: hub\nlabels:\n  rediacc.hub.route.code: 8080\n  rediacc.hub.image: img:1\n"
        "  rediacc.hub.checkpoint: true\ncommand: [hub, start, --port=7200]\nenv_files: [hub.env]\n"
    )
    (tmp_path / "hub.env").write_text("\n".join(f"{k}={v}" for k, v in OAUTH.items()))
    lf = load_labels_file(path)
    assert lf.labels == {
        "rediacc.hub.route.code": "8080",
        "rediacc.hub.image": "img:1",
        "rediacc.hub.checkpoint": "true",
    }
    assert lf.env_files == (tmp_path / "hub.env",)
    config = load_config(path, environ={}, flags={"port": "7300"})
    assert config.port == 7300  # explicit flags win over the file's command
    assert config.oauth is not None and config.service == "hub" and config.source == path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version: 2\nlabels: {}\n", "version 2 is not supported; expected version: 1"),
        ("version: 1\nlabels: []\n", "labels must be a mapping"),
        ("version: 1\nlabels: {}\ncomand: []\n", "unknown key 'comand'; did you mean command?"),
        ("version: 1\nlabels: {}\ncommand: hub start\n", "command must be a list of strings"),
        ("version: 1\nlabels: {}\nenv_files: x.env\n", "env_files must be a list of paths"),
        ("- a\n", "not a hub.labels.yaml"),
    ],
)
def test_bad_labels_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "hub.labels.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_labels_file(path)


def test_load_config_rejects_other_files(tmp_path: Path) -> None:
    path = tmp_path / "x.yml"
    path.write_text("hello: world\n")
    with pytest.raises(ConfigError, match="neither a compose file .* nor a hub.labels.yaml"):
        load_config(path, environ={})
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.yml", environ={})


def test_load_config_collects_flag_and_label_problems_together() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(FIXTURES / "broken" / "bad-flags.yml", environ={})
    assert len(info.value.problems) == 5


def test_config_as_dict_redacts_secrets() -> None:
    data = config_as_dict(build())
    assert data["oauth"]["client_secret"] == "***" and data["session_secret"] == "***"
    assert SECRET not in str(data) and "'secret'" not in str(data)
    assert config_as_dict(build(), redact=False)["session_secret"] == SECRET


def test_env_file_flag_in_the_command_is_read(tmp_path: Path) -> None:
    (tmp_path / "secrets.env").write_text("\n".join(f"{k}={v}" for k, v in OAUTH.items()))
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(
        "services:\n  hub:\n    command: [hub, start, --env-file=secrets.env]\n"
        "    labels: [rediacc.install_as=systemd, rediacc.hub.route.code=8080, rediacc.hub.image=i]\n"
    )
    config = load_config(compose, environ={})
    assert config.oauth is not None and config.env_files == (tmp_path / "secrets.env",)
    (tmp_path / "secrets.env").unlink()
    with pytest.raises(ConfigError, match=r"flag --env-file: env file .*secrets\.env: not found"):
        load_config(compose, environ={})


def test_quickstart_traefik_labels_cover_every_route() -> None:
    environ = {
        "DOCKER_SOCKET": "/var/run/docker.sock",
        "REDIACC_NETWORK_ID": "2816",
        "REDIACC_WORKING_DIR": "/mnt/r",
    }
    assert load_config(FIXTURES / "quickstart.yml", environ=environ).warnings == ()


def test_traefik_labels_that_miss_the_hub_warn(tmp_path: Path) -> None:
    (tmp_path / "hub.env").write_text("\n".join(f"{k}={v}" for k, v in OAUTH.items()))
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(
        """\
services:
  hub:
    env_file: hub.env
    command: [hub, start, --base-domain=example.org]
    labels:
      - rediacc.install_as=systemd
      - rediacc.hub.route.code=8080
      - rediacc.hub.route.term=7681
      - rediacc.hub.image=i
      - traefik.http.routers.hub-code.rule=Host(`code.example.org`)
      - traefik.http.services.hub-code.loadbalancer.server.port=8080
"""
    )
    assert load_config(compose, environ={}).warnings == (
        "route term: no Traefik router rule names term.example.org; add e.g. traefik.http.routers.hub-term.rule=Host(`term.example.org`)",
        "label traefik.http.services.hub-code.loadbalancer.server.port=8080: Traefik would send hub-code's traffic to port 8080, but the hub listens on --port 7112",
    )


def test_a_templates_checkpoint_false_wins_over_the_flag() -> None:
    """docs/configuration.md: a template's ``rediacc.hub.checkpoint`` wins over ``--checkpoint``;
    the code used to OR them, so ``=false`` could not opt a template out."""
    from hubcontrol.idle import checkpoint_wanted

    labels = {
        **MINIMAL,
        "rediacc.hub.templates.lite.image": "img:2",
        "rediacc.hub.templates.lite.checkpoint": "false",
    }
    config = build(labels, {"checkpoint": True})
    assert checkpoint_wanted(config, config.templates["default"]) == (True, ANY_REASON)
    wanted, why = checkpoint_wanted(config, config.templates["lite"])
    assert not wanted and "rediacc.hub.checkpoint=false" in why
    off = build(labels, {"checkpoint": False})
    assert not checkpoint_wanted(off, off.templates["default"])[0]


class _Any:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(other)


ANY_REASON = _Any()


@pytest.mark.parametrize(
    ("flags", "env", "weight"),
    [
        ({}, {}, 20),  # the default: users yield the CPU to the host's services
        ({"users_cpu_weight": "100"}, {}, 100),  # as any other group
        ({}, {"HUB_USERS_CPU_WEIGHT": "5"}, 5),
        ({"users_cpu_weight": "50"}, {"HUB_USERS_CPU_WEIGHT": "5"}, 50),  # the flag wins
    ],
)
def test_users_cpu_weight_from_flag_or_variable(flags, env, weight) -> None:
    assert build(flags=flags, env=env).users_cpu_weight == weight


@pytest.mark.parametrize(
    ("flags", "env", "problem"),
    [
        ({"users_cpu_weight": "0"}, {}, "flag --users-cpu-weight=0: 0 is out of range; expected 1 to 10000"),
        ({"users_cpu_weight": "low"}, {}, "'low' is not a whole number; expected 1 to 10000 (100 is the host's default, 20 the hub's)"),
        ({}, {"HUB_USERS_CPU_WEIGHT": "20000"}, "variable HUB_USERS_CPU_WEIGHT=20000: 20000 is out of range"),
    ],
)  # fmt: skip
def test_bad_users_cpu_weight_names_the_flag_and_the_range(flags, env, problem) -> None:
    assert any(problem in p for p in problems(flags=flags, env=env)), problems(flags=flags, env=env)
