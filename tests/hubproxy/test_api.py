"""The status API's permission boundaries through the real proxy (lean mitmproxy master, every
addon of the pipeline) and the real ``hubcontrol.Hub`` (its control thread, stats sampler and
``stop``), with user records seeded in its state directory: no environment is started here, so no
dockerd is needed (tests/e2e start real ones).

Principals: the admin token (Bearer), an admin's session (HUB_ADMIN_USERS), a regular user's
session, no session; POSTs with a missing, wrong, other session's and cross-origin CSRF token.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import stat

import httpx
import pytest

from hubproxy.addons.adminapi import TOKEN_FILE, probe_answer
from hubproxy.auth.csrf import csrf_token
from hubproxy.web.openapi import ENTRY
from tests.support.statussite import ADMIN, DOMAIN, admin_token, seeded_site, session_for


@pytest.fixture
def site(tmp_path):
    with seeded_site(tmp_path) as s:
        yield s


def client(proxy, host=None, **headers) -> httpx.Client:
    host = host or f"term.{DOMAIN}:{proxy.port}"
    return httpx.Client(
        base_url=f"http://127.0.0.1:{proxy.port}",
        headers={"Host": host, **headers},
        timeout=30,
    )


# -- the admin token ---------------------------------------------------------------------------


def test_admin_token_is_generated_root_only_and_sees_everyone(site):
    proxy, hub, config = site
    path = config.state_dir / TOKEN_FILE
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    with client(proxy, host=f"127.0.0.1:{proxy.port}") as c:
        r = c.get("/_hub/api/status", headers={"Authorization": f"Bearer {admin_token(config)}"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert sorted(u["user"] for u in doc["users"]) == ["alice", "bob", "carol"]
    assert doc["viewer"] == {"user": None, "name": None, "admin": True}
    for entry in doc["users"]:
        assert set(ENTRY["required"]) <= set(entry)
        assert set(entry["routes"]) == {"term", "code"}
    bob = next(u for u in doc["users"] if u["user"] == "bob")
    assert bob["state"] == "checkpointed" and bob["template"] == "python"


@pytest.mark.parametrize(
    "authorization",
    ["Bearer wrong", "Bearer", "Basic YWRtaW46YWRtaW4=", "Bearer " + "x" * 3000],
)
def test_bad_admin_token_is_401_on_any_host(site, authorization):
    proxy, _, _ = site
    for host in (f"127.0.0.1:{proxy.port}", f"term.{DOMAIN}:{proxy.port}"):
        with client(proxy, host=host) as c:
            r = c.get("/_hub/api/status", headers={"Authorization": authorization})
            assert r.status_code == 401, (host, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
            r = c.post("/_hub/api/users/alice/stop", headers={"Authorization": authorization})
            assert r.status_code == 401


def test_admin_token_stops_any_user_without_csrf(site):
    proxy, hub, config = site
    with client(proxy, host=f"127.0.0.1:{proxy.port}") as c:
        auth = {"Authorization": f"Bearer {admin_token(config)}"}
        r = c.post("/_hub/api/users/bob/stop", headers=auth)
        assert r.status_code == 200, r.text
        assert r.json() == {"user": "bob", "action": "stop", "state": "stopped"}
        assert hub.record("bob")["state"] == "stopped"
        r = c.post("/_hub/api/users/nobody/stop", headers=auth)
        assert r.status_code == 404 and "nobody" in r.json()["error"]
        r = c.get("/_hub/api/users/nobody", headers=auth)
        assert r.status_code == 404
        r = c.post("/_hub/api/users/bob/explode", headers=auth)
        assert r.status_code == 404 and "unknown action" in r.json()["error"]
        r = c.get("/_hub/api/users/bob/stop", headers=auth)
        assert r.status_code == 405


def test_no_credentials_on_an_ip_host_is_refused(site):
    proxy, _, _ = site
    with client(proxy, host=f"127.0.0.1:{proxy.port}") as c:
        assert c.get("/_hub/api/status").status_code == 400  # not a host the browser path serves


# -- sessions ------------------------------------------------------------------------------------


def test_no_session_is_401(site):
    proxy, _, _ = site
    with client(proxy) as c:
        r = c.get("/_hub/api/status")
        assert r.status_code == 401 and r.headers["content-type"] == "application/json"
        r = c.post("/_hub/api/users/alice/stop")
        assert r.status_code == 401


def test_regular_user_sees_only_own_entry(site):
    proxy, _, _ = site
    _, cookie = session_for(proxy, "alice")
    with client(proxy, **cookie) as c:
        doc = c.get("/_hub/api/status").json()
        assert [u["user"] for u in doc["users"]] == ["alice"]
        assert doc["viewer"] == {"user": "alice", "name": "alice", "admin": False}
        assert doc["users"][0]["routes"] == {
            "code": f"http://code.{DOMAIN}:{proxy.port}/",
            "term": f"http://term.{DOMAIN}:{proxy.port}/",
        }
        assert c.get("/_hub/api/users/alice").status_code == 200
        # another user's entry: 403 whether or not that user exists
        for other in ("bob", "nobody"):
            r = c.get(f"/_hub/api/users/{other}")
            assert r.status_code == 403, r.text


def test_new_user_without_a_record_sees_a_stopped_placeholder(site):
    proxy, _, _ = site
    _, cookie = session_for(proxy, "dave")
    with client(proxy, **cookie) as c:
        doc = c.get("/_hub/api/status").json()
    assert [(u["user"], u["state"]) for u in doc["users"]] == [("dave", "stopped")]


def test_admin_session_sees_everyone(site):
    proxy, _, _ = site
    _, cookie = session_for(proxy, ADMIN)
    with client(proxy, **cookie) as c:
        doc = c.get("/_hub/api/status").json()
        assert sorted(u["user"] for u in doc["users"]) == ["alice", "bob", "carol"]
        assert doc["viewer"] == {"user": ADMIN, "name": ADMIN, "admin": True}
        assert c.get("/_hub/api/users/bob").json()["template"] == "python"


def _post(c, path, session, proxy, **headers):
    return c.post(
        path, headers={"X-Hub-CSRF": csrf_token(proxy.context.session_key, session.sid), **headers}
    )


def test_regular_user_cannot_act_on_others_or_checkpoint(site):
    proxy, hub, _ = site
    session, cookie = session_for(proxy, "alice")
    with client(proxy, **cookie) as c:
        for path in (
            "/_hub/api/users/bob/stop",
            "/_hub/api/users/bob/restart",
            "/_hub/api/users/bob/checkpoint",
            "/_hub/api/users/nobody/stop",
            "/_hub/api/users/alice/checkpoint",  # admins only
        ):
            r = _post(c, path, session, proxy)
            assert r.status_code == 403, (path, r.text)
    assert hub.record("bob")["state"] == "checkpointed"


def test_regular_user_stops_own_with_csrf(site):
    proxy, hub, _ = site
    session, cookie = session_for(proxy, "alice")
    with client(proxy, **cookie) as c:
        r = _post(c, "/_hub/api/users/alice/stop", session, proxy)
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "stopped" and hub.record("alice")["state"] == "stopped"


def test_admin_session_stops_others_with_csrf(site):
    proxy, hub, _ = site
    session, cookie = session_for(proxy, ADMIN)
    with client(proxy, **cookie) as c:
        r = _post(c, "/_hub/api/users/alice/stop", session, proxy)
        assert r.status_code == 200 and hub.record("alice")["state"] == "stopped"
        r = _post(c, "/_hub/api/users/nobody/stop", session, proxy)
        assert r.status_code == 404


@pytest.mark.parametrize(
    ("csrf", "extra", "reason"),
    [
        (None, {}, "missing CSRF"),
        ("forged", {}, "wrong CSRF"),
        ("other-session", {}, "wrong CSRF"),
        ("ok", {"Origin": "http://evil.example"}, "cross-origin"),
        ("ok", {"Origin": f"http://code.{DOMAIN}"}, "cross-origin"),  # a sibling subdomain
        ("ok", {"Sec-Fetch-Site": "same-site"}, "cross-site"),
        ("ok", {"Sec-Fetch-Site": "cross-site"}, "cross-site"),
    ],
)
def test_csrf_is_required_and_bound_to_the_session(site, csrf, extra, reason):
    proxy, hub, _ = site
    session, cookie = session_for(proxy, ADMIN)
    other, _ = session_for(proxy, ADMIN)
    tokens = {
        None: None,
        "forged": "A" * 43,
        "other-session": csrf_token(proxy.context.session_key, other.sid),
        "ok": csrf_token(proxy.context.session_key, session.sid),
    }
    headers = dict(extra)
    if tokens[csrf] is not None:
        headers["X-Hub-CSRF"] = tokens[csrf]
    with client(proxy, **cookie) as c:
        r = c.post("/_hub/api/users/bob/stop", headers=headers)
    assert r.status_code == 403 and reason in r.json()["error"], r.text
    assert hub.record("bob")["state"] == "checkpointed"


def test_same_origin_post_passes(site):
    proxy, hub, _ = site
    session, cookie = session_for(proxy, ADMIN)
    with client(proxy, **cookie) as c:
        r = _post(
            c,
            "/_hub/api/users/bob/stop",
            session,
            proxy,
            Origin=f"http://term.{DOMAIN}:{proxy.port}",
            **{"Sec-Fetch-Site": "same-origin"},
        )
    assert r.status_code == 200, r.text


def test_template_switch_is_validated(site):
    proxy, _, _ = site
    session, cookie = session_for(proxy, "alice")
    with client(proxy, **cookie) as c:
        r = _post(c, "/_hub/api/users/alice/restart?template=nope", session, proxy)
        assert r.status_code == 400 and "default, python" in r.json()["error"]
        r = _post(c, "/_hub/api/users/alice/stop?template=python", session, proxy)
        assert r.status_code == 400


# -- health, metrics, dashboard, openapi -----------------------------------------------------


def test_health_answers_on_any_host(site):
    proxy, _, _ = site
    for host in (f"127.0.0.1:{proxy.port}", f"term.{DOMAIN}:{proxy.port}", "whatever"):
        with client(proxy, host=host) as c:
            r = c.get("/_hub/health")
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["ok"] and body["live"] and body["ready"]
            assert body["control_plane"] == "running" and body["environments"] == 3
            assert c.get("/_hub/health/live").status_code == 200


def _raw(port: int, request: bytes) -> bytes:
    """The first answer the hub's port sends back for ``request`` (its head, and its body by
    Content-Length), or what it sent before it closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length: *(\d+)", head)
            if sep and len(body) >= (int(length.group(1)) if length else 0):
                break
    return data


