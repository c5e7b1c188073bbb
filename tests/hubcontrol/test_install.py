"""Rendering of hub install's artefacts: unit quoting, env file, Traefik routes, writes."""

from __future__ import annotations

import os
import shlex
import stat
from pathlib import Path

import pytest
import yaml

from hubcontrol import install as inst
from hubcontrol.compose import parse_env_file
from hubcontrol.errors import ConfigError


@pytest.mark.parametrize(
    ("arg", "quoted"),
    [
        ("--port=7112", "--port=7112"),
        ("/usr/bin/hub", "/usr/bin/hub"),
        ("a b", '"a b"'),
        ("50%", '"50%%"'),
        ("$HOME", '"$$HOME"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("back\\slash", '"back\\\\slash"'),
        ("", '""'),
        ("line\nbreak", '"line\\nbreak"'),
        ("--base-domain=example.com", "--base-domain=example.com"),
    ],
)
def test_systemd_quote(arg, quoted):
    assert inst.systemd_quote(arg) == quoted


def test_systemd_quote_round_trips_through_a_shell_like_split():
    # systemd's splitting of double-quoted words matches POSIX for these escapes, once the
    # systemd-only doubling of % and $ is undone.
    args = ["hub", "start", "--x=a b", 'q"uote', "back\\slash", "--y=$VAR"]
    line = " ".join(inst.systemd_quote(a) for a in args)
    assert [a.replace("$$", "$") for a in shlex.split(line.replace("%%", "%"))] == args


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        (
            ["hub", "start", "--port=7112"],
            ["/opt/hub", "start", "--port=7112", "--labels", str(inst.LABELS_PATH)],
        ),
        (["hubcli", "start"], ["/opt/hub", "start", "--labels", str(inst.LABELS_PATH)]),
        (
            ["hub", "start", "--labels", "/x.yaml", "--port=1"],
            ["/opt/hub", "start", "--port=1", "--labels", str(inst.LABELS_PATH)],
        ),
        (
            ["hub", "start", "--labels=/x.yaml"],
            ["/opt/hub", "start", "--labels", str(inst.LABELS_PATH)],
        ),
        (
            ["/usr/local/bin/hub", "start"],
            ["/usr/local/bin/hub", "start", "--labels", str(inst.LABELS_PATH)],
        ),
    ],
)
def test_exec_start_argv(command, argv):
    assert inst.exec_start_argv(command, hub_exe="/opt/hub") == argv


@pytest.mark.parametrize(
    ("command", "message"),
    [([], "no command"), (["no-such-binary-anywhere", "start"], "not on PATH")],
)
def test_exec_start_argv_errors(command, message):
    with pytest.raises(ConfigError, match=message):
        inst.exec_start_argv(command, hub_exe="/opt/hub")


@pytest.mark.parametrize(
    ("argv", "port"),
    [
        (["hub", "start", "--port=8000"], 8000),
        (["hub", "start", "--port", "9000"], 9000),
        (["hub", "start"], 7112),
    ],
)
def test_hub_port_of(argv, port):
    assert inst.hub_port_of(argv) == port


def test_unit_keys():
    unit = inst.render_unit(["/opt/hub", "start", "--port=7112"])
    assert "ExecStart=/opt/hub start --port=7112\n" in unit
    assert "KillMode=process" in unit and "Restart=on-failure" in unit
    assert f"EnvironmentFile={inst.ENV_PATH}" in unit
    assert "After=network-online.target docker.service" in unit
    assert "\nCPUWeight=300\n" in unit  # ahead of other services, as the hub's session is


VALUES = {
    "PLAIN": "value",
    "SPACES": "  padded value  ",
    "DOLLAR": "pa$$w0rd${NOT_EXPANDED}",
    "DQUOTE": 'say "hi"',
    "SQUOTE": "it's",
    "SQUOTE_BACKSLASH": "it's a \\ and \\n",
    "HASH": "abc #not a comment",
    "NEWLINE": "line1\nline2",
    "EMPTY": "",
    "BACKTICK": "`id`",
}


