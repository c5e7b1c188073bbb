from __future__ import annotations

import pytest

from hubproxy.addons import oauthlogin
from hubproxy.addons.router import forwarded_for, upstream
from tests.support.proxyfakes import make_route

NEXTCLOUD = {"ocs": {"meta": {"status": "ok"}, "data": {"id": "alice", "groups": ["dev"]}}}


@pytest.mark.parametrize(
    ("data", "path", "user"),
    [
        ({"preferred_username": "alice"}, "preferred_username", "alice"),
        ({"login": "octocat", "id": 1}, "login", "octocat"),
        (NEXTCLOUD, "ocs.data.id", "alice"),
        ({"id": 42}, "id", "42"),
        ({"emails": ["a@x", "b@x"]}, "emails.1", "b@x"),
        # exactly what the provider sent: refusing padded names is identity.check_username's
        ({"sub": "  padded "}, "sub", "  padded "),
        ({"sub": "alice\u00a0"}, "sub", "alice\u00a0"),
        ({"sub": "  "}, "sub", "  "),
    ],
)
def test_username_from_userinfo(data, path, user):
    assert oauthlogin.username_from_userinfo(data, path) == user


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({}, "sub"),
        ({"ocs": {"data": {}}}, "ocs.data.id"),
        ({"ocs": "x"}, "ocs.data.id"),
        ({"sub": ""}, "sub"),
        ({"sub": None}, "sub"),
        ({"sub": True}, "sub"),
        ({"sub": {"a": 1}}, "sub"),
        (["alice"], "sub"),
        ({"emails": ["a"]}, "emails.3"),
    ],
)
def test_username_missing_is_a_provider_error(data, path):
    with pytest.raises(oauthlogin.ProviderError) as e:
        oauthlogin.username_from_userinfo(data, path)
    assert e.value.status == 502 and path in e.value.detail


@pytest.mark.parametrize(
    ("data", "groups"),
    [
        ({"groups": ["dev", "ops"]}, ("dev", "ops")),
        ({"groups": "dev, ops"}, ("dev", "ops")),
        ({"groups": "dev ops"}, ("dev", "ops")),
        ({"groups": [1, "x", None, {}]}, ("1", "x")),
        ({}, ()),
        ({"groups": None}, ()),
    ],
)
def test_groups_from_userinfo(data, groups):
    assert oauthlogin.groups_from_userinfo(data) == groups


@pytest.mark.parametrize(
    ("groups", "allowed_groups", "ok"),
    [
        ((), frozenset(), True),
        (("dev",), frozenset({"dev", "ops"}), True),
        (("guest",), frozenset({"dev"}), False),
        ((), frozenset({"dev"}), False),
    ],
)
def test_allowed(groups, allowed_groups, ok):
    assert oauthlogin.allowed(groups, allowed_groups) is ok


@pytest.mark.parametrize(
    ("extra", "scope"),
    [((), "openid"), (("read:user",), "openid read:user"), (("openid", "groups"), "openid groups")],
)
def test_effective_scopes(extra, scope):
    assert oauthlogin.effective_scopes(extra) == scope


def test_redirect_uri():
    assert oauthlogin.redirect_uri(None, "https", "Term.Example.com") == (
        "https://term.example.com/_hub/oauth/callback"
    )
    assert oauthlogin.redirect_uri(None, "http", "term.localhost:7112") == (
        "http://term.localhost:7112/_hub/oauth/callback"
    )
    assert oauthlogin.redirect_uri("https://x/cb", "http", "term.localhost") == "https://x/cb"


PORTS = {"term": 7681, "code": 8080}


@pytest.mark.parametrize(
    ("route", "prefix", "address"),
    [
        (make_route("a", "running", "10.208.0.2", PORTS), "term", ("10.208.0.2", 7681)),
        (make_route("a", "running", "10.208.0.2", {}), "code", ("10.208.0.2", 8080)),
        (make_route("a", "running", "10.208.0.2", PORTS), "desktop", None),
        (make_route("a", "starting", "10.208.0.2", PORTS), "term", None),
        (make_route("a", "checkpointed", "10.208.0.2", PORTS), "term", None),
        (make_route("a", "running", "", PORTS), "term", None),
        (None, "term", None),
    ],
)
def test_upstream(route, prefix, address):
    assert upstream(route, prefix, PORTS) == address


@pytest.mark.parametrize(
    ("running_template", "chosen", "routed"),
    [
        ("default", None, True),
        ("default", "default", True),
        ("default", "python", False),
        ("", "python", True),
    ],
)
def test_upstream_waits_for_the_chosen_template(running_template, chosen, routed):
    route = make_route("a", "running", "10.208.0.2", PORTS, running_template)
    assert (upstream(route, "term", PORTS, chosen) is not None) is routed


def test_forwarded_for():
    assert forwarded_for(None, "10.0.0.1") == "10.0.0.1"
    assert forwarded_for("1.2.3.4", "10.0.0.1") == "1.2.3.4, 10.0.0.1"


@pytest.mark.parametrize(
    ("headers", "large"),
    [
        ({}, False),
        ({"content-length": "10"}, False),
        ({"content-length": str(1 << 20)}, False),
        ({"content-length": str((1 << 20) + 1)}, True),
        ({"content-length": "junk"}, True),
        ({"transfer-encoding": "chunked"}, True),
    ],
)
def test_large_body(headers, large):
    from mitmproxy.test import tutils

    from hubproxy.addons.router import large_body

    req = tutils.treq()
    req.headers.clear()
    req.headers.update(headers)
    assert large_body(req) is large


def test_logins_share_the_verifying_tls_context_made_at_start(tmp_path, monkeypatch):
    """A login's provider client reuses the TLS context the addon made at start-up: building
    one reads the whole CA bundle, tens of milliseconds of CPU on the proxy's event loop per
    login, which stalled every other request while many users logged in (bench/load.py). The
    shared context still verifies the provider's certificate and host name."""
    import ssl

    from tests.support.proxyfakes import make_context

    login = oauthlogin.OAuthLogin(make_context(tmp_path))
    login.running()

    def no_new_context(*args, **kwargs):
        raise AssertionError("a login built a TLS context")

    monkeypatch.setattr(ssl, "create_default_context", no_new_context)
    first = login._client("http://term.example.com/_hub/oauth/callback")
    second = login._client("http://code.example.com/_hub/oauth/callback", "client_secret_post")
    shared = first._transport._pool._ssl_context
    assert shared is second._transport._pool._ssl_context
    assert shared.verify_mode == ssl.CERT_REQUIRED and shared.check_hostname
    assert (
        shared.cert_store_stats()["x509_ca"] > 0
    )  # the CA bundle is loaded: nothing is trusted blindly
