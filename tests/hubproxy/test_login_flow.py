"""Login, routing, WebSockets and logout through the real proxy (lean mitmproxy master), against
the real npm ``oidc-provider`` and PyPI ``oidc-provider-mock``, with echo servers standing in for
environments (``proxyharness.StubHub``; the real Hub is covered by tests/e2e)."""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest

from hubcontrol.config import OAuthConfig, Template
from hubcontrol.names import safe_name
from hubproxy.addons.websocketrelay import Relay
from tests.support.echoenv import echo_environment
from tests.support.oidc_provider import free_port, npm_oidc_provider
from tests.support.proxyfakes import make_config
from tests.support.proxyharness import (
    StubHub,
    logout,
    running_proxy,
    wait_ready,
    ws_handshake,
    ws_roundtrip,
)
from tests.support.webclient import browser, provider_login

DOMAIN = "example.test"
ALICE_IP, BOB_IP = "127.0.0.2", "127.0.0.3"


@pytest.fixture(scope="module")
def envs():
    """Two 'environments' (echo servers) per user address, one port per prefix."""
    term, code = free_port(), free_port()
    with (
        echo_environment("alice-term", ALICE_IP, term),
        echo_environment("alice-code", ALICE_IP, code),
        echo_environment("bob-term", BOB_IP, term),
        echo_environment("bob-code", BOB_IP, code),
    ):
        yield {"term": term, "code": code}


def hub_config(tmp_path, envs, issuer, **overrides):
    oauth = OAuthConfig(
        client_id="hub",
        client_secret="hub-secret",
        authorize_url=f"{issuer}/auth",
        token_url=f"{issuer}/token",
        userinfo_url=f"{issuer}/me",
        userinfo_path="preferred_username",
    )
    values = dict(
        routes=envs,
        base_domain=DOMAIN,
        oauth=oauth,
        session_secret="f" * 64,
        templates={"default": Template("default", "img"), "python": Template("python", "py")},
    )
    values.update(overrides)
    return make_config(tmp_path, **values)


def callbacks(port):
    return [f"http://{p}.{DOMAIN}:{port}/_hub/oauth/callback" for p in ("term", "code")]


def hub_provider(port: int, **provider):
    """The npm oidc-provider with the hub as its client, called back on both prefixes."""
    client = {"client_id": "hub", "client_secret": "hub-secret", "redirect_uris": callbacks(port)}
    return npm_oidc_provider([client], **provider)


def started(hub, timeout: float = 5.0) -> list:
    """The hub's start calls, once there is one: the router hands the start to the control
    thread, which may run it a moment after the browser already has its answer."""
    deadline = time.monotonic() + timeout
    while not hub.ensure_calls and time.monotonic() < deadline:
        time.sleep(0.02)
    return hub.ensure_calls


@pytest.fixture
def proxy_port():
    return free_port()


@pytest.mark.oidc
def test_login_lands_in_own_environment_with_domain_cookie(tmp_path, envs, proxy_port):
    with hub_provider(proxy_port) as issuer:
        hub = StubHub([ALICE_IP, BOB_IP], envs)
        with running_proxy(hub_config(tmp_path, envs, issuer), hub, proxy_port):
            term = f"http://term.{DOMAIN}:{proxy_port}"
            with browser(DOMAIN, proxy_port) as client:
                r = client.get(f"{term}/work?x=1")
                r = provider_login(client, r, "alice")
                # back on the hub: the environment is starting, the page polls and continues
                assert r.status_code == 503 and "/_hub/api/progress" in r.text
                assert str(r.url) == f"{term}/work?x=1"
                session = client.cookies.jar
                cookie = next(c for c in session if c.name == "rediacc_hub_session")
                assert cookie.domain in (DOMAIN, "." + DOMAIN)
                assert cookie.has_nonstandard_attr("HttpOnly")
                wait_ready(client, term)
                echo = client.get(f"{term}/work?x=1").json()
                assert echo["name"] == "alice-term" and echo["path"] == "/work?x=1"
                headers = {k.lower(): v for k, v in echo["headers"]}
                assert "rediacc_hub" not in headers.get("cookie", "")
                assert headers["host"] == f"term.{DOMAIN}:{proxy_port}"
                assert headers["x-forwarded-proto"] == "http"
                assert headers["x-forwarded-for"] == "127.0.0.1"
                # the domain cookie covers the other prefixes: no second login
                echo = client.get(f"http://code.{DOMAIN}:{proxy_port}/").json()
                assert echo["name"] == "alice-code"
                assert hub.ensure_calls == [("alice", None)]
                assert ("alice", "http") in hub.touches
                # logout ends the session everywhere
                r = logout(client, term)
                assert r.status_code == 200 and "Logged out" in r.text
                r = client.get(f"{term}/", follow_redirects=False)
                assert r.status_code == 302 and r.headers["location"].startswith("/_hub/login")