def systemd_env_file(text: str) -> dict[str, str]:
    """systemd's EnvironmentFile= parser (``parse_env_file_internal`` in src/basic/env-file.c,
    v256), transcribed state for state: systemd itself cannot run here (PID 1 is not systemd)."""
    out: dict[str, str] = {}
    state, key, value, key_ws, value_ws = "pre_key", "", "", 0, 0

    def emit():
        out[key[: len(key) - key_ws] if key_ws else key] = (
            value[: len(value) - value_ws] if value_ws else value
        )

    for c in text:
        if state == "pre_key":
            if c in "#;":
                state = "comment"
            elif c not in " \t\n\r":
                state, key = "key", c
        elif state == "key":
            if c in "\n\r":
                state = "pre_key"
            elif c == "=":
                state = "pre_value"
            else:
                key_ws = key_ws + 1 if c in " \t" else 0
                key += c
        elif state in ("pre_value", "value"):
            if c in "\n\r":
                emit()
                state, key, value, key_ws, value_ws = "pre_key", "", "", 0, 0
            elif state == "pre_value" and c == "'":
                state = "single"
            elif state == "pre_value" and c == '"':
                state = "double"
            elif c == "\\":
                state, value_ws = "escape", 0
            elif state == "pre_value" and c in " \t":
                pass
            else:
                value_ws = value_ws + 1 if (state == "value" and c in " \t") else 0
                state, value = "value", value + c
        elif state == "escape":
            state = "value"
            if c not in "\n\r":
                value += c
        elif state == "single":
            if c == "'":
                state = "pre_value"
            else:
                value += c
        elif state == "double":
            if c == '"':
                state = "pre_value"
            elif c == "\\":
                state = "double_escape"
            else:
                value += c
        elif state == "double_escape":
            state = "double"
            if c in '"\\`$':
                value += c
            elif c != "\n":
                value += "\\" + c
        elif state == "comment":
            if c == "\\":
                state = "comment_escape"
            elif c in "\n\r":
                state = "pre_key"
        elif state == "comment_escape":
            state = "pre_key" if c in "\n\r" else "comment"
    assert state in ("pre_key", "key", "pre_value", "value", "comment"), f"unterminated: {state}"
    if state in ("pre_value", "value"):
        emit()
    return out


def test_env_file_reads_back_identically(tmp_path: Path):
    text = inst.render_env_file(VALUES)
    path = tmp_path / "hub.env"
    path.write_text(text)
    assert parse_env_file(path, environ={}) == VALUES  # compose, as hub.labels.yaml reads it
    assert systemd_env_file(text) == VALUES  # systemd, as EnvironmentFile= reads it


def test_systemd_env_file_transcription():
    assert systemd_env_file('A=1\n# c\nB = two words  \nC=\'x y\'\nD="a\\"b\\$c\\q"\n') == {
        "A": "1",
        "B": "two words",
        "C": "x y",
        "D": 'a"b$c\\q',
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"BAD-NAME": "x"}, "not a valid environment variable name"),
        ({"X": "it's $5"}, "both ' and \\$"),
    ],
)
def test_env_file_refuses(values, message):
    with pytest.raises(ConfigError, match=message):
        inst.render_env_file(values)


SEED_TRAEFIK = {
    "traefik.http.routers.hub-code.rule": "Host(`code.example.com`)",
    "traefik.http.routers.hub-code.entrypoints": "websecure",
    "traefik.http.routers.hub-code.tls.certresolver": "letsencrypt",
    "traefik.http.services.hub-code.loadbalancer.server.port": "7112",
    "traefik.http.routers.hub-term.rule": "Host(`term.example.com`)",
    "traefik.http.routers.hub-term.entrypoints": "websecure",
    "traefik.http.routers.hub-term.tls.certresolver": "letsencrypt",
    "traefik.http.services.hub-term.loadbalancer.server.port": "7112",
}


def test_traefik_seed_labels():
    conf = inst.render_traefik(SEED_TRAEFIK)
    assert conf == {
        "http": {
            "routers": {
                "hub-code": {
                    "entryPoints": ["websecure"],
                    "rule": "Host(`code.example.com`)",
                    "tls": {"certResolver": "letsencrypt"},
                    "service": "hub-code",
                },
                "hub-term": {
                    "entryPoints": ["websecure"],
                    "rule": "Host(`term.example.com`)",
                    "tls": {"certResolver": "letsencrypt"},
                    "service": "hub-term",
                },
            },
            "services": {
                "hub-code": {"loadBalancer": {"servers": [{"url": "http://127.0.0.1:7112"}]}},
                "hub-term": {"loadBalancer": {"servers": [{"url": "http://127.0.0.1:7112"}]}},
            },
        }
    }


