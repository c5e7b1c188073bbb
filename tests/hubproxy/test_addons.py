"""The request-path addons in mitmproxy's test context (taddons), without a network."""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from mitmproxy.test import taddons, tflow
from mitmproxy.websocket import WebSocketMessage
from wsproto.frame_protocol import Opcode

from hubproxy.addons.activity import Activity
from hubproxy.auth import cookies
from hubproxy.auth.csrf import csrf_token
from hubproxy.auth.oauthstate import state_cookie_name
from hubproxy.context import SESSION, USER
from tests.support.proxyfakes import (
    NOW,
    FakeControl,
    flow,
    make_context,
    make_route,
    pipeline,
    run_request,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
async def setup(tmp_path):
    control = FakeControl()
    context = make_context(tmp_path, control)
    addons = pipeline(context)
    with taddons.context(*addons):
        yield context, control, addons


def login_cookie(context, user="alice", **kw):
    session = context.sessions.create(user, **kw)
    token = cookies.make_session_token(
        cookies.SessionCookie(user, session.sid, session.exp), context.session_key
    )
    return session, f"{cookies.SESSION_COOKIE}={token}"


def running(control, user="alice", ip="10.208.0.2"):
    control.routes[user] = make_route(user, "running", ip, {"term": 7681, "code": 8080})


# -- host and path decisions ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "path", "status"),
    [
        ("evil.org", "/", 404),
        ("desktop.example.com", "/", 404),  # prefix not configured
        ("127.0.0.1:7112", "/", 400),
        ("[::1]", "/", 400),
        ("term.example.com.", "/", 400),
        ("term.example.com:abc", "/", 400),
        ("alice@term.example.com", "/", 400),
        ("term.example.com", "/_hub/%2e%2e/api/status", 400),
        ("term.example.com", "/_hub/api%2fstatus", 400),
        ("term.example.com", "/_hub//login", 400),
        ("term.example.com", "/_hub/nothing-here", 302),  # needs a session first
        ("example.com", "/", 302),  # the bare domain goes to the hub's index
    ],
)
async def test_host_and_path_refusals(setup, host, path, status):
    context, control, addons = setup
    f = await run_request(addons, flow(host=host, path=path))
    assert f.response is not None and f.response.status_code == status
    assert control.touches == [] and control.starts == []


async def test_absolute_form_target_must_match_host(setup):
    context, control, addons = setup
    running(control)
    _, cookie = login_cookie(context)
    f = flow(headers=[("cookie", cookie)], authority="bob-env.example.com")
    await run_request(addons, f)
    assert f.response.status_code == 400
    f = flow(headers=[("cookie", cookie)], authority="term.example.com:443")
    await run_request(addons, f)
    assert f.response is None  # routed


# -- sessions ------------------------------------------------------------------------------


async def test_no_session_navigation_redirects_to_login(setup):
    _, control, addons = setup
    f = await run_request(addons, flow(path="/some/where?x=1"))
    assert f.response.status_code == 302
    assert f.response.headers["location"] == "/_hub/login?next=%2Fsome%2Fwhere%3Fx%3D1"
    assert control.starts == []


async def test_no_session_api_or_websocket_is_401(setup):
    _, _, addons = setup
    f = await run_request(addons, flow(navigate=False, headers=[("upgrade", "websocket")]))
    assert f.response.status_code == 401
    f = await run_request(addons, flow(path="/_hub/api/status", navigate=False))
    assert f.response.status_code == 401
    assert f.response.headers["content-type"] == "application/json"


def _forgeries(context):
    good = cookies.make_session_token(
        cookies.SessionCookie("alice", "nosuchsid", NOW + 60), context.session_key
    )
    other_key = cookies.make_session_token(
        cookies.SessionCookie("alice", "x", NOW + 60), cookies.derive_key("t" * 64, "session")
    )
    return [good, other_key, "garbage", good[:-3] + "AAA"]


async def test_forged_and_unknown_sessions_are_refused(setup):
    context, control, addons = setup
    running(control)
    for value in _forgeries(context):
        f = await run_request(
            addons, flow(headers=[("cookie", f"{cookies.SESSION_COOKIE}={value}")])
        )
        assert f.response.status_code == 302, value
    assert control.touches == []