@pytest.mark.oidc
def test_two_users_each_reach_only_their_own(tmp_path, envs, proxy_port):
    with hub_provider(proxy_port) as issuer:
        hub = StubHub([ALICE_IP, BOB_IP], envs, start_delay=0)
        with running_proxy(hub_config(tmp_path, envs, issuer), hub, proxy_port):
            term = f"http://term.{DOMAIN}:{proxy_port}"
            names = {}
            cookies = {}
            for user in ("alice", "bob"):
                with browser(DOMAIN, proxy_port) as client:
                    provider_login(client, client.get(f"{term}/"), user)
                    wait_ready(client, term)
                    names[user] = client.get(f"{term}/").json()["name"]
                    cookies[user] = client.cookies.get("rediacc_hub_session")
            assert names == {"alice": "alice-term", "bob": "bob-term"}
            # splice alice's signature onto bob's claims: refused, never bob's or alice's env
            forged = cookies["bob"].split(".")[0] + "." + cookies["alice"].split(".")[1]
            with browser(DOMAIN, proxy_port) as client:
                client.cookies.set("rediacc_hub_session", forged, domain=DOMAIN)
                r = client.get(f"{term}/", follow_redirects=False)
                assert r.status_code == 302 and r.headers["location"].startswith("/_hub/login")


@pytest.mark.oidc
def test_user_outside_allowed_groups_gets_403(tmp_path, envs, proxy_port):
    with hub_provider(
        proxy_port, groups={"alice": ["dev", "staff"], "mallory": ["guests"]}
    ) as issuer:
        config = hub_config(tmp_path, envs, issuer, allowed_groups=frozenset({"dev"}))
        hub = StubHub([ALICE_IP, BOB_IP], envs, start_delay=0)
        with running_proxy(config, hub, proxy_port) as proxy:
            term = f"http://term.{DOMAIN}:{proxy_port}"
            with browser(DOMAIN, proxy_port) as client:
                r = provider_login(client, client.get(f"{term}/"), "mallory")
                assert r.status_code == 403 and "not in a group" in r.text
                assert "rediacc_hub_session" not in client.cookies
            with browser(DOMAIN, proxy_port) as client:
                provider_login(client, client.get(f"{term}/"), "alice")
                wait_ready(client, term)
                assert client.get(f"{term}/").json()["name"] == "alice-term"
            # groups stay server-side: the session store has them, the cookie does not
            (session,) = proxy.context.sessions._sessions.values()
            assert session.groups == ("dev", "staff")
            assert hub.ensure_calls == [("alice", None)]


@pytest.mark.oidc
def test_template_choice_round_trips_and_cancel_is_a_clear_page(tmp_path, envs, proxy_port):
    with hub_provider(proxy_port) as issuer:
        hub = StubHub([ALICE_IP, BOB_IP], envs, start_delay=0)
        with running_proxy(hub_config(tmp_path, envs, issuer), hub, proxy_port):
            term = f"http://term.{DOMAIN}:{proxy_port}"
            with browser(DOMAIN, proxy_port) as client:
                r = client.get(f"{term}/_hub/login?template=python&next=https://evil.org/")
                r = provider_login(client, r, "alice")
                assert urlsplit(str(r.url)).netloc == f"term.{DOMAIN}:{proxy_port}"
                assert started(hub)[0] == ("alice", "python")
            with browser(DOMAIN, proxy_port) as client:
                r = client.get(f"{term}/")
                abort = re.search(r'href="([^"]+/abort)"', r.text).group(1)
                r = client.get(httpx.URL(str(r.url)).join(abort))
                assert r.status_code == 403 and "declined" in r.text
                assert str(r.url).startswith(f"{term}/_hub/oauth/callback")