@pytest.mark.parametrize(
    ("labels", "path", "expected"),
    [
        # middlewares: list on the router, definitions kept with canonical names and types
        (
            {
                "traefik.http.routers.r.rule": "Host(`a`)",
                "traefik.http.routers.r.middlewares": "redir, auth@file",
                "traefik.http.middlewares.redir.redirectscheme.scheme": "https",
                "traefik.http.middlewares.redir.redirectscheme.permanent": "true",
            },
            ("http",),
            {
                "routers": {
                    "r": {
                        "middlewares": ["redir", "auth@file"],
                        "rule": "Host(`a`)",
                        "service": "rediacc-hub",
                    }
                },
                "middlewares": {
                    "redir": {"redirectScheme": {"permanent": True, "scheme": "https"}}
                },
                "services": {
                    "rediacc-hub": {"loadBalancer": {"servers": [{"url": "http://10.0.0.1:7000"}]}}
                },
            },
        ),
        # tls=true alone, priority as int, explicit service
        (
            {
                "traefik.http.routers.r.rule": "Host(`a`)",
                "traefik.http.routers.r.tls": "true",
                "traefik.http.routers.r.priority": "10",
                "traefik.http.routers.r.service": "s",
                "traefik.http.services.s.loadbalancer.server.port": "9000",
                "traefik.http.services.s.loadbalancer.server.scheme": "https",
                "traefik.http.services.s.loadbalancer.passhostheader": "false",
            },
            ("http",),
            {
                "routers": {"r": {"priority": 10, "rule": "Host(`a`)", "service": "s", "tls": {}}},
                "services": {
                    "s": {
                        "loadBalancer": {
                            "passHostHeader": False,
                            "servers": [{"url": "https://10.0.0.1:9000"}],
                        }
                    }
                },
            },
        ),
        # tls domains with index syntax, header names kept verbatim
        (
            {
                "traefik.http.routers.r.rule": "Host(`a`)",
                "traefik.http.routers.r.tls.domains[0].main": "example.com",
                "traefik.http.routers.r.tls.domains[0].sans": "*.example.com,x.example.com",
                "traefik.http.middlewares.h.headers.customrequestheaders.X-Forwarded-Proto": "https",
                "traefik.enable": "true",
            },
            ("http",),
            {
                "routers": {
                    "r": {
                        "rule": "Host(`a`)",
                        "tls": {
                            "domains": [
                                {"main": "example.com", "sans": ["*.example.com", "x.example.com"]}
                            ]
                        },
                        "service": "rediacc-hub",
                    }
                },
                "middlewares": {
                    "h": {"headers": {"customRequestHeaders": {"X-Forwarded-Proto": "https"}}}
                },
                "services": {
                    "rediacc-hub": {"loadBalancer": {"servers": [{"url": "http://10.0.0.1:7000"}]}}
                },
            },
        ),
    ],
)
def test_traefik_translation(labels, path, expected):
    conf = inst.render_traefik(labels, upstream_host="10.0.0.1", hub_port=7000)
    got = conf
    for key in path:
        got = got[key]
    assert got == expected


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (
            {"traefik.http.routers.r.priority": "high", "traefik.http.routers.r.rule": "Host(`a`)"},
            "whole number",
        ),
        ({"traefik.http.routers.r.entrypoints": "web"}, "has no rule"),
        (
            {
                "traefik.http.routers.r.rule": "Host(`a`)",
                "traefik.http.services.a.loadbalancer.server.port": "1",
                "traefik.http.services.b.loadbalancer.server.port": "2",
            },
            "names no service",
        ),
        ({"traefik.http.services.s.loadbalancer.server.port": "99999"}, "1-65535"),
        (
            {"traefik.http.routers.r.rule": "Host(`a`)", "traefik.http.routers.r.service": "nope"},
            "which no label defines",
        ),
        ({"traefik.http.foo.r.rule": "x"}, "unknown section"),
        ({"traefik.http.routers": "x"}, "not a Traefik router"),
    ],
)
def test_traefik_errors(labels, message):
    with pytest.raises(ConfigError, match=message):
        inst.render_traefik(labels)


def test_traefik_file_is_yaml_with_a_header():
    text = inst.render_traefik_file(inst.render_traefik(SEED_TRAEFIK), source="x.yml")
    assert text.startswith("# Generated by `hub install` from x.yml")
    assert yaml.safe_load(text)["http"]["routers"]["hub-code"]["service"] == "hub-code"


