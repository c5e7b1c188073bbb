from __future__ import annotations

import pytest

from hubproxy.auth import cookies as c

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
        # other spellings of the hub's names never reach an environment either
        (["REDIACC_HUB_SESSION=x; a=1"], "a=1"),
        (["__Host-rediacc_hub_session=x; a=1"], "a=1"),
    ],
)
def test_strip_hub_cookies(headers, expected):
    assert c.strip_hub_cookies(headers) == expected


def test_cookie_values_keeps_duplicates():
    assert c.cookie_values(["s=1; t=2", "s=3"], "s") == ["1", "3"]


@pytest.mark.parametrize(
    ("value", "names"),
    [
        ("a=1; Path=/", ("a",)),
        ("  a  =1", ("a",)),
        ("\ta\t=1", ("a",)),
        # no "=": the name is empty and the pair is the value (RFC 6265bis 5.6 step 3)
        ("rediacc_hub_session", ("", "rediacc_hub_session")),
        ("rediacc_hub_session; Domain=example.com", ("", "rediacc_hub_session")),
        # a leading "=": empty name; the browser sends the value alone, "rediacc_hub_session=X"
        ("=rediacc_hub_session=X; Path=/_hub", ("", "rediacc_hub_session")),
        (" = rediacc_hub_session = X", ("", "rediacc_hub_session")),
        ("=x", ("", "x")),
        ("=", ("", "")),
        ("", ("", "")),
    ],
)
def test_set_cookie_names_as_a_browser_parses_them(value, names):
    assert c.set_cookie_names(value) == names


@pytest.mark.parametrize(
    "value",
    [
        "rediacc_hub_session=evil; Domain=example.com",
        "rediacc_hub_oauth_n=n; Path=/_hub/oauth/callback",
        " rediacc_hub_session =evil",
        "\trediacc_hub_session=evil",
        "REDIACC_HUB_SESSION=evil",
        "Rediacc_Hub_Session=evil",
        "=rediacc_hub_session=evil; Domain=example.com; Path=/_hub",
        "= rediacc_hub_session=evil",
        "rediacc_hub_session",
        "__Host-rediacc_hub_session=evil; Secure; Path=/",
        "__Secure-rediacc_hub_session=evil; Secure",
        "a=1\x00; rediacc_hub_session=evil",  # a control character: ignored by browsers, dropped
        "a=b\x7f",
    ],
)
def test_environment_set_cookies_for_the_hub_are_dropped(value):
    assert c.without_hub_set_cookies([value, "theirs=1"]) == ["theirs=1"]


@pytest.mark.parametrize(
    "value",
    ["theirs=1", "=x=1", "session=rediacc_hub_session", "a=rediacc_hub_session=1", "x=\t1"],
)
def test_environment_set_cookies_of_its_own_are_kept(value):
    assert c.without_hub_set_cookies([value]) == [value]


def test_clearing_set_cookies_covers_every_path_and_domain_a_cookie_could_match():
    values = c.clearing_set_cookies(
        "rediacc_hub_session", "/_hub/dashboard?x=1", "term.example.com", "example.com", secure=True
    )
    seen = set()
    for value in values:
        attrs = dict(
            (part.split("=", 1) + [""])[:2] for part in value.split("; ")[1:] if "=" in part
        )
        assert value.startswith("rediacc_hub_session=;") and attrs["Max-Age"] == "0"
        assert "Secure" in value
        seen.add((attrs["Path"], attrs.get("Domain")))
    paths = {"/", "/_hub", "/_hub/", "/_hub/dashboard"}
    domains = {None, "example.com", "term.example.com"}
    assert seen == {(p, d) for p in paths for d in domains}
    # on hosts where browsers refuse Domain= only host cookies exist
    local = c.clearing_set_cookies("n", "/a", "term.localhost", "localhost", secure=False)
    assert local == [
        c.set_cookie("n", "", max_age=0, secure=False, path="/"),
        c.set_cookie("n", "", max_age=0, secure=False, path="/a"),
    ]
    # a deep path costs a bounded number of headers
    assert len(
        c.clearing_set_cookies("n", "/a" * 500, "example.com", "example.com", secure=False)
    ) <= 2 * (2 * c.MAX_CLEARED_DEPTH + 2)