async def test_cookie_of_one_user_with_session_of_another_is_refused(setup):
    context, control, addons = setup
    running(control, "bob", "10.208.1.2")
    bob_session, _ = login_cookie(context, "bob")
    forged = cookies.make_session_token(
        cookies.SessionCookie("alice", bob_session.sid, NOW + 60), context.session_key
    )
    f = await run_request(addons, flow(headers=[("cookie", f"{cookies.SESSION_COOKIE}={forged}")]))
    assert f.response.status_code == 302


async def test_expired_and_revoked_sessions_are_refused(setup):
    context, control, addons = setup
    running(control)
    session, cookie = login_cookie(context, ttl=10)
    context.clock = lambda: NOW + 11
    context.sessions.clock = context.clock
    f = await run_request(addons, flow(headers=[("cookie", cookie)]))
    assert f.response.status_code == 302
    context.clock = lambda: NOW
    context.sessions.clock = context.clock
    session, cookie = login_cookie(context)
    context.sessions.revoke(session.sid)
    f = await run_request(addons, flow(headers=[("cookie", cookie)]))
    assert f.response.status_code == 302


async def test_second_valid_cookie_is_used_when_first_is_stale(setup):
    context, control, addons = setup
    running(control)
    _, cookie = login_cookie(context)
    stale = f"{cookies.SESSION_COOKIE}=stale.value"
    f = await run_request(addons, flow(headers=[("cookie", f"{stale}; {cookie}")]))
    assert f.response is None and f.metadata[USER] == "alice"


# -- routing -------------------------------------------------------------------------------


async def test_routes_to_own_environment_and_strips_hub_cookies(setup):
    context, control, addons = setup
    running(control, "alice", "10.208.0.2")
    running(control, "bob", "10.208.1.2")
    _, cookie = login_cookie(context, "alice")
    f = flow(
        host="code.example.com",
        headers=[
            ("cookie", f"a=1; {cookie}; {state_cookie_name('n')}=n; b=2"),
            ("x-forwarded-for", "198.51.100.7"),
            ("x-forwarded-proto", "https"),
        ],
    )
    await run_request(addons, f)
    assert f.response is None
    assert (f.request.data.host, f.request.data.port) == ("10.208.0.2", 8080)
    assert f.request.host_header == "code.example.com"
    assert f.request.headers["cookie"] == "a=1; b=2"
    assert f.request.headers["x-forwarded-for"].startswith("198.51.100.7, ")
    assert f.request.headers["x-forwarded-proto"] == "https"
    assert f.request.headers["x-forwarded-host"] == "code.example.com"
    assert f.request.stream is True
    assert control.touches == [("alice", "http")]


async def test_cookie_header_removed_when_only_hub_cookies(setup):
    context, control, addons = setup
    running(control)
    _, cookie = login_cookie(context)
    f = await run_request(addons, flow(headers=[("cookie", cookie)]))
    assert "cookie" not in f.request.headers


@pytest.mark.parametrize(
    "planted",
    [
        f"{cookies.SESSION_COOKIE}=evil; Domain=example.com",
        f"={cookies.SESSION_COOKIE}=evil; Domain=example.com; Path=/_hub",  # nameless
        f" = {cookies.SESSION_COOKIE}=evil",
        f"{cookies.SESSION_COOKIE}",
        f"  {cookies.SESSION_COOKIE}\t=evil",
        "REDIACC_HUB_SESSION=evil",
        f"__Host-{cookies.SESSION_COOKIE}=evil; Secure; Path=/",
    ],
)
async def test_environment_cannot_set_hub_cookies(setup, planted):
    context, control, addons = setup
    running(control)
    _, cookie = login_cookie(context)
    f = await run_request(addons, flow(headers=[("cookie", cookie)]))
    f.response = tflow.tresp()
    f.response.headers.add("set-cookie", planted)
    f.response.headers.add("set-cookie", "theirs=1")
    for addon in addons:
        if hasattr(addon, "responseheaders"):
            addon.responseheaders(f)
    assert f.response.headers.get_all("set-cookie") == ["theirs=1"]
    assert f.response.stream is True


