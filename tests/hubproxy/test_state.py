from __future__ import annotations

import pytest

from hubproxy.auth import oauthstate as s
from hubproxy.auth.cookies import derive_key

KEY = derive_key("k" * 64, "state")
NOW = 1_800_000_000


def make(nonce="n1", return_to="/x", template="python", now=NOW, key=KEY):
    return s.make_state(key, nonce=nonce, return_to=return_to, template=template, now=now)


def test_round_trip():
    st = s.read_state(make(), KEY, {s.state_cookie_name("n1"): ["n1"]}, NOW + 10)
    assert (st.nonce, st.return_to, st.template) == ("n1", "/x", "python")


def test_no_template_round_trips_as_none():
    st = s.read_state(make(template=None), KEY, {s.state_cookie_name("n1"): ["n1"]}, NOW)
    assert st.template is None


@pytest.mark.parametrize(
    ("token", "cookies", "now", "reason"),
    [
        (None, {}, NOW, "no state"),
        ("", {}, NOW, "no state"),
        ("junk", {s.state_cookie_name("n1"): ["n1"]}, NOW, "invalid"),
        (make(), {s.state_cookie_name("n1"): ["n1"]}, NOW + s.STATE_TTL, "invalid"),
        (
            make(key=derive_key("z" * 64, "state")),
            {s.state_cookie_name("n1"): ["n1"]},
            NOW,
            "invalid",
        ),
        (make(), {}, NOW, "did not start"),
        (make(), {s.state_cookie_name("n1"): ["n2"]}, NOW, "did not start"),
        (make(), {s.state_cookie_name("n2"): ["n1"]}, NOW, "did not start"),
    ],
)
def test_refused(token, cookies, now, reason):
    with pytest.raises(s.StateError, match=reason):
        s.read_state(token, KEY, cookies, now)


def test_pkce_verifier_is_valid_and_secret_bound():
    v = s.pkce_verifier(KEY, "n1")
    assert 43 <= len(v) <= 128 and set(v) <= set(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
    )
    assert v != s.pkce_verifier(KEY, "n2")
    assert v != s.pkce_verifier(derive_key("z" * 64, "state"), "n1")
