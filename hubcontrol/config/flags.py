"""``hub start`` flags: one declaration each, and the command-line parser.

A flag is declared once, as a ``StartFlag`` in ``START_FLAGS`` (in the spirit of mitmproxy's
``loader.add_option``). The declaration drives everything that knows about flags:

- ``parse_start_flags`` (which names exist, which are switches),
- ``build_config`` (``parse`` turns the value into the ``HubConfig`` field ``attr``; ``variable``
  is read when the flag is not given; ``missing`` is warned when neither is),
- ``config_as_dict`` (the ``hub`` section of ``hub config check --json``),
- ``hub config check`` (one row per flag, the value written by ``show``),
- ``hub start --help`` and the ``hub_*`` options of ``mitmdump -s addons/hub.py`` (``help``).

To add a flag: add a ``HubConfig`` field with its default (``model``), a value parser if none
fits (``values``), one ``StartFlag`` below, a row in docs/configuration.md, and a sample value in
tests/hubcli/test_start_flags.py (which fails until every flag field has one declaration).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hubcontrol.config.labels import _parse_template_value
from hubcontrol.config.model import HubConfig
from hubcontrol.config.values import (
    MAX_WORKERS,
    parse_abs_path,
    parse_bool,
    parse_cpu_weight,
    parse_docker_socket,
    parse_domain,
    parse_port,
    parse_seconds,
    parse_subnet_pool,
    parse_supervisor,
    parse_whole_number,
    parse_workers,
    suggest,
)
from hubcontrol.durations import format_duration
from hubcontrol.errors import ConfigError

NOT_SET = "(not set)"


@dataclass(frozen=True)
class StartFlag:
    """One ``hub start`` flag, declared once (see the module docstring for who reads it).

    ``parse`` takes the flag's value (a string from a command line, or a typed value from the
    Python API) and returns the ``HubConfig`` field's value; it raises ``ValueError`` saying what
    is accepted, which ``build_config`` prefixes with the flag and the value. ``attr`` is None
    for flags read before there is a configuration (``--labels``, ``--env-file``): they are
    parsed from a command line but set no field and are not shown.
    """

    name: str  # without the leading dashes: "idle-timeout"
    parse: Callable[[Any], Any]
    help: str  # one line, for `hub start --help` and mitmdump's option help
    attr: str | None = None  # the HubConfig field it sets
    show: Callable[[Any], str] = str  # the field's value as `hub config check` prints it
    switch: bool = False  # boolean: `--name` alone is true, `--no-name` false, `--name=false` too
    variable: str | None = None  # the HUB_* variable read when the flag is not given
    missing: str | None = None  # warned when neither the flag nor its variable is given

    @property
    def key(self) -> str:
        """The key in ``parse_start_flags`` results and ``build_config`` flags."""
        return self.name.replace("-", "_")

    def shown(self, config: HubConfig) -> str:
        """This flag's value in ``config`` as ``hub config check`` prints it."""
        value = getattr(config, self.attr) if self.attr else None
        return NOT_SET if value is None else self.show(value)


def _parse_image(value: object) -> str:
    """An image reference, checked as the label ``rediacc.hub.image`` is."""
    return str(_parse_template_value("image", str(value).strip()))


def _show_idle_timeout(seconds: float) -> str:
    return format_duration(seconds) + ("" if seconds else " (never)")


def _show_bool(value: bool) -> str:
    return "true" if value else "false"