async def test_not_running_shows_progress_and_starts_once(setup):
    context, control, addons = setup
    session, cookie = login_cookie(context, template="python")
    flows = [await run_request(addons, flow(headers=[("cookie", cookie)])) for _ in range(5)]
    assert control.starts == [("alice", "python")]
    assert all(f.response.status_code == 503 for f in flows)
    page = flows[0].response
    assert page.headers["content-type"].startswith("text/html")
    assert b"/_hub/api/progress" in page.content and b"<script nonce=" in page.content
    api = await run_request(addons, flow(headers=[("cookie", cookie)], navigate=False))
    assert api.response.status_code == 503
    assert api.response.headers["content-type"] == "application/json"


async def test_progress_api_reports_ready_once_running(setup):
    context, control, addons = setup
    _, cookie = login_cookie(context)
    f = await run_request(addons, flow(path="/_hub/api/progress", headers=[("cookie", cookie)]))
    assert f.response.status_code == 200 and b'"ready":false' in f.response.content
    running(control)
    f = await run_request(addons, flow(path="/_hub/api/progress", headers=[("cookie", cookie)]))
    assert b'"ready":true' in f.response.content


def _progress(path_query: str, cookie: str):
    return flow(path=f"/_hub/api/progress{path_query}", headers=[("cookie", cookie)])


async def _progress_now(addons, cookie: str) -> dict:
    """The progress answer without a wait (what the page asks first)."""
    return json.loads((await run_request(addons, _progress("", cookie))).response.content)


@pytest.fixture
def quick_polls(monkeypatch):
    """Held polls look at the progress every 10 ms (the tests' waits stay short)."""
    from hubproxy.addons import hubapi

    monkeypatch.setattr(hubapi, "LONG_POLL_STEP", 0.01)
    return hubapi


async def test_progress_long_poll_answers_when_the_start_moves_on(setup, quick_polls):
    """``?wait=&since=``: held while nothing changed, answered within a step of the change."""
    context, control, addons = setup
    _, cookie = login_cookie(context)
    first = await _progress_now(addons, cookie)
    assert first["ready"] is False and first["version"]
    held = asyncio.ensure_future(
        run_request(addons, _progress(f"?wait=20&since={first['version']}", cookie))
    )
    await asyncio.sleep(0.1)
    assert not held.done()  # nothing moved: the hub holds the answer
    running(control)
    answer = json.loads((await asyncio.wait_for(held, 2)).response.content)
    assert answer["ready"] is True and answer["version"] != first["version"]
    # an old version (the page missed a step) or no wait: answered at once
    late = await run_request(addons, _progress(f"?wait=20&since={first['version']}", cookie))
    assert json.loads(late.response.content)["ready"] is True


async def test_progress_long_poll_ends_after_wait_and_is_bounded_per_user(setup, quick_polls):
    hubapi = quick_polls
    context, _control, addons = setup
    _, cookie = login_cookie(context)
    version = (await _progress_now(addons, cookie))["version"]
    t0 = time.monotonic()
    same = await run_request(addons, _progress(f"?wait=0.2&since={version}", cookie))
    assert 0.2 <= time.monotonic() - t0 < 1.5
    assert json.loads(same.response.content)["version"] == version  # unchanged, after the wait
    # a user's tabs hold at most LONG_POLL_PER_USER; one more is answered at once
    held = [
        asyncio.ensure_future(run_request(addons, _progress(f"?wait=5&since={version}", cookie)))
        for _ in range(hubapi.LONG_POLL_PER_USER)
    ]
    await asyncio.sleep(0.05)
    t0 = time.monotonic()
    extra = await run_request(addons, _progress(f"?wait=5&since={version}", cookie))
    assert time.monotonic() - t0 < 0.5 and extra.response.status_code == 200
    assert not any(h.done() for h in held)
    for h in held:
        h.cancel()
    await asyncio.gather(*held, return_exceptions=True)