@pytest.mark.oidc
def test_provider_failures_end_on_clear_pages(tmp_path, envs, proxy_port):
    dead = free_port()
    with hub_provider(proxy_port) as issuer:
        cases = [
            ({"token_url": f"http://127.0.0.1:{dead}/token"}, 502, "could not be reached"),
            ({"userinfo_url": f"http://127.0.0.1:{dead}/me"}, 502, "could not be reached"),
            ({"userinfo_path": "ocs.data.id"}, 502, "ocs.data.id"),
            ({"client_secret": "wrong"}, 502, "invalid_client"),
        ]
        for overrides, status, text in cases:
            base = hub_config(tmp_path, envs, issuer).oauth
            oauth = OAuthConfig(**{**base.__dict__, **overrides})
            config = hub_config(tmp_path, envs, issuer, oauth=oauth)
            hub = StubHub([ALICE_IP, BOB_IP], envs, start_delay=0)
            with running_proxy(config, hub, proxy_port):
                term = f"http://term.{DOMAIN}:{proxy_port}"
                with browser(DOMAIN, proxy_port) as client:
                    r = provider_login(client, client.get(f"{term}/"), "alice")
                    assert r.status_code == status, (overrides, r.text[:500])
                    assert text in r.text, (overrides, r.text[:800])
                    assert "Log in again" in r.text
                    assert hub.ensure_calls == []
                    # replaying the callback (code already used, state cookie gone) is a 400 page
                    replay = client.get(r.url, follow_redirects=False)
                    assert replay.status_code == 400


def ws_connect(port: int, host: str, cookie: str, path: str = "/ws"):
    sock = socket.create_connection(("127.0.0.1", port), 5)
    try:
        return sock, ws_handshake(sock, host, cookie, path)
    except AssertionError:
        sock.close()
        raise


@pytest.mark.oidc
def test_websocket_relays_stamps_activity_and_closes_at_logout(tmp_path, envs, proxy_port):
    with hub_provider(proxy_port) as issuer:
        hub = StubHub([ALICE_IP, BOB_IP], envs, start_delay=0)
        with running_proxy(hub_config(tmp_path, envs, issuer), hub, proxy_port) as proxy:
            term = f"http://term.{DOMAIN}:{proxy_port}"
            with browser(DOMAIN, proxy_port) as client:
                provider_login(client, client.get(f"{term}/"), "alice")
                wait_ready(client, term)
                # the session counts together with the browser cookie its login completed in
                cookie = "; ".join(
                    f"{name}={client.cookies.get(name)}"
                    for name in ("rediacc_hub_session", "rediacc_hub_browser")
                )
                host = f"term.{DOMAIN}:{proxy_port}"
                sock, ws = ws_connect(proxy_port, host, cookie)
                hub.touches.clear()
                for i in range(50):
                    assert ws_roundtrip(sock, ws, f"m{i}") == f"alice-term:m{i}"
                assert hub.touches.count(("alice", "ws-in")) == 50
                assert hub.touches.count(("alice", "ws-out")) == 50
                # relayed as bytes (addons/websocketrelay.py): nothing of the frames is kept
                ((carrier,),) = proxy.context.websockets.values()
                assert isinstance(carrier, Relay) and carrier.user == "alice"
                logout(client, term)
                sock.settimeout(5)
                assert ws_roundtrip(sock, ws, "after logout") is None
                sock.close()
                # a new WebSocket with the old cookie is refused
                with pytest.raises(AssertionError, match="refused with 401"):
                    ws_connect(proxy_port, host, cookie)