def test_a_probe_is_answered_at_the_port_with_mitmproxys_own_document(site):
    """A load balancer's ``GET /_hub/health`` is answered by the hub's port before mitmproxy
    (hubproxy/server/admission.py): the same status, headers and document as mitmproxy's answer
    to the same endpoint (a POST, which goes through all of mitmproxy's layers and addons)."""
    proxy, _, _ = site
    assert proxy.admission is not None
    before = proxy.admission.answered
    with client(proxy) as c:  # one connection, kept open between probes
        fast = c.get("/_hub/health?probe=1")
        live = c.get("/_hub/health/live")
        head = c.head("/_hub/health/ready")
    with client(proxy) as c:
        slow = c.post("/_hub/health")
    assert proxy.admission.answered == before + 3  # the GETs and the HEAD; not the POST
    assert fast.status_code == slow.status_code == 200
    assert dict(fast.headers) == dict(slow.headers)
    assert fast.json() == slow.json() and fast.json()["environments"] == 3
    assert live.status_code == 200 and live.json() == fast.json()
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == fast.headers["content-length"]
    # asked to close: answered, then closed (and the answer says so)
    host = f"term.{DOMAIN}:{proxy.port}".encode()
    answer = _raw(proxy.port, b"GET /_hub/health HTTP/1.1\r\nHost: " + host +
                  b"\r\nConnection: close\r\n\r\n")  # fmt: skip
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nConnection: close\r\n" in answer
    assert answer.endswith(fast.content)