async def test_held_polls_of_many_users_share_one_watcher(setup, quick_polls, monkeypatch):
    """Every held poll is answered by one watcher that reads each waiting user's route once a
    step, however many tabs wait: a change answers that user's polls only."""
    context, control, addons = setup
    reads: list[str] = []
    route = control.route
    monkeypatch.setattr(control, "route", lambda user: reads.append(user) or route(user))
    cookies_of = {u: login_cookie(context, u)[1] for u in ("alice", "bob")}
    version = (await _progress_now(addons, cookies_of["alice"]))["version"]
    held = {
        u: [
            asyncio.ensure_future(
                run_request(addons, _progress(f"?wait=5&since={version}", cookies_of[u]))
            )
            for _ in range(3)
        ]
        for u in ("alice", "bob")
    }
    await asyncio.sleep(0.2)
    assert not any(h.done() for polls in held.values() for h in polls)
    watched = reads.count("alice") - 4  # the first answer's read, and one per poll as it is held
    assert 0 < watched <= 0.2 / quick_polls.LONG_POLL_STEP + 2  # one read a step, not one a tab
    running(control, "alice")
    answers = await asyncio.wait_for(asyncio.gather(*held["alice"]), 2)
    assert all(json.loads(a.response.content)["ready"] for a in answers)
    assert not any(h.done() for h in held["bob"])  # bob's start has not moved
    running(control, "bob", ip="10.208.0.3")
    await asyncio.wait_for(asyncio.gather(*held["bob"]), 2)
    await asyncio.sleep(3 * quick_polls.LONG_POLL_STEP)
    api = next(a for a in addons if isinstance(a, quick_polls.HubApi))
    assert not api._waiting and (api._watcher is None or api._watcher.done())


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("?wait=soon", "wait='soon' is not a number of seconds; use e.g. wait=20"),
        ("?wait=-1", "wait='-1' is out of range; use 0 to 25 seconds"),
        ("?wait=nan", "wait='nan' is out of range"),
    ],
)
async def test_progress_long_poll_names_a_bad_wait(setup, query, error):
    context, _control, addons = setup
    _, cookie = login_cookie(context)
    f = await run_request(addons, _progress(query, cookie))
    assert f.response.status_code == 400
    assert error in json.loads(f.response.content)["error"]


async def test_a_failing_long_poll_fails_closed(setup, quick_polls):
    """The long poll's wait runs after the hook returned: an error there is still a 500 page,
    never an unanswered or forwarded request."""
    context, control, addons = setup
    _, cookie = login_cookie(context)
    version = (await _progress_now(addons, cookie))["version"]
    held = asyncio.ensure_future(run_request(addons, _progress(f"?wait=5&since={version}", cookie)))
    await asyncio.sleep(0.05)
    control.fail_route = True
    f = await asyncio.wait_for(held, 2)
    assert f.response.status_code == 500 and b"did not forward your request" in f.response.content


async def test_health_is_public(setup):
    _, _, addons = setup
    f = await run_request(addons, flow(path="/_hub/health", navigate=False))
    assert f.response.status_code == 200 and b'"ok":true' in f.response.content


async def test_hook_error_fails_closed(setup):
    context, control, addons = setup
    running(control)
    control.fail_route = True
    _, cookie = login_cookie(context)
    f = await run_request(addons, flow(headers=[("cookie", cookie)]))
    assert f.response.status_code == 500
    assert f.request.data.host == "0.0.0.0"  # never sent anywhere


async def test_not_ready_context_answers_503(tmp_path):
    from hubproxy.context import HubContext

    addons = pipeline(HubContext())
    with taddons.context(*addons):
        f = await run_request(addons, flow())
    assert f.response.status_code == 503


# -- WebSockets ------------------------------------------------------------------------------


async def test_websocket_frames_touch_both_ways_and_are_not_kept(setup):
    context, control, addons = setup
    running(control)
    session, _ = login_cookie(context)
    f = tflow.twebsocketflow()
    f.metadata.update({USER: "alice", SESSION: session, "hub.routed": True})
    activity = next(a for a in addons if isinstance(a, Activity))
    activity.websocket_start(f)
    assert f in context.websockets[session.sid]
    for from_client in (True, False):
        f.websocket.messages.append(WebSocketMessage(Opcode.TEXT, from_client, b"x"))
        activity.websocket_message(f)
        assert f.websocket.messages == []
    assert control.touches == [("alice", "ws-in"), ("alice", "ws-out")]
    activity.websocket_end(f)
    assert session.sid not in context.websockets


