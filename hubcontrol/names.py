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

_CANONICAL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?")
_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def is_canonical(name: str) -> bool:
    """True when ``name`` is its own safe name."""
    return bool(_CANONICAL.fullmatch(name)) and "--" not in name


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
    ascii_form = unicodedata.normalize("NFKD", username).encode("ascii", "ignore").decode()
    slug = _NOT_SLUG.sub("-", ascii_form.lower()).strip("-")
    digest = hashlib.sha256(username.encode("utf-8")).hexdigest()[:HASH_DIGITS]
    slug = slug[: MAX_LENGTH - 2 - HASH_DIGITS].strip("-") or "u"
    return f"{slug}--{digest}"