def test_a_head_answer_made_by_the_hub_has_no_body_on_a_kept_connection(site):
    """HEAD answers the hub makes itself (a login redirect, a health document through mitmproxy)
    send their head only, with a GET's Content-Length: a keep-alive client (a load balancer's
    checker) reads the next answer on the connection where it starts, not inside a body."""
    proxy, _, _ = site
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    host = {"Host": f"term.{DOMAIN}:{proxy.port}"}
    try:
        conn.request("GET", "/_hub/health/live", headers=host)  # the first: answered at the port
        get = conn.getresponse()
        document = get.read()
        # the second request on a connection goes through mitmproxy and the hub's addons
        for path, accept in (("/_hub/health/live", "*/*"), ("/", "text/html"), ("/nope", "*/*")):
            conn.request("HEAD", path, headers={**host, "Accept": accept})
            head = conn.getresponse()
            assert head.read() == b"", (path, head.status)
            if path == "/_hub/health/live":
                assert head.status == 200 and head.headers["content-length"] == str(len(document))
        conn.request("GET", "/_hub/health/live", headers=host)
        after = conn.getresponse()  # a body left on the wire would be read here as the status line
        assert after.status == 200 and after.read() == document
    finally:
        conn.close()


def test_a_probe_without_a_document_yet_goes_to_mitmproxy():
    """A worker not yet welcomed by worker 0 has no document: its port answers nothing itself."""
    head = b"GET /_hub/health HTTP/1.1\r\nHost: a"
    assert probe_answer(lambda: None, head) is None
    answer = probe_answer(lambda: (503, {"ok": False}), head)
    assert answer is not None and answer[0].startswith(b"HTTP/1.1 503 ") and answer[1] is True