# -- login -----------------------------------------------------------------------------------


async def test_login_redirects_to_provider_with_pkce_and_state(setup):
    context, _, addons = setup
    f = await run_request(
        addons,
        flow(
            host="term.example.com",
            path="/_hub/login?template=python&next=%2Fwork",
            headers=[("x-forwarded-proto", "https")],
        ),
    )
    assert f.response.status_code == 302
    url = urlsplit(f.response.headers["location"])
    q = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert f"{url.scheme}://{url.netloc}{url.path}" == "http://idp.test/auth"
    assert q["code_challenge_method"] == "S256" and len(q["code_challenge"]) == 43
    assert q["redirect_uri"] == "https://term.example.com/_hub/oauth/callback"
    assert q["scope"] == "openid" and q["client_id"] == "hub" and q["response_type"] == "code"
    set_cookie = f.response.headers["set-cookie"]
    assert set_cookie.startswith("rediacc_hub_oauth_")
    assert "Path=/_hub/oauth/callback" in set_cookie and "SameSite=Lax" in set_cookie
    assert "Secure" in set_cookie and "Domain=example.com" in set_cookie
    from hubproxy.auth.cookies import unsign

    state = unsign(q["state"], context.state_key, NOW)
    assert state["r"] == "https://term.example.com/work" and state["t"] == "python"


@pytest.mark.parametrize(
    "next_url", ["https://evil.org/", "//evil.org", "/\\evil.org", "https://example.com.evil.org/"]
)
async def test_login_never_returns_to_a_foreign_site(setup, next_url):
    context, _, addons = setup
    from urllib.parse import quote

    f = await run_request(addons, flow(path="/_hub/login?next=" + quote(next_url, safe="")))
    q = parse_qs(urlsplit(f.response.headers["location"]).query)
    from hubproxy.auth.cookies import unsign

    assert unsign(q["state"][0], context.state_key, NOW)["r"] == "http://term.example.com/"


async def test_login_with_unknown_template_is_400(setup):
    _, _, addons = setup
    f = await run_request(addons, flow(path="/_hub/login?template=nope"))
    assert f.response.status_code == 400 and b"python" in f.response.content


async def test_callback_with_denied_consent_is_a_page_not_a_loop(setup):
    _, _, addons = setup
    f = await run_request(
        addons, flow(path="/_hub/oauth/callback?error=access_denied&error_description=no")
    )
    assert f.response.status_code == 403 and b"declined" in f.response.content


async def test_callback_with_bad_state_is_400(setup):
    _, _, addons = setup
    f = await run_request(addons, flow(path="/_hub/oauth/callback?code=x&state=forged"))
    assert f.response.status_code == 400


def logout_post(cookie, token=None, *, host="term.example.com", headers=(), field="csrf"):
    """A logout POST as the hub's own form sends it (same origin, the token in the body)."""
    body = b"" if token is None else f"{field}={token}".encode()
    return flow(
        host=host,
        path="/_hub/logout",
        method="POST",
        headers=[
            ("cookie", cookie),
            ("content-type", "application/x-www-form-urlencoded"),
            ("content-length", str(len(body))),
            *headers,
        ],
        body=body,
    )


async def test_logout_revokes_the_session(setup):
    context, control, addons = setup
    running(control)
    other_prefix, other_cookie = login_cookie(context)  # per-host cookie of another prefix
    bob, _ = login_cookie(context, "bob")
    session, cookie = login_cookie(context)
    token = csrf_token(context.session_key, session.sid)
    f = await run_request(
        addons,
        logout_post(
            cookie,
            token,
            headers=[("origin", "http://term.example.com"), ("sec-fetch-site", "same-origin")],
        ),
    )
    assert f.response.status_code == 200 and b"Logged out" in f.response.content
    assert any("Max-Age=0" in c for c in f.response.headers.get_all("set-cookie"))
    assert context.sessions.get(session.sid, "alice") is None
    assert context.sessions.get(other_prefix.sid, "alice") is None
    assert context.sessions.get(bob.sid, "bob") == bob
    for c in (cookie, other_cookie):
        f = await run_request(addons, flow(headers=[("cookie", c)]))
        assert f.response.status_code == 302