@pytest.mark.parametrize(
    ("claims", "path"),
    [
        ({"login": "octocat", "id": 583231}, "login"),  # GitHub's /user
        ({"ocs": {"meta": {"status": "ok"}, "data": {"id": "ncuser"}}}, "ocs.data.id"),  # Nextcloud
    ],
)
def test_userinfo_shapes_of_github_and_nextcloud(tmp_path, envs, proxy_port, claims, path):
    from oidc_provider_mock import User, run_server_in_thread

    with run_server_in_thread(user_claims=[User(sub="someone", claims=claims)]) as server:
        issuer = f"http://localhost:{server.server_port}"
        oauth = OAuthConfig(
            client_id="any-client",
            client_secret="any-secret",
            authorize_url=f"{issuer}/oauth2/authorize",
            token_url=f"{issuer}/oauth2/token",
            userinfo_url=f"{issuer}/userinfo",
            userinfo_path=path,
        )
        hub = StubHub([ALICE_IP, BOB_IP], envs, start_delay=0)
        config = hub_config(tmp_path, envs, issuer, oauth=oauth)
        with running_proxy(config, hub, proxy_port) as proxy:
            term = f"http://term.{DOMAIN}:{proxy_port}"
            with browser(DOMAIN, proxy_port) as client:
                r = client.get(f"{term}/")
                assert "/oauth2/authorize" in str(r.url)
                r = client.post(r.url, data={"sub": "someone"})
                assert r.status_code in (200, 503), r.text[:500]
            expected = "octocat" if path == "login" else "ncuser"
            (session,) = proxy.context.sessions._sessions.values()
            assert session.user == expected
            assert started(hub) == [(expected, None)]
            json.dumps(claims)


@pytest.mark.oidc
def test_fixed_redirect_uri_on_another_host_with_a_domain_cookie(tmp_path, envs, proxy_port):
    fixed = f"http://term.{DOMAIN}:{proxy_port}/_hub/oauth/callback"
    client = {"client_id": "hub", "client_secret": "hub-secret", "redirect_uris": [fixed]}
    with npm_oidc_provider([client]) as issuer:
        config = hub_config(tmp_path, envs, issuer)
        oauth = OAuthConfig(**{**config.oauth.__dict__, "redirect_uri": fixed})
        hub = StubHub([ALICE_IP, BOB_IP], envs, start_delay=0)
        with running_proxy(hub_config(tmp_path, envs, issuer, oauth=oauth), hub, proxy_port):
            code = f"http://code.{DOMAIN}:{proxy_port}"
            with browser(DOMAIN, proxy_port) as c:
                r = provider_login(c, c.get(f"{code}/notes?x=1"), "alice")
                assert str(r.url) == f"{code}/notes?x=1"
                wait_ready(c, code)
                assert c.get(f"{code}/").json()["name"] == "alice-code"


def test_unusable_username_is_refused_at_login(tmp_path, envs, proxy_port):
    from oidc_provider_mock import User, run_server_in_thread

    claims = {"login": "\u0007\u0008"}  # control characters only
    with run_server_in_thread(user_claims=[User(sub="odd", claims=claims)]) as server:
        issuer = f"http://localhost:{server.server_port}"
        oauth = OAuthConfig(
            client_id="c",
            client_secret="s",
            authorize_url=f"{issuer}/oauth2/authorize",
            token_url=f"{issuer}/oauth2/token",
            userinfo_url=f"{issuer}/userinfo",
            userinfo_path="login",
        )
        hub = StubHub([ALICE_IP, BOB_IP], envs, start_delay=0)
        with running_proxy(hub_config(tmp_path, envs, issuer, oauth=oauth), hub, proxy_port) as p:
            with browser(DOMAIN, proxy_port) as c:
                r = c.get(f"http://term.{DOMAIN}:{proxy_port}/")
                r = c.post(r.url, data={"sub": "odd"})
                assert r.status_code == 403 and "characters the hub cannot use" in r.text
            assert len(p.context.sessions) == 0 and hub.ensure_calls == []