START_FLAGS: Mapping[str, StartFlag] = MappingProxyType(
    {
        f.name: f
        for f in (
            StartFlag(
                "docker-socket",
                parse_docker_socket,
                "host docker socket: unix:///path or /path",
                attr="docker_socket",
            ),
            StartFlag(
                "network-id",
                parse_whole_number,
                "the hub's own Rediacc network ID",
                attr="network_id",
            ),
            StartFlag(
                "port", parse_port, "port the hub listens on (Traefik points here)", attr="port"
            ),
            StartFlag(
                "base-domain",
                parse_domain,
                "domain under which <prefix>.<domain> routes live",
                attr="base_domain",
                variable="HUB_DOMAIN",
                missing="neither --base-domain nor HUB_DOMAIN is set; using example.com",
            ),
            StartFlag(
                "workspace-dir",
                parse_abs_path,
                "where per-user workspaces and data-roots live",
                attr="workspace_dir",
            ),
            StartFlag(
                "idle-timeout",
                parse_seconds,
                "checkpoint/stop environments idle this long; 0 = never",
                attr="idle_timeout",
                show=_show_idle_timeout,
            ),
            StartFlag(
                "checkpoint",
                parse_bool,
                "CRIU-checkpoint idle environments instead of stopping them",
                attr="checkpoint",
                show=_show_bool,
                switch=True,
            ),
            StartFlag(
                "container-image",
                _parse_image,
                "image of the default template when rediacc.hub.image is unset",
                attr="container_image",
            ),
            StartFlag("labels", str, "a hub.labels.yaml (or compose file) to read labels from"),
            StartFlag("env-file", str, "an env file with HUB_* variables"),
            StartFlag(
                "skip-checks",
                parse_bool,
                "start even when a host check of `hub doctor` fails (at your own risk)",
                switch=True,
            ),
            StartFlag(
                "audit-dir", parse_abs_path, "directory of per-user audit logs", attr="audit_dir"
            ),
            StartFlag(
                "state-dir",
                parse_abs_path,
                "directory of the hub's persistent state",
                attr="state_dir",
            ),
            StartFlag(
                "user-subnet-pool",
                parse_subnet_pool,
                "IPv4 pool from which each user's daemon gets a /24",
                attr="user_subnet_pool",
            ),
            StartFlag(
                "supervisor",
                parse_supervisor,
                "how per-user daemons run: auto, systemd or local",
                attr="supervisor",
            ),
            StartFlag(
                "userns-remap",
                parse_bool,
                "per-user daemons remap containers to the user's own host ids (non-root "
                "checkpoints where root lacks CAP_SYS_RESOURCE); also HUB_USERNS_REMAP",
                attr="userns_remap",
                show=_show_bool,
                switch=True,
                variable="HUB_USERNS_REMAP",
            ),
            StartFlag(
                "workers",
                parse_workers,
                f"proxy processes sharing --port (SO_REUSEPORT), 1-{MAX_WORKERS}; also HUB_WORKERS",
                attr="workers",
                variable="HUB_WORKERS",
            ),
            StartFlag(
                "users-cpu-weight",
                parse_cpu_weight,
                "CPU weight of rediacc.slice (every user's daemon and environment) against the "
                "host's own services, 1-10000 (host default 100); also HUB_USERS_CPU_WEIGHT",
                attr="users_cpu_weight",
                variable="HUB_USERS_CPU_WEIGHT",
            ),
        )
    }
)


def _strip_program(argv: list[str]) -> tuple[list[str], str | None]:
    """Drop a leading ``hub start`` / ``hubcli start`` / ``start``; say why if it is not one."""
    args = list(argv)
    if args and Path(args[0]).name in ("hub", "hubcli"):
        args = args[1:]
        if not args or args[0] != "start":
            return args, f"command {' '.join(argv)!r} is not 'hub start [flags]'"
    if args and args[0] == "start":
        args = args[1:]
    elif args and not args[0].startswith("-"):
        return args, f"command {' '.join(argv)!r} is not 'hub start [flags]'"
    return args, None


def _parse_start_flags(argv: list[str] | tuple[str, ...], problems: list[str]) -> dict[str, object]:
    args, bad = _strip_program(list(argv))
    if bad:
        problems.append(bad)
        return {}
    flags: dict[str, object] = {}
    i = 0
    names = [f"--{n}" for n in START_FLAGS]
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("--"):
            problems.append(
                f"hub start: unexpected argument {arg!r}; every option is a --flag (flags: {', '.join(names)})"
            )
            continue
        name, has_value, value = arg[2:].partition("=")
        negated = START_FLAGS.get(name.removeprefix("no-")) if name.startswith("no-") else None
        if negated is not None and negated.switch and not has_value:
            flags[negated.key] = False
            continue
        spec = START_FLAGS.get(name)
        if spec is None:
            problems.append(f"hub start: unknown flag --{name}{suggest('--' + name, names)}")
            if not has_value and i < len(args) and not args[i].startswith("--"):
                i += 1  # skip its value too
            continue
        if spec.switch:
            if not has_value:
                flags[spec.key] = True
            else:
                try:
                    flags[spec.key] = spec.parse(value)
                except ValueError as exc:
                    problems.append(f"hub start: --{name}: {exc}")
            continue
        if not has_value:
            if i >= len(args) or args[i].startswith("--"):
                problems.append(
                    f"hub start: --{name} needs a value: --{name}=VALUE or --{name} VALUE"
                )
                continue
            value = args[i]
            i += 1
        flags[spec.key] = value
    return flags


def parse_start_flags(argv: list[str] | tuple[str, ...]) -> dict[str, object]:
    """The ``hub start`` flags in ``argv`` (a leading ``hub start`` is skipped), by key.

    ``--flag=value`` and ``--flag value`` both work; a switch (``--checkpoint``) takes no value
    (also ``--checkpoint=false`` and ``--no-checkpoint``). Values stay strings (booleans for
    switches); ``build_config`` validates them. Raises ConfigError naming every bad flag.
    """
    problems: list[str] = []
    flags = _parse_start_flags(argv, problems)
    if problems:
        raise ConfigError(problems)
    return flags


def _flag(flags: Mapping[str, object], key: str) -> object | None:
    value = flags.get(key)
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None  # an empty flag (e.g. --docker-socket=${UNSET}) means "not given"
    return value


def _normalize_flags(flags: Mapping[str, object] | None) -> dict[str, object]:
    return {
        str(k).lstrip("-").replace("-", "_"): v for k, v in (flags or {}).items() if v is not None
    }