@pytest.mark.parametrize(
    "sent",
    [
        b"GET /_hub/health HTTP/1.0\r\n",  # not HTTP/1.1
        b"GET /_hub/health HTTP/1.1\r\nHost: a\r\nHost: b\r\n",  # two Hosts
        b"GET /_hub/health HTTP/1.1\r\n",  # no Host
        b"GET /_hub/health HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET /_hub/health HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        b"GET /_hub/health HTTP/1.1\r\nHost: a\r\n X-Folded: yes\r\n",
        b"GET /_hub/healthz HTTP/1.1\r\nHost: a\r\n",
        b"GET /_hub/health/%2e%2e/metrics HTTP/1.1\r\nHost: a\r\n",
        b"GET /_hub/health/../metrics HTTP/1.1\r\nHost: a\r\n",
        b"GET http://a/_hub/health HTTP/1.1\r\nHost: a\r\n",
    ],
)
def test_what_is_not_a_plain_probe_goes_to_mitmproxy_as_before(site, sent):
    """Only a simple HTTP/1.1 probe of a health endpoint is answered at the port; for anything
    else mitmproxy answers or refuses as it always did."""
    proxy, _, _ = site
    assert proxy.admission is not None
    before = proxy.admission.answered
    # mitmproxy answers (a 400, the document) or closes the connection, without a wait
    answer = _raw(proxy.port, sent if b"\r\n\r\n" in sent else sent + b"\r\n")
    assert proxy.admission.answered == before
    assert answer == b"" or answer.startswith(b"HTTP/1.")


def test_metrics_need_the_token_an_admin_or_a_direct_local_connection(site):
    proxy, _, config = site
    with client(proxy, host=f"127.0.0.1:{proxy.port}") as c:
        r = c.get("/_hub/metrics")  # direct, from loopback
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert 'hub_environments{state="checkpointed"} 1' in r.text
        r = c.get("/_hub/metrics", headers={"X-Forwarded-For": "203.0.113.9"})  # via Traefik
        assert r.status_code == 400
        r = c.get(
            "/_hub/metrics",
            headers={
                "X-Forwarded-For": "203.0.113.9",
                "Authorization": f"Bearer {admin_token(config)}",
            },
        )
        assert r.status_code == 200
    forwarded = {"X-Forwarded-For": "203.0.113.9"}
    _, alice = session_for(proxy, "alice")
    with client(proxy, **alice, **forwarded) as c:
        assert c.get("/_hub/metrics").status_code == 403
    _, carol = session_for(proxy, ADMIN)
    with client(proxy, **carol, **forwarded) as c:
        assert c.get("/_hub/metrics").status_code == 200


