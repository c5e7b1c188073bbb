from __future__ import annotations

import pytest

from hubproxy import cookies as c

KEY = c.derive_key("x" * 64, "session")
NOW = 1_800_000_000


def token(user="alice", sid="s1", exp=NOW + 60, key=KEY):
    return c.make_session_token(c.SessionCookie(user, sid, exp), key)


def test_round_trip():
    assert c.read_session_token(token(), KEY, NOW) == c.SessionCookie("alice", "s1", NOW + 60)


def _flip(t: str, i: int) -> str:
    ch = "A" if t[i] != "A" else "B"
    return t[:i] + ch + t[i + 1 :]


@pytest.mark.parametrize(
    "value",
    [
        "",
        "garbage",
        "a.b.c",
        token(exp=NOW - 1),  # expired
        token(exp=NOW),  # expires exactly now
        token(key=c.derive_key("y" * 64, "session")),  # other secret
        token(key=c.derive_key("x" * 64, "state")),  # other purpose
        _flip(token(), 3),  # payload tampered
        _flip(token(), -2),  # signature tampered
        token().split(".")[0] + ".",  # signature missing
        "x" * 5000,
        c.sign({"u": "alice", "s": "s1"}, KEY),  # no expiry
        c.sign({"u": "alice", "s": "s1", "exp": True}, KEY),
        c.sign({"u": "", "s": "s1", "exp": NOW + 60}, KEY),
        c.sign({"u": ["alice"], "s": "s1", "exp": NOW + 60}, KEY),
        c.sign({"u": "alice", "exp": NOW + 60}, KEY),
    ],
)
def test_refused(value):
    assert c.read_session_token(value, KEY, NOW) is None


def test_user_cannot_be_swapped_by_reusing_signature():
    alice, bob = token("alice"), token("bob")
    forged = bob.split(".")[0] + "." + alice.split(".")[1]
    assert c.read_session_token(forged, KEY, NOW) is None


@pytest.mark.parametrize(
    ("base", "domain"),
    [
        ("example.com", "example.com"),
        ("Hub.Example.COM.", "hub.example.com"),
        ("example.test", "example.test"),
        ("localhost", None),
        ("dev.localhost", None),
        ("intranet", None),
        ("127.0.0.1", None),
        ("::1", None),
        ("", None),
    ],
)
def test_cookie_domain(base, domain):
    assert c.cookie_domain(base) == domain


def test_set_cookie_attributes():
    v = c.set_cookie("n", "v", max_age=60, secure=True, domain="example.com")
    assert v == "n=v; Path=/; Max-Age=60; Domain=example.com; HttpOnly; SameSite=Lax; Secure"
    assert "Secure" not in c.set_cookie("n", "v", max_age=0, secure=False)
    assert "Domain" not in c.set_cookie("n", "v", max_age=0, secure=False)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (["a=1; rediacc_hub_session=x; b=2"], "a=1; b=2"),
        (["rediacc_hub_session=x"], None),
        (["a=1", "rediacc_hub_oauth_abc=n; rediacc_hub_session=y"], "a=1"),
        (["a=1;b=2"], "a=1; b=2"),
        ([], None),
        (["REDIACC_HUB_SESSION=kept-it-is-not-ours"], "REDIACC_HUB_SESSION=kept-it-is-not-ours"),
    ],
)
def test_strip_hub_cookies(headers, expected):
    assert c.strip_hub_cookies(headers) == expected


def test_cookie_values_keeps_duplicates():
    assert c.cookie_values(["s=1; t=2", "s=3"], "s") == ["1", "3"]