async def test_logout_get_only_asks_to_confirm_with_a_form_carrying_the_token(setup):
    context, control, addons = setup
    session, cookie = login_cookie(context)
    f = await run_request(addons, flow(path="/_hub/logout", headers=[("cookie", cookie)]))
    page = f.response.content.decode()
    assert f.response.status_code == 200 and "Log out?" in page
    token = csrf_token(context.session_key, session.sid)
    assert '<form method="post" action="/_hub/logout">' in page
    assert f'<input type="hidden" name="csrf" value="{token}">' in page
    assert "form-action 'self'" in f.response.headers["content-security-policy"]
    assert not f.response.headers.get_all("set-cookie")
    assert context.sessions.get(session.sid, "alice") == session
    # without a session the page says so
    f = await run_request(addons, flow(path="/_hub/logout"))
    assert f.response.status_code == 200 and b"not logged in" in f.response.content


@pytest.mark.parametrize(
    ("token", "headers", "why"),
    [
        (None, [], b"missing CSRF token"),
        ("wrong", [], b"wrong CSRF token"),
        ("other-session", [], b"wrong CSRF token"),
        ("good", [("sec-fetch-site", "cross-site")], b"cross-site request"),
        ("good", [("sec-fetch-site", "same-site")], b"cross-site request"),
        ("good", [("origin", "https://evil.org")], b"cross-origin request"),
        ("good", [("origin", "http://code.example.com")], b"cross-origin request"),
        ("good", [("origin", "null")], b"cross-origin request"),
    ],
)
async def test_logout_post_without_the_token_or_from_elsewhere_is_refused(
    setup, token, headers, why
):
    context, control, addons = setup
    session, cookie = login_cookie(context)
    other, _ = login_cookie(context, "bob")
    value = {
        "good": csrf_token(context.session_key, session.sid),
        "other-session": csrf_token(context.session_key, other.sid),
    }.get(token, token)
    f = await run_request(addons, logout_post(cookie, value, headers=headers))
    assert f.response.status_code == 403 and why in f.response.content
    assert b"still logged in" in f.response.content
    assert not f.response.headers.get_all("set-cookie")
    assert context.sessions.get(session.sid, "alice") == session


async def test_logout_token_in_the_header_works_and_other_methods_do_not(setup):
    context, control, addons = setup
    session, cookie = login_cookie(context)
    for method in ("PUT", "DELETE"):
        f = flow(path="/_hub/logout", method=method, headers=[("cookie", cookie)])
        await run_request(addons, f)
        assert f.response.status_code == 405
    token = csrf_token(context.session_key, session.sid)
    f = flow(
        path="/_hub/logout",
        method="POST",
        navigate=False,
        headers=[("cookie", cookie), ("x-hub-csrf", token)],
    )
    await run_request(addons, f)
    assert f.response.status_code == 200
    assert context.sessions.get(session.sid, "alice") is None


async def test_logout_form_larger_than_a_form_is_refused_before_it_is_read(setup):
    context, control, addons = setup
    session, cookie = login_cookie(context)
    f = logout_post(cookie, "x" * 5000)
    await run_request(addons, f)
    assert f.response.status_code == 413
    assert context.sessions.get(session.sid, "alice") == session


