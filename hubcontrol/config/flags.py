"""``hub start`` flags: their declarations and the command-line parser."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from hubcontrol.config.values import MAX_WORKERS, _suggest, parse_bool
from hubcontrol.errors import ConfigError


@dataclass(frozen=True)
class StartFlag:
    """One ``hub start`` flag: its name, value kind and meaning (docs and CLI options use it)."""

    name: str  # without the leading dashes
    kind: str  # "str", "int", "path", "duration", "bool"
    help: str

    @property
    def key(self) -> str:
        """The key in ``parse_start_flags`` results and ``build_config`` flags."""
        return self.name.replace("-", "_")


START_FLAGS: Mapping[str, StartFlag] = MappingProxyType(
    {
        f.name: f
        for f in (
            StartFlag("docker-socket", "str", "host docker socket: unix:///path or /path"),
            StartFlag("network-id", "int", "the hub's own Rediacc network ID"),
            StartFlag("port", "int", "port the hub listens on (Traefik points here)"),
            StartFlag("base-domain", "str", "domain under which <prefix>.<domain> routes live"),
            StartFlag("workspace-dir", "path", "where per-user workspaces and data-roots live"),
            StartFlag(
                "idle-timeout", "duration", "checkpoint/stop environments idle this long; 0 = never"
            ),
            StartFlag(
                "checkpoint", "bool", "CRIU-checkpoint idle environments instead of stopping them"
            ),
            StartFlag(
                "container-image",
                "str",
                "image of the default template when rediacc.hub.image is unset",
            ),
            StartFlag("labels", "path", "a hub.labels.yaml (or compose file) to read labels from"),
            StartFlag("env-file", "path", "an env file with HUB_* variables"),
            StartFlag("audit-dir", "path", "directory of per-user audit logs"),
            StartFlag("state-dir", "path", "directory of the hub's persistent state"),
            StartFlag(
                "user-subnet-pool", "str", "IPv4 pool from which each user's daemon gets a /24"
            ),
            StartFlag("supervisor", "str", "how per-user daemons run: auto, systemd or local"),
            StartFlag(
                "workers",
                "int",
                f"proxy processes sharing --port (SO_REUSEPORT), 1-{MAX_WORKERS}; also HUB_WORKERS",
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
        if name == "no-checkpoint" and not has_value:
            flags["checkpoint"] = False
            continue
        spec = START_FLAGS.get(name)
        if spec is None:
            problems.append(f"hub start: unknown flag --{name}{_suggest('--' + name, names)}")
            if not has_value and i < len(args) and not args[i].startswith("--"):
                i += 1  # skip its value too
            continue
        if spec.kind == "bool":
            if not has_value:
                flags[spec.key] = True
            else:
                try:
                    flags[spec.key] = parse_bool(value)
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

    ``--flag=value`` and ``--flag value`` both work; ``--checkpoint`` is boolean (also
    ``--checkpoint=false`` and ``--no-checkpoint``). Values stay strings (booleans for
    ``--checkpoint``); ``build_config`` validates them. Raises ConfigError naming every bad flag.
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
