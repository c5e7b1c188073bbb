"""``config_as_dict``: the JSON view of a ``HubConfig`` (``hub config check --json``)."""

from __future__ import annotations

import dataclasses

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
            "docker_socket": config.docker_socket,
            "network_id": config.network_id,
            "port": config.port,
            "base_domain": config.base_domain,
            "workspace_dir": str(config.workspace_dir),
            "idle_timeout": config.idle_timeout,
            "checkpoint": config.checkpoint,
            "container_image": config.container_image,
            "audit_dir": str(config.audit_dir),
            "state_dir": str(config.state_dir),
            "user_subnet_pool": config.user_subnet_pool,
            "supervisor": config.supervisor,
            "workers": config.workers,
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
