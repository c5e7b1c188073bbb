"""``build_config``: the pure core turning labels, flags and variables into a ``HubConfig``."""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from hubcontrol.config.environ import (
    ENV_VARIABLES,
    MIN_SESSION_SECRET_BYTES,
    _oauth_from_env,
    _split_list,
    session_secret_bytes,
)
from hubcontrol.config.flags import START_FLAGS, _flag, _normalize_flags
from hubcontrol.config.labels import (
    HUB_PREFIX,
    _build_templates,
    _collect_labels,
    _parse_template_value,
)
from hubcontrol.config.model import HubConfig
from hubcontrol.config.values import (
    _parse_abs_path,
    _parse_int,
    _parse_subnet_pool,
    _parse_supervisor,
    _suggest,
    parse_bool,
    parse_docker_socket,
    parse_domain,
    parse_port,
    parse_workers,
)
from hubcontrol.durations import parse_duration
from hubcontrol.errors import ConfigError


def _build(
    labels: Mapping[str, str],
    flags: Mapping[str, object],
    environ: Mapping[str, str],
    require_oauth: bool,
    problems: list[str],
    warnings: list[str],
) -> dict[str, object]:
    flags = _normalize_flags(flags)
    known_keys = {f.key for f in START_FLAGS.values()}
    for key in flags:
        if key not in known_keys:
            problems.append(
                f"unknown flag --{key.replace('_', '-')}{_suggest('--' + key.replace('_', '-'), ['--' + n for n in START_FLAGS])}"
            )
    kwargs: dict[str, object] = {}

    def flag(key: str, parse) -> None:
        value = _flag(flags, key)
        if value is None:
            return
        try:
            kwargs[key] = parse(value)
        except ValueError as exc:
            problems.append(f"flag --{key.replace('_', '-')}={value}: {exc}")

    flag("docker_socket", parse_docker_socket)
    flag("network_id", _parse_int)
    flag("port", parse_port)
    flag("workspace_dir", _parse_abs_path)
    flag(
        "idle_timeout",
        lambda v: (
            float(v)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
            else parse_duration(str(v))
        ),
    )
    flag("checkpoint", parse_bool)
    flag("container_image", lambda v: _parse_template_value("image", str(v).strip()))
    flag("audit_dir", _parse_abs_path)
    flag("state_dir", _parse_abs_path)
    flag("user_subnet_pool", _parse_subnet_pool)
    flag("supervisor", _parse_supervisor)
    flag("workers", parse_workers)
    if "workers" not in kwargs and _flag(flags, "workers") is None:
        variable = (environ.get("HUB_WORKERS") or "").strip()
        if variable:
            try:
                kwargs["workers"] = parse_workers(variable)
            except ValueError as exc:
                problems.append(f"variable HUB_WORKERS={variable}: {exc}")

    domain = _flag(flags, "base_domain")
    source = "flag --base-domain"
    if domain is None and (environ.get("HUB_DOMAIN") or "").strip():
        domain, source = environ["HUB_DOMAIN"], "variable HUB_DOMAIN"
    if domain is None:
        warnings.append("neither --base-domain nor HUB_DOMAIN is set; using example.com")
    else:
        try:
            kwargs["base_domain"] = parse_domain(str(domain))
        except ValueError as exc:
            problems.append(f"{source}={domain}: {exc}")

    routes, flat, named, default_name = _collect_labels(labels, problems)
    if not routes and not any(k.startswith(HUB_PREFIX + "route.") for k in labels):
        problems.append(
            "no routes: add at least one label rediacc.hub.route.<prefix>=<port>, e.g. rediacc.hub.route.code=8080"
        )
    templates, default = _build_templates(
        flat,
        named,
        default_name,
        kwargs.get("container_image"),
        bool(kwargs.get("checkpoint", False)),
        problems,
    )
    kwargs.update(routes=routes, templates=templates, default_template=default)

    kwargs["oauth"] = _oauth_from_env(environ, require_oauth, problems)
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

    if (
        any(t.checkpoint for t in templates.values())
        and float(kwargs.get("idle_timeout", 0.0)) == 0
    ):
        warnings.append(
            "checkpointing is enabled but --idle-timeout is 0, so no environment is ever checkpointed; set e.g. --idle-timeout=30m"
        )
    return kwargs


def build_config(
    labels: Mapping[str, str],
    flags: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    require_oauth: bool = True,
) -> HubConfig:
    """A validated ``HubConfig`` from labels, ``hub start`` flags and environment variables.

    ``flags`` maps flag keys (``"idle_timeout"`` or ``"idle-timeout"``) to strings or typed
    values; None or empty values count as not given. Every problem is collected into one
    ``ConfigError`` whose ``problems`` each name the label/flag/variable, the value and the fix.
    """
    problems: list[str] = []
    warnings: list[str] = []
    kwargs = _build(labels, flags or {}, environ or {}, require_oauth, problems, warnings)
    if problems:
        raise ConfigError(problems)
    return HubConfig(**kwargs, warnings=tuple(warnings))
