"""``rediacc.hub.*`` labels: routes, the default template and named templates."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from hubcontrol.config.model import DEFAULT_TEMPLATE_NAME, MODES, Template
from hubcontrol.config.values import parse_bool, parse_port, parse_route_prefix, suggest
from hubcontrol.dockerpolicy import SAFE_CAPABILITIES, normalize_capability
from hubcontrol.durations import parse_cpu_quota, parse_memory_max, parse_size

HUB_PREFIX = "rediacc.hub."

# Template fields: label suffix -> Template attribute. The flat default template uses
# ``rediacc.hub.<suffix>``, a named one ``rediacc.hub.templates.<name>.<suffix>``.
TEMPLATE_FIELDS: Mapping[str, str] = MappingProxyType(
    {
        "image": "image",
        "command": "command",
        "user": "user",
        "workspace": "workspace",
        "shm_size": "shm_size",
        "docker": "docker",
        "limits.cpu": "cpu",
        "limits.memory": "memory",
        "hook.on_create": "on_create",
        "hook.checkpoint.pre_dump": "pre_dump",
        "hook.checkpoint.post_restore": "post_restore",
        "checkpoint": "checkpoint",
        "mode": "mode",
        "cap_add": "cap_add",
    }
)
DOCKER_MODES = ("", "per-user")
_TEMPLATE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")


def _valid_label_keys() -> list[str]:
    keys = [HUB_PREFIX + "template", HUB_PREFIX + "route.<prefix>"]
    keys += [HUB_PREFIX + suffix for suffix in TEMPLATE_FIELDS]
    return keys


def _suggest_label(key: str) -> str:
    parts = key[len(HUB_PREFIX) :].split(".")
    candidates = [HUB_PREFIX + suffix for suffix in TEMPLATE_FIELDS] + [HUB_PREFIX + "template"]

    def like(word: str) -> bool:
        return difflib.SequenceMatcher(None, parts[0], word).ratio() >= 0.7

    if len(parts) >= 2 and like("route"):
        candidates.append(HUB_PREFIX + "route." + parts[-1])
    if len(parts) >= 3 and like("templates"):
        rest = ".".join(parts[2:])
        field_match = difflib.get_close_matches(rest, list(TEMPLATE_FIELDS), n=1, cutoff=0.5)
        candidates.append(
            f"{HUB_PREFIX}templates.{parts[1]}.{field_match[0] if field_match else rest}"
        )
    return suggest(key, candidates)


def _parse_template_value(attr: str, value: str) -> object:
    """Validate one template field; ValueError says what is accepted."""
    if attr == "shm_size":
        size = parse_size(value)
        if size <= 0:
            raise ValueError(
                f"{value!r} is zero; expected a positive size such as 1073741824 or 1G"
            )
        return size
    if attr == "docker":
        if value not in DOCKER_MODES:
            raise ValueError(
                f"{value!r} is not a docker mode; expected per-user (a dedicated dockerd per user) or empty"
            )
        return value
    if attr == "mode":
        if value not in MODES:
            raise ValueError(f"{value!r} is not a mode; expected persistent or ephemeral")
        return value
    if attr == "checkpoint":
        return parse_bool(value)
    if attr == "cap_add":
        return parse_cap_add(value)
    if attr == "cpu":
        parse_cpu_quota(value)
        return value.strip()
    if attr == "memory":
        parse_memory_max(value, total_memory=1 << 40)
        return value.strip()
    if attr == "workspace":
        if not value.startswith("/") or value.rstrip("/") == "":
            raise ValueError(
                f"{value!r} is not an absolute directory other than /; expected e.g. /workspace"
            )
        return value.rstrip("/")
    if attr in ("image", "user") and re.search(r"\s", value):
        raise ValueError(f"{value!r} contains white space")
    return value


def parse_cap_add(value: str) -> tuple[str, ...]:
    """``MKNOD,NET_ADMIN``-style capability names (``CAP_`` optional, any case), sorted; only
    names from the policy's safe list: root in the environment must stay no stronger than root
    in a container the user may run through the policy socket."""
    caps = {normalize_capability(c) for c in value.split(",") if c.strip()}
    unsafe = sorted(caps - SAFE_CAPABILITIES)
    if unsafe:
        raise ValueError(
            f"{', '.join(unsafe)} cannot be given to an environment; allowed: "
            + ", ".join(sorted(SAFE_CAPABILITIES))
        )
    return tuple(sorted(caps))


def _template_problem(label: str, value: str, exc: ValueError) -> str:
    return f"label {label}={value}: {exc}"


def _collect_labels(
    labels: Mapping[str, str], problems: list[str]
) -> tuple[dict[str, int], dict[str, object], dict[str, dict[str, object]], str | None]:
    """Split ``rediacc.hub.*`` labels into routes, flat fields, named fields and the default name."""
    routes: dict[str, int] = {}
    flat: dict[str, object] = {}
    named: dict[str, dict[str, object]] = {}
    default_name: str | None = None
    for key, raw in labels.items():
        if not key.startswith(HUB_PREFIX):
            continue
        value = "" if raw is None else str(raw).strip()
        rest = key[len(HUB_PREFIX) :]
        if rest.startswith("route."):
            prefix_text = rest[len("route.") :]
            try:
                prefix = parse_route_prefix(prefix_text)
            except ValueError as exc:
                problems.append(f"label {key}: route prefix {exc}")
                continue
            try:
                port = parse_port(value)
            except ValueError as exc:
                problems.append(f"label {key}={value}: {exc}")
                continue
            if prefix in routes:
                problems.append(f"label {key}: route prefix {prefix!r} is defined twice")
                continue
            routes[prefix] = port
        elif rest == "template":
            if value:
                default_name = value
        elif rest.startswith("templates."):
            name, _, suffix = rest[len("templates.") :].partition(".")
            if not _TEMPLATE_NAME.fullmatch(name):
                problems.append(
                    f"label {key}: template name {name!r} is not valid; expected letters, digits, '_' or '-' "
                    "(label form rediacc.hub.templates.<name>.<field>)"
                )
                continue
            if suffix not in TEMPLATE_FIELDS:
                fields = ", ".join(TEMPLATE_FIELDS)
                hint = suggest(key, [f"{HUB_PREFIX}templates.{name}.{f}" for f in TEMPLATE_FIELDS])
                problems.append(
                    f"label {key}: template {name} has no field {suffix!r}{hint} (fields: {fields})"
                )
                continue
            _set_field(named.setdefault(name, {}), key, suffix, value, problems)
        elif rest in TEMPLATE_FIELDS:
            _set_field(flat, key, rest, value, problems)
        else:
            hint = _suggest_label(key) or (
                f"; valid labels: {', '.join(_valid_label_keys())}, rediacc.hub.templates.<name>.<field>"
            )
            problems.append(f"label {key}: unknown label{hint}")
    return routes, flat, named, default_name


def _set_field(
    target: dict[str, object], key: str, suffix: str, value: str, problems: list[str]
) -> None:
    attr = TEMPLATE_FIELDS[suffix]
    if value == "" and attr != "docker":
        return  # an empty label (e.g. an unset ${VAR}) means "not set"
    try:
        target[attr] = _parse_template_value(attr, value)
    except ValueError as exc:
        problems.append(_template_problem(key, value, exc))


def _build_templates(
    flat: dict[str, object],
    named: dict[str, dict[str, object]],
    default_name: str | None,
    container_image: str | None,
    checkpoint_flag: bool,
    problems: list[str],
) -> tuple[dict[str, Template], str]:
    templates: dict[str, Template] = {}
    base: dict[str, Any] = dict(flat)  # label values, each checked as its field is parsed
    if "image" not in base and container_image:
        base["image"] = container_image
    # resolved here: a template's own rediacc.hub.checkpoint, else the flag; checkpoint_wanted
    # lets a template's true/false win over --checkpoint (a Template made in code may leave it
    # None: the flag decides)
    base.setdefault("checkpoint", checkpoint_flag)
    default = default_name or DEFAULT_TEMPLATE_NAME
    if DEFAULT_TEMPLATE_NAME not in named and ("image" in base or default == DEFAULT_TEMPLATE_NAME):
        if "image" not in base:
            problems.append(
                "the default template has no image: set the label rediacc.hub.image=IMAGE "
                "or pass --container-image=IMAGE"
                + (" (or pick a named template with rediacc.hub.template=NAME)" if named else "")
            )
        else:
            templates[DEFAULT_TEMPLATE_NAME] = Template(name=DEFAULT_TEMPLATE_NAME, **base)
    for name, fields in named.items():
        merged: dict[str, Any] = {**base, **fields}
        if "image" not in merged:
            problems.append(
                f"template {name} has no image: set rediacc.hub.templates.{name}.image, "
                "rediacc.hub.image or --container-image"
            )
            continue
        templates[name] = Template(name=name, **merged)
    if default_name and default_name not in named and default_name != DEFAULT_TEMPLATE_NAME:
        defined = ", ".join(
            list(named) + ([DEFAULT_TEMPLATE_NAME] if DEFAULT_TEMPLATE_NAME in templates else [])
        )
        problems.append(
            f"label rediacc.hub.template={default_name}: no such template; defined templates: "
            f"{defined or '(none)'} (define it with rediacc.hub.templates.{default_name}.image=...)"
        )
    return templates, default
