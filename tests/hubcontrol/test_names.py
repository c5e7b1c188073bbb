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


# --- names an attacker picks to land on a hub-owned path (issue 18) -----------------------------

from hubcontrol.names import (  # noqa: E402 - grouped with the tests that use them
    RESERVED_PREFIXES,
    RESERVED_SUFFIXES,
    derived_names,
    is_safe_name,
    owned_by_hub,
)

VICTIMS = ["alice", "a", "x" * 32, "jean-luc", "0", "docker", "alice-docker-x"]
# every way we know to spell "alice" or a path derived from hers
ATTACKS = [
    *(v + s for v in VICTIMS for s in RESERVED_SUFFIXES),
    *(v + s + s for v in VICTIMS for s in RESERVED_SUFFIXES),
    "Alice", "ALICE", "alice\u00a0", "\u3000alice", "alice\u2028", " alice",
    "\u0430lice", "ａｌｉｃｅ", "alice.", "alice--0123456789ab", "alice-docker--0123456789ab",
    ".alice", "alice-docker/", "-docker", "docker-", "alice-Docker", "alice-dockeR",
]  # fmt: skip


@pytest.mark.parametrize("suffix", RESERVED_SUFFIXES)
@pytest.mark.parametrize("victim", VICTIMS)
def test_a_name_ending_in_a_hub_suffix_is_not_its_own_safe_name(victim, suffix):
    attacker = safe_name(victim + suffix)
    assert attacker != victim + suffix
    assert attacker not in derived_names(safe_name(victim))
    assert not owned_by_hub(attacker)


def test_no_safe_name_reaches_another_users_or_a_hub_owned_path():
    """Every pair: workspace <ws>/<a> is never <ws>/<b>, nor anything the hub derives from <b>
    (data-root dirs and any suffix added later), nor a hub-owned entry."""
    usernames = sorted(set(VICTIMS + ATTACKS))
    safe = {u: safe_name(u) for u in usernames}
    assert len(set(safe.values())) == len(usernames), "two usernames share a safe name"
    for a in usernames:
        assert is_safe_name(safe[a]), (a, safe[a])
        assert not owned_by_hub(safe[a]), (a, safe[a])
        assert not safe[a].startswith(RESERVED_PREFIXES)
        for b in usernames:
            assert safe[a] not in derived_names(safe[b]), (a, b)


@pytest.mark.parametrize(
    "name", ["alice\u00a0", "\u3000alice", "alice\u2028", "\u0430lice", " alice"]
)
def test_padding_and_look_alikes_never_become_the_name_they_resemble(name):
    assert safe_name(name) != "alice" and "--" in safe_name(name)


@pytest.mark.parametrize(
    ("entry", "hub"),
    [("alice-docker", True), (".seeds", True), (".networkid", True), ("alice", False),
     ("alice--0123456789ab", False), ("alice--0123456789ab-docker", True),
     ("alice-docker-docker", False)],  # the last: left by an older hub, not a current name's
)  # fmt: skip
def test_owned_by_hub(entry, hub):
    assert owned_by_hub(entry) is hub


@pytest.mark.parametrize(
    ("name", "safe"),
    [("alice", True), ("alice-docker", False), ("alice--0123456789ab", True),
     ("alice--0123456789AB", False), ("a--b--0123456789ab", False), ("x" * 19 + "--0123456789ab", False),
     ("-alice", False), ("", False)],
)  # fmt: skip
def test_is_safe_name(name, safe):
    assert is_safe_name(name) is safe


def test_policy_unit_names_are_distinct_for_names_holding_the_prefix():
    from hubcontrol import policysockets
    from hubcontrol.supervisor.systemd import service_name

    args = policysockets.ProxyArgs(listen="/l", upstream="/u", workspace="/w")

    def unit(user):
        argv = policysockets.systemd_run_argv(args, service_name(user, 32768))
        return next(a for a in argv if a.startswith("--unit="))

    assert unit("a-dockerd-b") != unit("a-policy-b")
