"""The username is the provider's exact value: ``hubproxy.auth.identity`` (pure functions)."""

from __future__ import annotations

import pytest

from hubcontrol.errors import UsernameError
from hubcontrol.names import safe_name
from hubproxy.auth import identity
from tests.support.proxyfakes import make_config

# Names that str.strip() would turn into "alice", and names with line separators inside.
PADDED = [
    "alice\u00a0",  # NO-BREAK SPACE
    "\u3000alice",  # IDEOGRAPHIC SPACE
    "alice\u2028",  # LINE SEPARATOR
    "alice\u2029",  # PARAGRAPH SEPARATOR
    " alice",
    "alice ",
    "alice\t",
    "\u2003alice",  # EM SPACE
    "alice\u202f",  # NARROW NO-BREAK SPACE
    "alice\u205f",
    "\u1680alice",
    "alice\x85",  # NEXT LINE (a control character too)
    "   ",
]


@pytest.mark.parametrize("name", PADDED)
def test_padded_names_are_refused_and_never_become_alice(name):
    with pytest.raises(UsernameError) as e:
        identity.check_username(name)
    assert "alice" not in e.value.user_message
    # the log names the code points, so an operator can see what the provider sent
    if name.strip():
        assert "U+" in e.value.log_message


@pytest.mark.parametrize("name", ["al\u2028ice", "al\u2029ice"])
def test_line_separators_inside_a_name_are_refused(name):
    with pytest.raises(UsernameError, match="line break"):
        identity.check_username(name)


@pytest.mark.parametrize(
    "name",
    [
        "alice",
        "Alice",  # another case: another user
        "\u0430lice",  # Cyrillic a
        "jose\u0301",  # decomposed (NFD) é: another user than the composed one
        "jos\u00e9",
        "John Smith",  # inner spaces are kept
        "al\u00a0ice",
        "octocat@example.com",
        "42",
    ],
)
def test_other_names_are_kept_exactly_with_a_distinct_safe_name(name):
    identity.check_username(name)
    shown = identity.shown(name)
    assert shown == safe_name(name)
    assert name == "alice" or shown != "alice"


def test_look_alikes_are_shown_apart_with_the_provider_name_beside():
    names = ["alice", "\u0430lice", "Alice", "jose\u0301", "jos\u00e9"]
    shown = [identity.shown(n) for n in names]
    assert len(set(shown)) == len(names)
    assert all(set(s) <= set("abcdefghijklmnopqrstuvwxyz0123456789-") for s in shown)
    assert identity.shown_with_provider_name("alice") == "alice"
    cyrillic = "\u0430lice"
    assert identity.shown_with_provider_name(cyrillic) == (
        safe_name(cyrillic) + " (\u201c" + cyrillic + "\u201d at the login provider)"
    )


@pytest.mark.parametrize(
    ("user", "admin"),
    [
        ("alice", True),
        *((name, False) for name in PADDED),
        ("Alice", False),
        ("\u0430lice", False),
        (safe_name("alice\u00a0"), False),
        (None, False),
    ],
)
def test_admin_is_compared_exactly(tmp_path, user, admin):
    config = make_config(tmp_path, admin_users=frozenset({"alice"}))
    assert identity.is_admin(config, user) is admin
