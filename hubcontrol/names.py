"""Safe names: the one place an untrusted OAuth username becomes something usable on disk.

Everything the control plane creates for a user (workspace and data-root directories, container
and unit names, cgroups, the state record) is named after ``safe_name(username)``, never after the
raw username.

The mapping is injective:

* a username already in canonical form (lower-case ``[a-z0-9-]``, starting and ending with a
  letter or digit, at most 32 characters, no ``--``) maps to itself;
* anything else maps to ``<slug>--<hash>``: a readable lower-case slug of the username plus 12 hex
  digits of its SHA-256. Only hashed names contain ``--``, so a canonical name can never equal a
  hashed one, and two hashed names collide only if SHA-256 prefixes (48 bits) do.

So ``alice`` stays ``alice`` while ``Alice`` becomes ``alice--<hash>``; ``a.b`` and ``a_b`` get
different hashes.

Safe names are also path components, and the hub keeps its own entries beside the users' in the
same directories (``<workspace-dir>/<u>`` is a workspace, ``<workspace-dir>/<u>-docker`` a
data-root). No safe name may coincide with a hub-owned entry, or one user could be handed another
user's daemon, data-root and configuration as their workspace. So:

* every name the hub derives from a safe name ends with one of ``RESERVED_SUFFIXES``, and every
  other hub-owned entry beside the users' starts with ``.`` (``RESERVED_PREFIXES``);
* a canonical username that ends with a reserved suffix (``alice-docker``) is not its own safe
  name: it is hashed like any other non-canonical name (``alice-docker--<hash>``);
* a hashed name ends with 12 hex digits, and every reserved suffix has a letter that is not a hex
  digit, so a hashed name never ends with a reserved suffix either.

``owned_by_hub`` is the one test of "is this entry the hub's, not a user's", and
``is_safe_name`` the one test of "could this be a user's safe name"; ``derived_names`` lists every
entry the hub makes for one user. A name or suffix added to the hub goes into these tuples, and
``tests/hubcontrol/test_names.py`` checks every pair for a collision.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata

from hubcontrol.errors import UsernameError

MAX_LENGTH = 32
MAX_USERNAME_LENGTH = 256
HASH_DIGITS = 12

# Suffixes the hub appends to a safe name for its own entries beside the user's workspace:
# ``<workspace-dir>/<u>-docker`` (the data-root dir, docs/architecture.md "Names and paths").
DATA_ROOT_SUFFIX = "-docker"
RESERVED_SUFFIXES: tuple[str, ...] = (DATA_ROOT_SUFFIX,)
# Entries of the hub's own beside the users' (seed data-roots, markers, locks, temp files) start
# with one of these; no safe name does.
RESERVED_PREFIXES: tuple[str, ...] = (".",)

_CANONICAL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?")
_HASHED = re.compile(r"(?P<slug>[a-z0-9]+(?:-[a-z0-9]+)*)--[0-9a-f]{12}")
_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def is_canonical(name: str) -> bool:
    """True when ``name`` is its own safe name: canonical form and no reserved suffix."""
    return (
        bool(_CANONICAL.fullmatch(name))
        and "--" not in name
        and not name.endswith(RESERVED_SUFFIXES)
    )


def is_safe_name(name: str) -> bool:
    """True when ``name`` has the shape of some username's safe name (canonical or hashed).

    A directory entry for which this is False is never a user's: it is the hub's own, or left by
    an older hub whose rules allowed it (``<u>-docker`` as a username), and needs an operator."""
    if is_canonical(name):
        return True
    hashed = _HASHED.fullmatch(name)
    return hashed is not None and len(hashed["slug"]) <= MAX_LENGTH - 2 - HASH_DIGITS


def owned_by_hub(entry: str) -> bool:
    """True for a directory entry name the hub derives for itself (never a user's safe name)."""
    return entry.startswith(RESERVED_PREFIXES) or any(
        entry.endswith(suffix) and is_safe_name(entry[: -len(suffix)])
        for suffix in RESERVED_SUFFIXES
    )


def derived_names(safe: str) -> tuple[str, ...]:
    """Every entry the hub makes beside the user's workspace for the safe name ``safe``."""
    return tuple(safe + suffix for suffix in RESERVED_SUFFIXES)


@functools.lru_cache(maxsize=65536)
def safe_name(username: str) -> str:
    """Map an untrusted username to a unique ``[a-z0-9-]`` name of at most 32 characters.

    Raises UsernameError for names that cannot be mapped: empty, longer than 256 characters,
    containing control characters, or without a single letter or digit.
    """
    if not isinstance(username, str) or not username:
        raise UsernameError(
            "Your account has no username the hub can use.",
            f"empty username {username!r}: check HUB_OAUTH_USERINFO_PATH",
        )
    if len(username) > MAX_USERNAME_LENGTH:
        raise UsernameError(
            "Your username is too long for the hub.",
            f"username of {len(username)} characters exceeds {MAX_USERNAME_LENGTH}",
        )
    if any(unicodedata.category(ch).startswith("C") for ch in username):
        raise UsernameError(
            "Your username contains characters the hub cannot use.",
            f"username {username!r} contains control or unassigned characters",
        )
    if not any(ch.isalnum() for ch in username):
        raise UsernameError(
            "Your username has no letters or digits; the hub cannot name your environment.",
            f"username {username!r} has no letter or digit",
        )
    if is_canonical(username):
        return username
    # Hashed from the exact string: a name that differs from another only by padding, case,
    # width or a look-alike letter (``alice\u00a0``, ``Alice``, Cyrillic ``\u0430lice``) gets a
    # name of its own, never the other's.
    ascii_form = unicodedata.normalize("NFKD", username).encode("ascii", "ignore").decode()
    slug = _NOT_SLUG.sub("-", ascii_form.lower()).strip("-")
    digest = hashlib.sha256(username.encode("utf-8")).hexdigest()[:HASH_DIGITS]
    slug = slug[: MAX_LENGTH - 2 - HASH_DIGITS].strip("-") or "u"
    return f"{slug}--{digest}"
