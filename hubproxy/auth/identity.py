"""Who a user is: the provider's exact username, how the hub shows it, and who is an admin.

The username is the value at ``HUB_OAUTH_USERINFO_PATH``, character for character: nothing is
trimmed, folded or normalised, because any such step could turn one provider account into
another's name (``alice`` + U+00A0 into ``alice``, admin rights included). Two rules follow:

- a name that trimming would change (leading or trailing whitespace of any kind: U+00A0,
  U+3000, U+2028, ...) or that holds a line or paragraph separator is refused at login with a
  page that says so. No provider hands such names out on purpose, and kept as they are they
  would read as someone else's name in every log, list and audit record;
- every other name is kept exactly. Names that differ from another only invisibly (Cyrillic
  ``а``, another Unicode normal form, another case) are different users, and
  ``hubcontrol.names.safe_name`` gives them different safe names (``<slug>--<hash>``), which is
  what the hub shows (``shown``) so that people can tell them apart.

``HUB_ADMIN_USERS`` is compared with the exact username (``is_admin``).
"""

from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING

from hubcontrol import UsernameError, safe_name

if TYPE_CHECKING:
    from hubcontrol import HubConfig


def check_username(name: str) -> None:
    """Raise UsernameError when the provider's ``name`` cannot be an identity as it is."""
    if name != name.strip():
        raise UsernameError(
            "Your username starts or ends with spaces or invisible characters, so the hub "
            "cannot tell it apart from another user's. Ask your administrator to fix the "
            "account at the login provider.",
            f"username {name!r} has leading or trailing whitespace "
            f"({', '.join(f'U+{ord(c):04X}' for c in _padding(name))}); refused",
        )
    separators = [c for c in name if unicodedata.category(c) in ("Zl", "Zp")]
    if separators:
        raise UsernameError(
            "Your username contains a line break character the hub cannot use.",
            f"username {name!r} contains "
            f"{', '.join(f'U+{ord(c):04X}' for c in separators)}; refused",
        )
    safe_name(name)  # the remaining refusals: empty, too long, control characters


def _padding(name: str) -> list[str]:
    stripped = name.strip()
    if not stripped:
        return list(dict.fromkeys(name))
    head = name[: name.index(stripped)]
    tail = name[name.index(stripped) + len(stripped) :]
    return list(dict.fromkeys(head + tail))


def shown(user: str) -> str:
    """The name the hub shows for ``user``: its safe name, which only ever holds ``[a-z0-9-]``
    and differs between users whose names look alike."""
    try:
        return safe_name(user)
    except UsernameError:
        return "(unusable name)"


def shown_with_provider_name(user: str) -> str:
    """``shown(user)``, followed by the provider's name in quotes when that differs (plain text:
    escape it for HTML)."""
    name = shown(user)
    return name if name == user else f"{name} (“{user}” at the login provider)"


def is_admin(config: HubConfig, user: str | None) -> bool:
    """True when ``user`` is listed in ``HUB_ADMIN_USERS``, compared exactly."""
    return user is not None and user in config.admin_users