@pytest.mark.oidc
def test_logout_only_by_the_hubs_own_post_with_the_token(tmp_path, envs, proxy_port):
    """Issue #18: any site could log a user out with a link to /_hub/logout."""
    with hub_provider(proxy_port) as issuer:
        hub = StubHub([ALICE_IP, BOB_IP], envs, start_delay=0)
        with running_proxy(hub_config(tmp_path, envs, issuer), hub, proxy_port) as proxy:
            term = f"http://term.{DOMAIN}:{proxy_port}"
            with browser(DOMAIN, proxy_port) as client:
                provider_login(client, client.get(f"{term}/"), "alice")
                wait_ready(client, term)

                def still_in() -> bool:
                    r = client.get(f"{term}/", follow_redirects=False)
                    return r.status_code == 200 and r.json()["name"] == "alice-term"

                # a link, an image or a top-level navigation from anywhere: only a question
                for headers in ({}, {"Sec-Fetch-Site": "cross-site"}):
                    r = client.get(f"{term}/_hub/logout", headers=headers)
                    assert r.status_code == 200 and "Log out?" in r.text
                token = re.search(r'name="csrf" value="([^"]+)"', r.text).group(1)
                assert still_in()
                # posts that are not the hub's own form: refused, nobody is logged out
                refused = [
                    ({}, {}),  # no token
                    ({"csrf": "forged"}, {}),
                    ({"csrf": token}, {"Origin": "https://evil.org"}),
                    ({"csrf": token}, {"Origin": f"http://code.{DOMAIN}:{proxy_port}"}),
                    ({"csrf": token}, {"Sec-Fetch-Site": "same-site"}),
                    ({"csrf": token}, {"Sec-Fetch-Site": "cross-site"}),
                ]
                for data, headers in refused:
                    r = client.post(f"{term}/_hub/logout", data=data, headers=headers)
                    assert r.status_code == 403 and "still logged in" in r.text, (data, headers)
                    assert still_in(), (data, headers)
                assert len(proxy.context.sessions) == 1
                # the button on the page: logged out, everywhere
                r = client.post(
                    f"{term}/_hub/logout",
                    data={"csrf": token},
                    headers={"Origin": term, "Sec-Fetch-Site": "same-origin"},
                )
                assert r.status_code == 200 and "Logged out" in r.text
                assert not still_in() and len(proxy.context.sessions) == 0


@pytest.mark.parametrize(
    ("shape", "claims", "user_path", "groups_path", "allowed_group"),
    [
        # Nextcloud's OCS user document: groups under ocs.data
        ("nextcloud", {"ocs": {"meta": {"status": "ok"}, "data": {"id": "{u}", "groups": ["{g}",
         "users"]}}}, "ocs.data.id", "ocs.data.groups", "devs"),
        # Keycloak with a Group Membership mapper, full group paths
        ("keycloak", {"preferred_username": "{u}", "groups": ["/{g}", "/offline"]},
         "preferred_username", "groups", "/devs"),
        # GitLab's OIDC userinfo: group full paths
        ("gitlab", {"nickname": "{u}", "groups": ["acme/{g}", "acme"]}, "nickname", "groups",
         "acme/devs"),
    ],
)  # fmt: skip
def test_allowed_groups_read_from_any_providers_shape(
    tmp_path, envs, proxy_port, shape, claims, user_path, groups_path, allowed_group
):
    """HUB_ALLOWED_GROUPS with HUB_OAUTH_GROUPS_PATH: a member gets in, a non-member is refused,
    for the userinfo shapes of Nextcloud, Keycloak and GitLab (the groups claim used to be read
    only at the top level, so with Nextcloud setting HUB_ALLOWED_GROUPS locked everyone out)."""
    from oidc_provider_mock import User, run_server_in_thread

    def shaped(user: str, group: str) -> dict:
        return json.loads(json.dumps(claims).replace("{u}", user).replace("{g}", group))

    users = [
        User(sub="member", claims=shaped("ann", "devs")),
        User(sub="outsider", claims=shaped("oz", "sales")),
    ]
    with run_server_in_thread(user_claims=users) as server:
        issuer = f"http://localhost:{server.server_port}"
        oauth = dataclasses.replace(
            _mock_provider_oauth(issuer, user_path), groups_path=groups_path, scopes=("profile",)
        )
        hub = StubHub([ALICE_IP, BOB_IP], envs, start_delay=0)
        config = hub_config(
            tmp_path, envs, issuer, oauth=oauth, allowed_groups=frozenset({allowed_group})
        )
        with running_proxy(config, hub, proxy_port) as proxy:
            term = f"http://term.{DOMAIN}:{proxy_port}"
            with browser(DOMAIN, proxy_port) as client:
                r = client.get(f"{term}/")
                r = client.post(r.url, data={"sub": "outsider"})
                assert r.status_code == 403 and "not in a group" in r.text, shape
            with browser(DOMAIN, proxy_port) as client:
                r = client.get(f"{term}/")
                r = client.post(r.url, data={"sub": "member"})
                assert r.status_code in (200, 503), r.text[:500]
            (session,) = proxy.context.sessions._sessions.values()
            assert session.user == "ann" and allowed_group in session.groups
            assert started(hub) == [("ann", None)]


