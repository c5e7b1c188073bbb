"""``build_config``: the pure core turning labels, flags and variables into a ``HubConfig``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hubcontrol.config.environ import from_environ
from hubcontrol.config.flags import START_FLAGS, StartFlag, _flag, _normalize_flags
from hubcontrol.config.labels import HUB_PREFIX, _build_templates, _collect_labels
from hubcontrol.config.model import HubConfig
from hubcontrol.config.values import suggest
from hubcontrol.errors import ConfigError


def _from_flag(
    spec: StartFlag,
    attr: str,
    flags: Mapping[str, object],
    environ: Mapping[str, str],
    kwargs: dict[str, Any],
    problems: list[str],
    warnings: list[str],
) -> None:
    """Set ``kwargs[spec.attr]`` from the flag, else from its variable; a bad value is a problem
    naming the flag (or variable) and the value, a missing one leaves the field's default."""
    value, source = _flag(flags, spec.key), f"flag --{spec.name}"
    if value is None and spec.variable is not None:
        text = (environ.get(spec.variable) or "").strip()
        if text:
            value, source = text, f"variable {spec.variable}"
    if value is None:
        if spec.missing is not None:
            warnings.append(spec.missing)
        return
    try:
        kwargs[attr] = spec.parse(value)
    except ValueError as exc:
        problems.append(f"{source}={value}: {exc}")


def _build(
    labels: Mapping[str, str],
    flags: Mapping[str, object],
    environ: Mapping[str, str],
    require_oauth: bool,
    problems: list[str],
    warnings: list[str],
) -> dict[str, Any]:
    flags = _normalize_flags(flags)
    known_keys = {f.key for f in START_FLAGS.values()}
    for key in flags:
        if key not in known_keys:
            problems.append(
                f"unknown flag --{key.replace('_', '-')}{suggest('--' + key.replace('_', '-'), ['--' + n for n in START_FLAGS])}"
            )
    # HubConfig's field name -> its parsed value (each of its own field's type)
    kwargs: dict[str, Any] = {}
    for spec in START_FLAGS.values():
        if spec.attr is not None:
            _from_flag(spec, spec.attr, flags, environ, kwargs, problems, warnings)

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

    kwargs.update(from_environ(environ, require_oauth, problems, warnings))

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