def test_writes_are_idempotent_and_secret_files_are_private(tmp_path: Path):
    arts = [
        inst.Artefact(Path("/etc/a.conf"), "one\n", 0o644, "a"),
        inst.Artefact(Path("/etc/rediacc/hub/hub.env"), "S='x'\n", 0o600, "env", secret=True),
    ]
    first = inst.write_artefacts(arts, tmp_path)
    assert [c.status for c in first] == ["created", "created"]
    assert stat.S_IMODE(os.stat(tmp_path / "etc/rediacc/hub/hub.env").st_mode) == 0o600
    assert [c.status for c in inst.write_artefacts(arts, tmp_path)] == ["unchanged", "unchanged"]
    os.chmod(tmp_path / "etc/rediacc/hub/hub.env", 0o644)  # someone loosened it: put it back
    changed = [inst.Artefact(arts[0].path, "two\n", 0o644, "a"), arts[1]]
    assert [c.status for c in inst.write_artefacts(changed, tmp_path)] == ["updated", "updated"]
    assert stat.S_IMODE(os.stat(tmp_path / "etc/rediacc/hub/hub.env").st_mode) == 0o600
    assert (tmp_path / "etc/a.conf").read_text() == "two\n"
    assert not [p for p in (tmp_path / "etc").rglob(".*")]  # no temp files left behind
    assert inst.install_commands(inst.write_artefacts(changed, tmp_path))[-1] == [
        "systemctl",
        "enable",
        "--now",
        inst.UNIT_NAME,
    ]


def test_refuses_to_replace_a_symlink(tmp_path: Path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/a.conf").symlink_to("/etc/passwd")
    with pytest.raises(inst.InstallError, match="not a regular file"):
        inst.write_artefacts([inst.Artefact(Path("/etc/a.conf"), "x", 0o644, "a")], tmp_path)


def test_remove_artefacts_keeps_foreign_files(tmp_path: Path):
    arts = [inst.Artefact(p, "x\n", 0o644, "x") for p in inst.ALL_PATHS]
    inst.write_artefacts(arts, tmp_path)
    (tmp_path / "etc/rediacc/hub/operator-notes.txt").write_text("mine")
    changes = inst.remove_artefacts(inst.ALL_PATHS, tmp_path)
    assert {c.status for c in changes} == {"removed"}
    assert (tmp_path / "etc/rediacc/hub/operator-notes.txt").read_text() == "mine"
    assert {c.status for c in inst.remove_artefacts(inst.ALL_PATHS, tmp_path)} == {"absent"}


@pytest.mark.parametrize(
    ("prefixes", "labels", "port", "warnings"),
    [
        (["code"], SEED_TRAEFIK, 7112, []),
        (["code", "jupyter"], SEED_TRAEFIK, 7112, ["route 'jupyter'"]),
        (
            ["code"],
            SEED_TRAEFIK,
            7200,
            ["sends to http://127.0.0.1:7112, but the hub listens on --port=7200"] * 2,
        ),
        (["notebook"], {}, 7112, ["route 'notebook'"]),
        (
            ["code", "term"],
            {"traefik.http.routers.r.rule": "Host(`code.x.org`) || Host(`term.x.org`)"},
            7112,
            [],
        ),
        (
            ["code", "term"],
            {"traefik.http.routers.r.rule": "Host(`code.x.org`, `term.x.org`)"},
            7112,
            [],
        ),
        (
            ["code"],
            {"traefik.http.routers.r.rule": "HostRegexp(`code.x.org`)"},
            7112,
            ["route 'code'"],
        ),
    ],
)
def test_route_warnings(prefixes, labels, port, warnings):
    got = inst.route_warnings(prefixes, inst.render_traefik(labels, hub_port=7112), port)
    assert len(got) == len(warnings)
    for g, w in zip(got, warnings, strict=True):
        assert w in g


def test_no_traefik_labels_means_no_traefik_file(tmp_path: Path):
    from hubcontrol.compose import load_compose

    fixtures = Path(__file__).resolve().parent.parent / "fixtures" / "install"
    svc = load_compose(fixtures / "jupyter" / "docker-compose.yml", environ={})
    plan = inst.plan_install(svc, hub_exe="/usr/bin/hub")
    assert inst.TRAEFIK_PATH not in [a.path for a in plan.artefacts]
    assert plan.remove == (inst.TRAEFIK_PATH,)
    assert any("route 'notebook'" in w for w in plan.warnings)
    env = next(a for a in plan.artefacts if a.path == inst.ENV_PATH)
    path = tmp_path / "hub.env"
    path.write_text(env.content)
    assert (
        parse_env_file(path, environ={})["HUB_OAUTH_CLIENT_SECRET"]
        == 's3cr3t with spaces and a "quote"'
    )
    assert parse_env_file(path, environ={})["HUB_SESSION_SECRET"].startswith("pa$$word")
