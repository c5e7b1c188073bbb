"""safe_name: untrusted OAuth usernames to unique [a-z0-9-] names (pure, no I/O)."""

from __future__ import annotations

import re

import pytest

from hubcontrol.errors import UsernameError
from hubcontrol.names import MAX_LENGTH, is_canonical, safe_name

SAFE = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")


@pytest.mark.parametrize("name", ["alice", "bob42", "a", "0", "a-b", "x" * 32, "jean-luc"])
def test_canonical_names_map_to_themselves(name):
    assert safe_name(name) == name


@pytest.mark.parametrize(
    "username",
    ["Alice", "a.b", "a_b", "a b", "Jörg", "李雷", "a--b", "-alice", "alice-", "x" * 33,
     "user@example.com", "a/../../etc", "ALICE", "Ålice", "ｆｕｌｌｗｉｄｔｈ", "x" * 256],
)  # fmt: skip
def test_other_names_are_hashed_into_the_safe_alphabet(username):
    name = safe_name(username)
    assert SAFE.fullmatch(name) and len(name) <= MAX_LENGTH
    assert "--" in name and name != username


@pytest.mark.parametrize(
    ("a", "b"),
    [("Alice", "alice"), ("a.b", "a_b"), ("a.b", "a-b"), ("Jörg", "jorg"), ("a--b", "a-b"),
     ("x" * 33, "x" * 34), ("ALICE", "Alice"), ("李雷", "李四")],
)  # fmt: skip
def test_distinct_usernames_never_collide(a, b):
    assert safe_name(a) != safe_name(b)


def test_hashed_names_cannot_be_forged_by_a_canonical_username():
    hashed = safe_name("Alice")
    # someone registering the hashed form literally gets a different name
    assert not is_canonical(hashed)
    assert safe_name(hashed) != hashed


def test_the_mapping_is_stable():
    assert safe_name("Alice") == safe_name("Alice")
    assert safe_name("Alice").startswith("alice--")


@pytest.mark.parametrize(
    "username",
    ["", "..", ".", "...", "---", "   ", "a\x00b", "a\nb", "tab\there", "x" * 257, "\u202e"],
)
def test_unmappable_usernames_are_rejected(username):
    with pytest.raises(UsernameError) as info:
        safe_name(username)
    assert info.value.user_message and info.value.log_message
