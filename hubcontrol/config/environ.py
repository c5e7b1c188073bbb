"""``HUB_*`` environment variables: OAuth, the session secret and their checks."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping

from hubcontrol.config.model import OAuthConfig

OAUTH_REQUIRED = (
    ("HUB_OAUTH_CLIENT_ID", "client_id"),
    ("HUB_OAUTH_CLIENT_SECRET", "client_secret"),
    ("HUB_OAUTH_AUTHORIZE_URL", "authorize_url"),
    ("HUB_OAUTH_TOKEN_URL", "token_url"),
    ("HUB_OAUTH_USERINFO_URL", "userinfo_url"),
    ("HUB_OAUTH_USERINFO_PATH", "userinfo_path"),
)
ENV_VARIABLES = (
    "HUB_DOMAIN",
    *(name for name, _ in OAUTH_REQUIRED),
    "HUB_OAUTH_REDIRECT_URI",
    "HUB_OAUTH_SCOPES",
    "HUB_SESSION_SECRET",
    "HUB_ALLOWED_GROUPS",
    "HUB_ADMIN_USERS",
    "HUB_WORKERS",
)
SECRET_VARIABLES = ("HUB_OAUTH_CLIENT_SECRET", "HUB_SESSION_SECRET")
MIN_SESSION_SECRET_BYTES = 32


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
    if not re.fullmatch(r"[^.\s]+(\.[^.\s]+)*", path):
        problems.append(
            f"variable HUB_OAUTH_USERINFO_PATH={path}: not a dot-path; expected e.g. preferred_username or ocs.data.id"
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
    return OAuthConfig(redirect_uri=redirect, scopes=scopes, **values)