def _mock_provider_oauth(issuer: str, path: str) -> OAuthConfig:
    return OAuthConfig(
        client_id="c",
        client_secret="s",
        authorize_url=f"{issuer}/oauth2/authorize",
        token_url=f"{issuer}/oauth2/token",
        userinfo_url=f"{issuer}/userinfo",
        userinfo_path=path,
    )


@pytest.mark.parametrize("impostor", ["alice\u00a0", "\u3000alice", "alice\u2028"])
def test_unicode_padded_admin_names_never_become_alice(tmp_path, envs, proxy_port, impostor):
    """Issue #18: str.strip() turned these provider names into ``alice``, admin included."""
    from oidc_provider_mock import User, run_server_in_thread

    users = [
        User(sub="impostor", claims={"login": impostor}),
        User(sub="look-alike", claims={"login": "\u0430lice"}),  # Cyrillic a: another user
    ]
    with run_server_in_thread(user_claims=users) as server:
        issuer = f"http://localhost:{server.server_port}"
        config = hub_config(
            tmp_path,
            envs,
            issuer,
            oauth=_mock_provider_oauth(issuer, "login"),
            admin_users=frozenset({"alice"}),
        )
        hub = StubHub([ALICE_IP, BOB_IP], envs, start_delay=0)
        with running_proxy(config, hub, proxy_port) as proxy:
            term = f"http://term.{DOMAIN}:{proxy_port}"
            with browser(DOMAIN, proxy_port) as client:
                r = client.post(client.get(f"{term}/").url, data={"sub": "impostor"})
                assert r.status_code == 403 and "Login refused" in r.text
                assert "spaces or invisible characters" in r.text or "line break" in r.text
                assert "rediacc_hub_session" not in client.cookies
            assert len(proxy.context.sessions) == 0 and hub.ensure_calls == []
            # the look-alike logs in as itself: not alice, not an admin, shown by its safe name
            with browser(DOMAIN, proxy_port) as client:
                r = client.post(client.get(f"{term}/").url, data={"sub": "look-alike"})
                assert r.status_code in (200, 503), r.text[:300]
                status = client.get(
                    f"{term}/_hub/api/status", headers={"Sec-Fetch-Mode": "cors"}
                ).json()
                shown = safe_name("\u0430lice")
                assert status["viewer"] == {"user": "\u0430lice", "name": shown, "admin": False}
                assert [u["name"] for u in status["users"]] == [shown]
                page = client.get(f"http://{DOMAIN}:{proxy_port}/_hub/dashboard").text
                assert f'<b id="viewer" title="\u0430lice">{shown}</b>' in page
                # not alice's entry, which only alice or an admin may see
                r = client.get(f"{term}/_hub/api/users/alice", headers={"Sec-Fetch-Mode": "cors"})
                assert r.status_code == 403
            (session,) = proxy.context.sessions.sessions()
            assert session.user == "\u0430lice" and session.admin is False
            assert started(hub) == [("\u0430lice", None)]


@pytest.mark.oidc
def test_return_urls_only_to_served_prefixes(tmp_path, envs, proxy_port):
    with hub_provider(proxy_port) as issuer:
        hub = StubHub([ALICE_IP, BOB_IP], envs, start_delay=0)
        with running_proxy(hub_config(tmp_path, envs, issuer), hub, proxy_port):
            term = f"http://term.{DOMAIN}:{proxy_port}"
            code = f"http://code.{DOMAIN}:{proxy_port}"
            with browser(DOMAIN, proxy_port) as client:
                # a label under the base domain that the hub does not serve: back to term.
                nxt = f"http://blog.{DOMAIN}:{proxy_port}/steal"
                r = client.get(f"{term}/_hub/login", params={"next": nxt})
                r = provider_login(client, r, "alice")
                assert str(r.url) == f"{term}/"
                # a served prefix is fine
                r = client.get(f"{term}/_hub/login", params={"next": f"{code}/notes"})
                assert str(r.url) == f"{code}/notes"