def test_dashboard_page_carries_the_session_csrf_and_a_strict_csp(site):
    proxy, _, _ = site
    session, cookie = session_for(proxy, "alice")
    with client(proxy, **cookie) as c:
        r = c.get("/_hub/dashboard")
    assert r.status_code == 200
    assert f'content="{csrf_token(proxy.context.session_key, session.sid)}"' in r.text
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert "http" not in csp.replace("'self'", "")  # no external sources
    assert "<script nonce=" in r.text and "src=" not in r.text.split("<script")[1].split(">")[0]
    with client(proxy) as c:
        r = c.get("/_hub/dashboard", headers={"Sec-Fetch-Mode": "navigate", "Accept": "text/html"})
        assert r.status_code == 302 and r.headers["location"].startswith("/_hub/login")


def test_openapi_lists_every_endpoint(site):
    proxy, _, _ = site
    _, cookie = session_for(proxy, "alice")
    with client(proxy, **cookie) as c:
        doc = c.get("/_hub/api/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    for path in (
        "/_hub/api/status",
        "/_hub/api/users/{user}",
        "/_hub/api/users/{user}/stop",
        "/_hub/api/users/{user}/checkpoint",
        "/_hub/api/users/{user}/restart",
        "/_hub/health",
        "/_hub/metrics",
    ):
        assert path in doc["paths"]


def test_a_failed_start_shows_why_and_checkpoint_health(tmp_path):
    users = {
        "eve": {"state": "failed", "template": "default", "error": "The image is not available."},
        ADMIN: {"state": "stopped", "template": "default"},
    }
    ckpt = tmp_path / "state" / "checkpoint"
    ckpt.mkdir(parents=True)
    (ckpt / "eve.json").write_text('{"failures": 3, "disabled": true, "last_error": "CRIU failed"}')
    with seeded_site(tmp_path, users) as (proxy, _, config):
        with client(proxy, host=f"127.0.0.1:{proxy.port}") as c:
            r = c.get(
                "/_hub/api/users/eve", headers={"Authorization": f"Bearer {admin_token(config)}"}
            )
    eve = r.json()
    assert eve["state"] == "failed" and eve["error"] == "The image is not available."
    assert (eve["checkpoint_failures"], eve["checkpoint_disabled"], eve["checkpoint_error"]) == (
        3,
        True,
        "CRIU failed",
    )


def test_a_username_that_is_not_its_safe_name(tmp_path):
    """Usernames with capitals, spaces or dots live under a hashed safe name; the API accepts
    either, and the state it reports right after an action is the live one."""
    from hubcontrol.names import safe_name

    user = "Alice Smith"
    name = safe_name(user)
    assert name != user
    with seeded_site(tmp_path, {user: {"state": "running", "template": "default"}}) as site:
        proxy, hub, _ = site
        session, cookie = session_for(proxy, user)
        with client(proxy, **cookie) as c:
            [entry] = c.get("/_hub/api/status").json()["users"]
            assert (entry["user"], entry["name"], entry["state"]) == (user, name, "running")
            assert c.get(f"/_hub/api/users/{name}").json()["user"] == user
            r = _post(c, f"/_hub/api/users/{name}/stop", session, proxy)
            assert r.status_code == 200 and r.json() == {
                "user": user,
                "action": "stop",
                "state": "stopped",
            }
            # at once: the live state overlays the sampled rows until they are refreshed
            assert c.get("/_hub/api/status").json()["users"][0]["state"] == "stopped"
        _, bob = session_for(proxy, "bob")
        with client(proxy, **bob) as c:
            assert c.get(f"/_hub/api/users/{name}").status_code == 403
