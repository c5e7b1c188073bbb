"""``HUB_*`` environment variables: OAuth, the session secret and their checks."""

from __future__ import annotations

import difflib
import re
import urllib.parse
from collections.abc import Mapping

from hubcontrol.config.flags import START_FLAGS
from hubcontrol.config.model import OAuthConfig

OAUTH_REQUIRED = (
    ("HUB_OAUTH_CLIENT_ID", "client_id"),
    ("HUB_OAUTH_CLIENT_SECRET", "client_secret"),
    ("HUB_OAUTH_AUTHORIZE_URL", "authorize_url"),
    ("HUB_OAUTH_TOKEN_URL", "token_url"),
    ("HUB_OAUTH_USERINFO_URL", "userinfo_url"),
    ("HUB_OAUTH_USERINFO_PATH", "userinfo_path"),
)
# Every HUB_* variable the hub reads, for "did you mean" on the others.
ENV_VARIABLES = (
    *(f.variable for f in START_FLAGS.values() if f.variable is not None),
    *(name for name, _ in OAUTH_REQUIRED),
    "HUB_OAUTH_REDIRECT_URI",
    "HUB_OAUTH_SCOPES",
    "HUB_SESSION_SECRET",
    "HUB_ALLOWED_GROUPS",
    "HUB_OAUTH_GROUPS_PATH",
    "HUB_ADMIN_USERS",
)
SECRET_VARIABLES = ("HUB_OAUTH_CLIENT_SECRET", "HUB_SESSION_SECRET")
MIN_SESSION_SECRET_BYTES = 32
_DOT_PATH = re.compile(r"[^.\s]+(\.[^.\s]+)*")


def _split_list(text: str) -> frozenset[str]:
    return frozenset(item.strip() for item in text.split(",") if item.strip())


def _valid_url(text: str) -> bool:
    parts = urllib.parse.urlsplit(text)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def session_secret_bytes(secret: str) -> int:
    """The strength of ``HUB_SESSION_SECRET`` in bytes: a hex string counts half its length."""
    if len(secret) % 2 == 0 and re.fullmatch(r"[0-9a-fA-F]+", secret):
        return len(secret) // 2
    return len(secret.encode())


def _oauth_from_env(
    env: Mapping[str, str], require: bool, problems: list[str]
) -> OAuthConfig | None:
    values = {attr: (env.get(var) or "").strip() for var, attr in OAUTH_REQUIRED}
    missing = [var for var, attr in OAUTH_REQUIRED if not values[attr]]
    if missing:
        if require:
            for var in missing:
                problems.append(
                    f"variable {var} is not set; it is required (put it in hub/.env, see docs/configuration.md)"
                )
        return None
    bad = False
    for var in ("HUB_OAUTH_AUTHORIZE_URL", "HUB_OAUTH_TOKEN_URL", "HUB_OAUTH_USERINFO_URL"):
        if not _valid_url(env[var].strip()):
            problems.append(
                f"variable {var}={env[var].strip()}: not an http(s) URL; expected e.g. https://auth.example.com/token"
            )
            bad = True
    path = values["userinfo_path"]
    if not _DOT_PATH.fullmatch(path):
        problems.append(
            f"variable HUB_OAUTH_USERINFO_PATH={path}: not a dot-path; expected e.g. preferred_username or ocs.data.id"
        )
        bad = True
    groups_path = (env.get("HUB_OAUTH_GROUPS_PATH") or "").strip() or "groups"
    if not _DOT_PATH.fullmatch(groups_path):
        problems.append(
            f"variable HUB_OAUTH_GROUPS_PATH={groups_path}: not a dot-path; expected e.g. groups or ocs.data.groups"
        )
        bad = True
    redirect = (env.get("HUB_OAUTH_REDIRECT_URI") or "").strip() or None
    if redirect and not _valid_url(redirect):
        problems.append(
            f"variable HUB_OAUTH_REDIRECT_URI={redirect}: not an http(s) URL; expected e.g. https://code.example.com/_hub/oauth/callback, or leave it empty"
        )
        bad = True
    scopes = tuple((env.get("HUB_OAUTH_SCOPES") or "").split())
    if bad:
        return None
    return OAuthConfig(redirect_uri=redirect, scopes=scopes, groups_path=groups_path, **values)


def from_environ(
    environ: Mapping[str, str], require: bool, problems: list[str], warnings: list[str]
) -> dict[str, object]:
    """The ``HubConfig`` fields set by variables alone (OAuth, session secret, groups, admins);
    problems and warnings are appended, a variable close to a known one's name is warned about.

    The variables that stand in for a flag (``HUB_DOMAIN``, ``HUB_WORKERS``) are read with their
    flag (``StartFlag.variable``).
    """
    kwargs: dict[str, object] = {"oauth": _oauth_from_env(environ, require, problems)}
    secret = environ.get("HUB_SESSION_SECRET") or ""
    if not secret.strip():
        warnings.append(
            "HUB_SESSION_SECRET is not set: a random secret is generated and kept in "
            "<state-dir>/session.secret (0600); set it to 64 hex characters (openssl rand -hex 32) "
            "so it is managed with your other secrets"
        )
    else:
        secret = secret.strip()
        strength = session_secret_bytes(secret)
        if strength < MIN_SESSION_SECRET_BYTES:
            problems.append(
                f"variable HUB_SESSION_SECRET: {strength} bytes is too short; at least "
                f"{MIN_SESSION_SECRET_BYTES} bytes are needed, e.g. 64 hex characters from `openssl rand -hex 32`"
            )
        kwargs["session_secret"] = secret
    kwargs["allowed_groups"] = _split_list(environ.get("HUB_ALLOWED_GROUPS") or "")
    kwargs["admin_users"] = _split_list(environ.get("HUB_ADMIN_USERS") or "")
    for name in sorted(environ):
        if name.startswith("HUB_") and name not in ENV_VARIABLES:
            match = difflib.get_close_matches(name, ENV_VARIABLES, n=1, cutoff=0.85)
            if match:
                warnings.append(f"variable {name} is not used by the hub; did you mean {match[0]}?")
    return kwargs