# -- two sessions in one request --------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "path", "navigate"),
    [
        ("term.example.com", "/", True),  # an environment
        ("term.example.com", "/", False),
        ("example.com", "/_hub/dashboard", True),
        ("example.com", "/_hub/api/status", False),
        ("code.example.com", "/_hub/", True),
        ("term.example.com", "/_hub/logout", True),
    ],
)
async def test_two_valid_sessions_in_one_request_are_refused(setup, host, path, navigate):
    """A cookie planted by a page (bob's session, narrower path first) beside alice's own."""
    context, control, addons = setup
    running(control, "alice", "10.208.0.2")
    running(control, "bob", "10.208.1.2")
    alice, alice_cookie = login_cookie(context, "alice")
    bob, bob_cookie = login_cookie(context, "bob")
    for order in ((bob_cookie, alice_cookie), (alice_cookie, bob_cookie)):
        f = flow(host=host, path=path, navigate=navigate, headers=[("cookie", "; ".join(order))])
        await run_request(addons, f)
        assert f.response is not None and f.response.status_code == 401
        assert f.request.data.host == "0.0.0.0"  # never routed, to anyone
        assert b"10.208" not in f.response.content and b"bob" not in f.response.content
        if navigate:
            assert b"two different hub sessions" in f.response.content
        cleared = f.response.headers.get_all("set-cookie")
        assert all("=; Path=" in c and "Max-Age=0" in c for c in cleared)
        names = {c.split("=", 1)[0] for c in cleared}
        assert names == {cookies.SESSION_COOKIE, cookies.BROWSER_COOKIE}
        assert "rediacc_hub_session=; Path=/; Max-Age=0; Domain=example.com; HttpOnly" in "\n".join(
            cleared
        )
    assert control.touches == [] and control.starts == []
    # both sessions stay (neither acted; alice's other devices keep working)
    assert context.sessions.get(alice.sid, "alice") and context.sessions.get(bob.sid, "bob")


def bound_cookie(context, user, browser_id):
    """A session as a real login makes it: bound to the browser cookie ``browser_id``."""
    session = context.sessions.create(user, browser=cookies.browser_binding(browser_id))
    token = cookies.make_session_token(
        cookies.SessionCookie(user, session.sid, session.exp), context.session_key
    )
    return session, f"{cookies.SESSION_COOKIE}={token}"


async def test_a_session_of_another_browser_is_ignored(setup):
    """bob plants his own session (bound to his browser) in alice's browser."""
    context, control, addons = setup
    running(control, "alice", "10.208.0.2")
    running(control, "bob", "10.208.1.2")
    _, alice = bound_cookie(context, "alice", "alices-browser")
    _, bob = bound_cookie(context, "bob", "bobs-browser")
    mine = f"{cookies.BROWSER_COOKIE}=alices-browser"
    # planted first (narrower path) or alone (alice logged out): never bob
    f = await run_request(addons, flow(headers=[("cookie", f"{bob}; {alice}; {mine}")]))
    assert f.response is None and f.metadata[USER] == "alice"
    assert f.request.data.host == "10.208.0.2"
    f = await run_request(addons, flow(headers=[("cookie", f"{bob}; {mine}")]))
    assert f.response.status_code == 302 and USER not in f.metadata
    f = await run_request(addons, flow(headers=[("cookie", bob)]))  # no browser cookie at all
    assert f.response.status_code == 302
    # planting bob's browser cookie too makes two browser cookies: refused, both deleted
    theirs = f"{cookies.BROWSER_COOKIE}=bobs-browser"
    f = await run_request(addons, flow(headers=[("cookie", f"{bob}; {theirs}; {alice}; {mine}")]))
    assert f.response.status_code == 401 and f.request.data.host == "0.0.0.0"
    assert control.touches == [("alice", "http")]


async def test_login_gives_the_browser_an_id_once(setup):
    context, control, addons = setup
    f = await run_request(addons, flow(path="/_hub/login"))
    given = [c for c in f.response.headers.get_all("set-cookie") if "rediacc_hub_browser=" in c]
    assert len(given) == 1 and "HttpOnly" in given[0] and "Domain=example.com" in given[0]
    browser_id = given[0].split(";")[0].split("=", 1)[1]
    f = await run_request(
        addons,
        flow(path="/_hub/login", headers=[("cookie", f"{cookies.BROWSER_COOKIE}={browser_id}")]),
    )
    assert not [c for c in f.response.headers.get_all("set-cookie") if "rediacc_hub_browser" in c]


async def test_one_session_twice_or_beside_stale_cookies_is_fine(setup):
    context, control, addons = setup
    running(control)
    session, cookie = login_cookie(context)
    revoked, revoked_cookie = login_cookie(context, "bob")
    context.sessions.revoke(revoked.sid)
    f = await run_request(addons, flow(headers=[("cookie", f"{cookie}; {cookie}")]))
    assert f.response is None and f.metadata[USER] == "alice"
    f = await run_request(addons, flow(headers=[("cookie", f"{revoked_cookie}; {cookie}")]))
    assert f.response is None and f.metadata[USER] == "alice"


