"""``config_as_dict``: the JSON view of a ``HubConfig`` (``hub config check --json``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from hubcontrol.config.flags import START_FLAGS
from hubcontrol.config.model import HubConfig

REDACTED = "***"


def config_as_dict(config: HubConfig, *, redact: bool = True) -> dict[str, object]:
    """A JSON-ready view of ``config`` (the ``hub config check --json`` schema, version 1).

    Secrets (``HUB_OAUTH_CLIENT_SECRET``, ``HUB_SESSION_SECRET``) become ``"***"`` when ``redact``.
    """

    def secret(value: str | None) -> str | None:
        if value is None:
            return None
        return REDACTED if redact else value

    oauth = None
    if config.oauth is not None:
        o = config.oauth
        oauth = {
            "client_id": o.client_id,
            "client_secret": secret(o.client_secret),
            "authorize_url": o.authorize_url,
            "token_url": o.token_url,
            "userinfo_url": o.userinfo_url,
            "userinfo_path": o.userinfo_path,
            "groups_path": o.groups_path,
            "redirect_uri": o.redirect_uri,
            "scopes": list(o.scopes),
        }
    return {
        "schema_version": 1,
        "valid": True,
        "source": {
            "path": str(config.source) if config.source else None,
            "service": config.service,
            "env_files": [str(p) for p in config.env_files],
        },
        "hub": {
            spec.attr: _json_value(getattr(config, spec.attr))
            for spec in START_FLAGS.values()
            if spec.attr is not None
        },
        "routes": dict(config.routes),
        "default_template": config.default_template,
        "templates": {
            name: {f.name: getattr(t, f.name) for f in dataclasses.fields(t)}
            for name, t in config.templates.items()
        },
        "oauth": oauth,
        "session_secret": secret(config.session_secret),
        "allowed_groups": sorted(config.allowed_groups),
        "admin_users": sorted(config.admin_users),
        "warnings": list(config.warnings),
    }


def _json_value(value: object) -> object:
    """A flag field's value in JSON: paths as strings, the rest (str, int, float, bool, None) as is."""
    return str(value) if isinstance(value, Path) else value
