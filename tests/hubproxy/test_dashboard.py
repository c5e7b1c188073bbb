"""The dashboard page and the decisions behind the API, as pure functions (no proxy): who may do
what, CSRF checks, paths, links, idle facts, the admin token file, local-connection detection."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from types import SimpleNamespace

import pytest
from mitmproxy import http

from hubcontrol import Progress
from hubproxy.addons.adminapi import (
    TOKEN_FILE,
    bearer,
    default_origin,
    ensure_admin_token,
    is_direct_local,
    read_token,
    token_matches,
)
from hubproxy.addons.dashboard import dashboard_response
from hubproxy.addons.statusapi import (
    Principal,
    idle_facts,
    is_self,
    live_state,
    may,
    parse_api_path,
    route_urls,
)
from hubproxy.auth.csrf import csrf_problem, csrf_token
from hubproxy.web.dashboardpage import SCRIPT
from tests.support.nodejs import node_env

KEY = b"k" * 32
ALICE = Principal("alice", admin=False, sid="s1")
ADMIN = Principal("carol", admin=True, sid="s2")
TOKEN = Principal(None, admin=True, token=True)


@pytest.mark.parametrize(
    ("principal", "action", "own", "allowed"),
    [
        (ALICE, "view", True, True),
        (ALICE, "stop", True, True),
        (ALICE, "restart", True, True),
        (ALICE, "checkpoint", True, False),
        (ALICE, "view", False, False),
        (ALICE, "stop", False, False),
        (ALICE, "restart", False, False),
        (ADMIN, "view", False, True),
        (ADMIN, "stop", False, True),
        (ADMIN, "checkpoint", False, True),
        (ADMIN, "checkpoint", True, True),
        (TOKEN, "stop", False, True),
    ],
)
def test_may(principal, action, own, allowed):
    assert may(principal, action, own) is allowed


@pytest.mark.parametrize(
    ("principal", "target", "name", "own"),
    [
        (ALICE, "alice", None, True),
        (ALICE, "bob", None, False),
        (Principal("Alice", admin=False), "alice", None, False),  # another user's safe name
        (Principal("Alice", admin=False), "Alice", None, True),
        (Principal("Alice", admin=False), "x", "alice--3a4e8b1c0b25", False),
        (TOKEN, "alice", None, False),
    ],
)
def test_is_self(principal, target, name, own):
    assert is_self(principal, target, name) is own


def test_is_self_by_safe_name():
    from hubcontrol.names import safe_name

    p = Principal("Alice Smith", admin=False)
    assert is_self(p, safe_name("Alice Smith"))


@pytest.mark.parametrize(
    ("endpoint", "parsed"),
    [
        ("api/status", ("status", None, None)),
        ("api/openapi.json", ("openapi", None, None)),
        ("api/users/alice", ("user", "alice", None)),
        ("api/users/alice/stop", ("user", "alice", "stop")),
        ("api/users/a@b.c/restart", ("user", "a@b.c", "restart")),
        ("api/users", None),
        ("api/users/alice/stop/now", None),
        ("api/progress", None),  # HubApi's
        ("api/statusx", None),
    ],
)
def test_parse_api_path(endpoint, parsed):
    assert parse_api_path(endpoint) == parsed


@pytest.mark.parametrize(
    ("scheme", "port", "url"),
    [
        ("https", None, "https://term.example.com/"),
        ("https", 443, "https://term.example.com/"),
        ("http", 80, "http://term.example.com/"),
        ("http", 7112, "http://term.example.com:7112/"),
    ],
)
def test_route_urls(scheme, port, url):
    assert route_urls(["term"], scheme, "example.com", port) == {"term": url}


@pytest.mark.parametrize(
    ("row", "progress", "refreshed", "state"),
    [
        ("running", Progress(state="stopping", updated=20), 10, "stopping"),
        ("running", Progress(state="starting", updated=5), 10, "running"),  # older
        ("stopped", Progress(state="stopped", updated=0), 10, "stopped"),  # never set
        ("running", Progress(), None, "running"),  # nothing known: the rows say
    ],
)
def test_live_state(row, progress, refreshed, state):
    assert live_state(row, progress, refreshed) == state


@pytest.mark.parametrize(
    ("state", "activity", "since", "timeout", "expected"),
    [
        ("running", (90.0, "ws-in"), 50.0, 0, (10.0, "ws-in", None)),
        ("running", (90.0, "ws-out"), 50.0, 60, (10.0, "ws-out", 50.0)),
        ("running", None, 70.0, 60, (30.0, "start", 30.0)),
        ("running", (40.0, "http"), 70.0, 0, (30.0, "start", None)),  # restarted since
        ("running", (120.0, "http"), None, 60, (0.0, "http", 60.0)),  # clock skew: never negative
        ("checkpointed", (90.0, "http"), None, 60, (None, "http", None)),
        ("running", None, None, 60, (None, None, None)),
    ],
)
def test_idle_facts(state, activity, since, timeout, expected):
    facts = idle_facts(state, activity, since, 100.0, timeout)
    assert (facts["idle_seconds"], facts["activity_kind"], facts["cull_in_seconds"]) == expected


def _request(**headers) -> http.Request:
    req = http.Request.make("POST", "http://term.example.com/_hub/api/users/alice/stop")
    req.headers["host"] = "term.example.com"
    for k, v in headers.items():
        req.headers[k.replace("_", "-")] = v
    return req


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({"x_hub_csrf": csrf_token(KEY, "s1")}, None),
        ({"x_hub_csrf": csrf_token(KEY, "s1"), "origin": "https://term.example.com"}, None),
        ({"x_hub_csrf": csrf_token(KEY, "s1"), "sec_fetch_site": "same-origin"}, None),
        ({}, "missing CSRF"),
        ({"x_hub_csrf": csrf_token(KEY, "s2")}, "wrong CSRF"),
        ({"x_hub_csrf": csrf_token(b"other" * 8, "s1")}, "wrong CSRF"),
        ({"x_hub_csrf": csrf_token(KEY, "s1"), "origin": "https://evil.com"}, "cross-origin"),
        (
            {"x_hub_csrf": csrf_token(KEY, "s1"), "origin": "http://term.example.com"},
            "cross-origin",
        ),
        ({"x_hub_csrf": csrf_token(KEY, "s1"), "origin": "null"}, "cross-origin"),
        ({"x_hub_csrf": csrf_token(KEY, "s1"), "sec_fetch_site": "same-site"}, "cross-site"),
    ],
)
def test_csrf_problem(headers, problem):
    found = csrf_problem(_request(**headers), KEY, "s1", "https")
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_csrf_token_is_per_session_and_url_safe():
    a, b = csrf_token(KEY, "s1"), csrf_token(KEY, "s2")
    assert a != b and re.fullmatch(r"[A-Za-z0-9_-]{43}", a)


# -- admin token and local connections ------------------------------------------------------------


def test_admin_token_file_is_created_once_root_only(tmp_path):
    path = ensure_admin_token(tmp_path / "state")
    assert path.name == TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = read_token(path)
    assert token and len(token) >= 43
    assert ensure_admin_token(tmp_path / "state") == path and read_token(path) == token
    os.chmod(path, 0o644)  # loosened by hand: tightened again
    ensure_admin_token(tmp_path / "state")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", ""),
        ("Bearer", ""),
        (None, None),
    ],
)
def test_bearer(header, token):
    req = _request() if header is None else _request(authorization=header)
    assert bearer(req) == token


def test_token_matches():
    assert token_matches("abc", "abc")
    assert not token_matches("abd", "abc")
    assert not token_matches("", "")
    assert not token_matches("abc", None)


@pytest.mark.parametrize(
    ("peer", "headers", "local"),
    [
        ("127.0.0.1", {}, True),
        ("::1", {}, True),
        ("127.0.0.1", {"x_forwarded_for": "203.0.113.1"}, False),
        ("127.0.0.1", {"forwarded": "for=203.0.113.1"}, False),
        ("10.208.0.2", {}, False),
        ("192.0.2.1", {}, False),
        (None, {}, False),
    ],
)
def test_is_direct_local(peer, headers, local):
    assert is_direct_local(peer, _request(**headers)) is local


@pytest.mark.parametrize(
    ("domain", "port", "origin"),
    [
        ("example.com", 7112, ("https", None)),
        ("localhost", 7112, ("http", 7112)),
        ("hub.localhost", 8000, ("http", 8000)),
        ("example.test", 7112, ("http", 7112)),
    ],
)
def test_default_origin(domain, port, origin):
    assert default_origin(SimpleNamespace(base_domain=domain, port=port)) == origin


# -- the page --------------------------------------------------------------------------------------


def test_page_escapes_the_user_and_loads_nothing_external():
    response = dashboard_response('<img src=x onerror="alert(1)">', True, "tok&en")
    text = response.text
    assert "<img src=x" not in text and "&lt;img src=x" in text
    assert 'content="tok&amp;en"' in text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)  # no external assets
    assert '<meta name="viewport"' in text
    assert '<link rel="icon" href="data:,">' in text  # no favicon request to an environment
    nonce = re.search(r"'nonce-([^']+)'", response.headers["content-security-policy"]).group(1)
    assert text.count(f'nonce="{nonce}"') == 2  # the style and the script
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["cache-control"] == "no-store"


def test_page_shows_the_safe_name_and_logs_out_by_post_with_the_token():
    from hubcontrol.names import safe_name

    lookalike = "\u0430lice"  # Cyrillic a
    text = dashboard_response(lookalike, False, "the-token").text
    viewer = re.search(r'<b id="viewer" title="([^"]*)">([^<]*)</b>', text)
    assert viewer.group(2) == safe_name(lookalike) != "alice"
    assert viewer.group(1) == lookalike  # the provider's name, as a tooltip
    form = re.search(r'<form method="post" action="/_hub/logout">(.*?)</form>', text, re.S)
    assert '<input type="hidden" name="csrf" value="the-token">' in form.group(1)
    assert 'href="/_hub/logout"' not in text  # no logout by GET link
    assert "shown(u)" in SCRIPT and "at the login provider" in SCRIPT


def test_script_never_inserts_html():
    assert "innerHTML" not in SCRIPT and "insertAdjacentHTML" not in SCRIPT
    assert "eval(" not in SCRIPT


def test_script_parses():
    """node is installed wherever the tests run (the OIDC provider needs it)."""
    env = node_env()
    assert shutil.which("node", path=env["PATH"]), "node is missing (scripts/install-test-deps.sh)"
    proc = subprocess.run(
        ["node", "-e", "new Function(require('fs').readFileSync(0, 'utf8'))"],
        input=SCRIPT,
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