async def test_token_endpoint_client_auth_falls_back_to_form_body(setup):
    """A provider that refuses HTTP Basic client authentication (the npm oidc-provider and
    oidc-provider-mock both accept either, so this one is an httpx MockTransport)."""
    import httpx

    from hubproxy.addons.hostroute import HostRoute
    from hubproxy.addons.oauthlogin import OAuthLogin
    from hubproxy.auth.oauthstate import make_state, new_nonce

    context, control, addons = setup
    seen = []

    def provider(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            body = dict(httpx.QueryParams(request.content.decode()))
            seen.append("basic" if "authorization" in request.headers else "post")
            if "authorization" in request.headers or body.get("client_secret") != "secret":
                return httpx.Response(401, json={"error": "invalid_client"})
            assert body["code_verifier"] and body["code"] == "the-code"
            return httpx.Response(200, json={"access_token": "t", "token_type": "Bearer"})
        assert request.headers["authorization"] == "Bearer t"
        return httpx.Response(200, json={"sub": "carol"})

    oauth = OAuthLogin(context, transport=httpx.MockTransport(provider))
    for _attempt in range(2):
        nonce = new_nonce()
        state = make_state(
            context.state_key,
            nonce=nonce,
            return_to="http://term.example.com/",
            template=None,
            now=NOW,
        )
        f = flow(
            path=f"/_hub/oauth/callback?code=the-code&state={state}",
            headers=[("cookie", f"{state_cookie_name(nonce)}={nonce}")],
        )
        next(a for a in addons if isinstance(a, HostRoute)).requestheaders(f)
        await oauth.requestheaders(f)
        assert f.response.status_code == 302, f.response.content[:300]
    assert seen == ["basic", "post", "post"]
    assert context.token_auth_method == "client_secret_post"


@pytest.mark.parametrize(
    ("next_path", "return_to"),
    [
        ("/_hub/dashboard", "http://term.example.com/_hub/dashboard"),
        ("/_hub/login?next=/x", "http://term.example.com/_hub/"),
        ("/_hub/logout", "http://term.example.com/_hub/"),
        ("/_hub/oauth/callback?code=1", "http://term.example.com/_hub/"),
        ("/_hub/%2e%2e/x", "http://term.example.com/_hub/"),
    ],
)
async def test_login_never_returns_into_itself(setup, next_path, return_to):
    from urllib.parse import quote

    from hubproxy.auth.cookies import unsign

    context, _, addons = setup
    f = await run_request(addons, flow(path="/_hub/login?next=" + quote(next_path, safe="")))
    q = parse_qs(urlsplit(f.response.headers["location"]).query)
    assert unsign(q["state"][0], context.state_key, NOW)["r"] == return_to


async def test_switching_template_waits_for_the_new_environment(setup):
    context, control, addons = setup
    control.routes["alice"] = make_route(
        "alice", "running", "10.208.0.2", {"term": 7681}, "default"
    )
    _, cookie = login_cookie(context, template="python")
    f = await run_request(addons, flow(headers=[("cookie", cookie)]))
    assert f.response.status_code == 503 and control.starts == [("alice", "python")]
    f = await run_request(addons, flow(path="/_hub/api/progress", headers=[("cookie", cookie)]))
    assert b'"ready":false' in f.response.content
    control.routes["alice"] = make_route("alice", "running", "10.208.0.2", {"term": 7681}, "python")
    f = await run_request(addons, flow(headers=[("cookie", cookie)]))
    assert f.response is None and f.request.data.host == "10.208.0.2"
    # a session without a template choice takes whatever runs
    _, plain = login_cookie(context)
    f = await run_request(addons, flow(headers=[("cookie", plain)]))
    assert f.response is None


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        ("https://blog.example.com", 403),
        ("https://evil.org", 403),
        ("https://code.example.com", None),
    ],
)
async def test_websocket_from_a_foreign_origin_is_refused(setup, origin, status):
    context, control, addons = setup
    running(control)
    _, cookie = login_cookie(context)
    f = flow(
        navigate=False,
        headers=[
            ("cookie", cookie),
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("origin", origin),
        ],
    )
    await run_request(addons, f)
    assert (f.response.status_code if f.response else None) == status
