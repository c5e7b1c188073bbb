"""The hub's configuration model: typed, immutable, shared by the proxy, the control plane and the CLI.

The *types* in this module are the contract every other module codes against. Loading them from
a compose file, a ``hub.labels.yaml``, ``hub start`` flags and the environment lives beside them:

- ``load_config(path, ...)``: a compose file or a ``hub.labels.yaml`` plus flags and environment;
- ``build_config(labels, flags, environ)``: the pure core, collecting every problem into one
  ``ConfigError`` whose messages name the label, flag or variable, the bad value and the fix;
- ``parse_start_flags(argv)``, ``load_labels_file`` / ``dump_labels_file`` (the file ``hub
  install`` writes), ``load_compose`` (in ``hubcontrol.compose``), and the value parsers
  ``parse_duration``, ``parse_size``, ``parse_cpu_quota`` (in ``hubcontrol.durations``).

docs/configuration.md is the operator's reference for every label, flag and variable.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import yaml

from hubcontrol import safefs
from hubcontrol.compose import ComposeService, load_compose, parse_env_file, read_yaml
from hubcontrol.dockerpolicy import SAFE_CAPABILITIES, normalize_capability
from hubcontrol.durations import (
    format_duration,
    parse_cpu_quota,
    parse_duration,
    parse_memory_max,
    parse_size,
)
from hubcontrol.errors import ConfigError

__all__ = [
    "ComposeService",
    "HubConfig",
    "LabelsFile",
    "OAuthConfig",
    "START_FLAGS",
    "StartFlag",
    "Template",
    "build_config",
    "config_as_dict",
    "dump_labels_file",
    "format_duration",
    "load_compose",
    "load_config",
    "load_labels_file",
    "parse_bool",
    "parse_cpu_quota",
    "parse_duration",
    "parse_env_file",
    "parse_memory_max",
    "parse_size",
    "parse_start_flags",
    "parse_workers",
]

DEFAULT_USER = "vscode"
DEFAULT_WORKSPACE = "/workspace"
DEFAULT_SHM_SIZE = 1 << 30  # the seed: 1073741824 bytes
DEFAULT_PORT = 7112
DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"
DEFAULT_LABELS_FILE = Path("/etc/rediacc/hub/hub.labels.yaml")
DEFAULT_AUDIT_DIR = Path("/var/log/rediacc/hub")
DEFAULT_STATE_DIR = Path("/var/lib/rediacc/hub")
# Each user's daemon gets a /24 block of this pool, indexed by (net_id - 32768) / 64.
DEFAULT_USER_SUBNET_POOL = "10.208.0.0/12"
USER_NETWORK_ID_BASE = 32768
USER_NETWORK_ID_STEP = 64
DEFAULT_TEMPLATE_NAME = "default"

MODES = ("persistent", "ephemeral")


def _frozen(mapping: Mapping | None) -> Mapping:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Template:
    """One environment type a user can pick at login (``?template=NAME``).

    Named templates (``rediacc.hub.templates.<name>.<field>``) inherit every unset field from the
    flat default template (``rediacc.hub.<field>``).
    """

    name: str
    image: str
    command: str | None = None
    user: str = DEFAULT_USER
    workspace: str = DEFAULT_WORKSPACE
    shm_size: int = DEFAULT_SHM_SIZE
    docker: str = ""  # "per-user" provisions a dedicated dockerd for each user
    cpu: str | None = None  # systemd CPUQuota= value, e.g. "200%"
    memory: str | None = None  # systemd MemoryMax= value, e.g. "8G"
    on_create: str | None = None
    pre_dump: str | None = None
    post_restore: str | None = None
    checkpoint: bool = False
    mode: str = "persistent"  # or "ephemeral"
    # Capabilities beyond the environment's default set (Docker's, minus MKNOD); only those a
    # user's own containers may add through the policy (dockerpolicy.SAFE_CAPABILITIES).
    cap_add: tuple[str, ...] = ()

    @property
    def per_user_docker(self) -> bool:
        return self.docker == "per-user"

    @property
    def ephemeral(self) -> bool:
        return self.mode == "ephemeral"


@dataclass(frozen=True)
class OAuthConfig:
    """The seed's ``HUB_OAUTH_*`` variables."""

    client_id: str
    client_secret: str
    authorize_url: str
    token_url: str
    userinfo_url: str
    userinfo_path: str
    redirect_uri: str | None = None
    scopes: tuple[str, ...] = ()


@dataclass(frozen=True)
class HubConfig:
    """Everything ``hub start`` needs: labels, flags and environment variables, resolved."""

    routes: Mapping[str, int] = field(default_factory=lambda: _frozen({}))
    templates: Mapping[str, Template] = field(default_factory=lambda: _frozen({}))
    default_template: str = DEFAULT_TEMPLATE_NAME
    # hub start flags
    docker_socket: str = DEFAULT_DOCKER_SOCKET
    network_id: int | None = None
    port: int = DEFAULT_PORT
    base_domain: str = "example.com"
    workspace_dir: Path = Path("/var/lib/rediacc/hub/workspaces")
    idle_timeout: float = 0.0  # seconds; 0 = never
    checkpoint: bool = False
    container_image: str | None = None
    # environment variables
    oauth: OAuthConfig | None = None
    session_secret: str | None = None
    allowed_groups: frozenset[str] = frozenset()
    admin_users: frozenset[str] = frozenset()
    # beyond the seed (documented in docs/configuration.md)
    audit_dir: Path = DEFAULT_AUDIT_DIR
    state_dir: Path = DEFAULT_STATE_DIR
    user_subnet_pool: str = DEFAULT_USER_SUBNET_POOL
    supervisor: str = "auto"  # "systemd", "local" or "auto" (systemd when PID 1 is systemd)
    workers: int = 1  # proxy processes on --port; worker 0 also runs the control plane
    # where it came from (set by load_config; informational)
    source: Path | None = None  # the compose file or hub.labels.yaml
    service: str | None = None  # the compose service
    env_files: tuple[Path, ...] = ()
    warnings: tuple[str, ...] = ()  # non-fatal findings, e.g. a variable that is not set

    def __post_init__(self) -> None:
        object.__setattr__(self, "routes", _frozen(self.routes))
        object.__setattr__(self, "templates", _frozen(self.templates))

    @property
    def docker_url(self) -> str:
        """``--docker-socket`` as a docker-py base URL (``unix:///var/run/docker.sock``)."""
        return "unix://" + self.docker_socket

    def template(self, name: str | None) -> Template:
        """The template called ``name``, or the default one when ``name`` is None/empty."""
        key = name or self.default_template
        try:
            return self.templates[key]
        except KeyError:
            known = ", ".join(sorted(self.templates)) or "(none)"
            raise ConfigError(f"unknown template {key!r}; defined templates: {known}") from None


# =========================================================================== loading

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
SUPERVISORS = ("auto", "systemd", "local")
LABELS_FILE_VERSION = 1

_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_TEMPLATE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
_TRUE = ("true", "1", "yes", "on")
MAX_WORKERS = 64  # --workers: proxy processes sharing the port
_FALSE = ("false", "0", "no", "off", "")


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
REDACTED = "***"
MIN_SESSION_SECRET_BYTES = 32


def _valid_label_keys() -> list[str]:
    keys = [HUB_PREFIX + "template", HUB_PREFIX + "route.<prefix>"]
    keys += [HUB_PREFIX + suffix for suffix in TEMPLATE_FIELDS]
    return keys


def _suggest(word: str, candidates: list[str]) -> str:
    match = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f"; did you mean {match[0]}?" if match else ""


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
    return _suggest(key, candidates)


def parse_bool(text: object) -> bool:
    """``true/false``, ``1/0``, ``yes/no``, ``on/off`` (any case); ValueError otherwise."""
    if isinstance(text, bool):
        return text
    s = str(text).strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean; expected true or false")


def parse_docker_socket(text: str) -> str:
    """The filesystem path of ``unix:///path`` or ``/path``."""
    s = str(text).strip()
    if s.startswith("unix://"):
        s = s[len("unix://") :]
    elif "://" in s:
        raise ValueError(
            f"{text!r}: only unix sockets are supported; expected unix:///path or /path"
        )
    if not s.startswith("/"):
        raise ValueError(
            f"{text!r} is not an absolute socket path; expected unix:///var/run/docker.sock or /var/run/docker.sock"
        )
    return s


def parse_port(text: object) -> int:
    """A TCP port 1-65535."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a port; expected a whole number from 1 to 65535")
    s = str(text).strip()
    if not re.fullmatch(r"[0-9]+", s):
        raise ValueError(f"{text!r} is not a port; expected a whole number from 1 to 65535")
    port = int(s)
    if not 1 <= port <= 65535:
        raise ValueError(f"{port} is out of range; expected a whole number from 1 to 65535")
    return port


def parse_domain(text: str) -> str:
    """A host name made of DNS labels (``example.com``, ``localhost``), lower-cased."""
    s = str(text).strip().lower().rstrip(".")
    if not s or not all(_DNS_LABEL.fullmatch(part) for part in s.split(".")) or len(s) > 253:
        raise ValueError(
            f"{text!r} is not a domain name; expected DNS labels (letters, digits, '-') joined by dots, "
            "e.g. example.com or localhost"
        )
    return s


def parse_route_prefix(text: str) -> str:
    """A route prefix: one DNS label (``code``, ``term``), lower-cased."""
    s = str(text).strip().lower()
    if not _DNS_LABEL.fullmatch(s):
        raise ValueError(
            f"{text!r} is not a DNS label; expected 1-63 letters, digits or '-', "
            "not starting or ending with '-' (e.g. code, term, desktop)"
        )
    return s


def _parse_abs_path(text: object) -> Path:
    s = str(text).strip()
    if not s.startswith("/"):
        raise ValueError(f"{text!r} is not an absolute path; expected a path starting with /")
    return Path(s)


def parse_workers(text: object) -> int:
    """``--workers`` (or ``HUB_WORKERS``): how many proxy processes share the port, 1-64."""
    s = str(text).strip()
    if isinstance(text, bool) or not re.fullmatch(r"[0-9]+", s):
        raise ValueError(
            f"{text!r} is not a whole number; expected 1 to {MAX_WORKERS} (e.g. the number of cores)"
        )
    n = int(s)
    if not 1 <= n <= MAX_WORKERS:
        raise ValueError(f"{n} is out of range; expected 1 to {MAX_WORKERS}")
    return n


def _parse_int(text: object) -> int:
    s = str(text).strip()
    if isinstance(text, bool) or not re.fullmatch(r"[0-9]+", s):
        raise ValueError(f"{text!r} is not a whole number; expected e.g. 2816")
    return int(s)


def _parse_subnet_pool(text: object) -> str:
    try:
        net = ipaddress.IPv4Network(str(text).strip(), strict=True)
    except ValueError as exc:
        raise ValueError(
            f"{text!r} is not an IPv4 network ({exc}); expected e.g. {DEFAULT_USER_SUBNET_POOL}"
        ) from None
    if net.prefixlen > 24:
        raise ValueError(
            f"{text!r} is smaller than one /24; expected a /24 or larger, e.g. {DEFAULT_USER_SUBNET_POOL}"
        )
    return str(net)


def _parse_supervisor(text: object) -> str:
    s = str(text).strip()
    if s not in SUPERVISORS:
        raise ValueError(f"{text!r} is not a supervisor; expected one of {', '.join(SUPERVISORS)}")
    return s


# --------------------------------------------------------------------------- flags


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


# --------------------------------------------------------------------------- labels


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


def _collect_labels(labels: Mapping[str, str], problems: list[str]):
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
                hint = _suggest(key, [f"{HUB_PREFIX}templates.{name}.{f}" for f in TEMPLATE_FIELDS])
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
    base = dict(flat)
    if "image" not in base and container_image:
        base["image"] = container_image
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
        merged = {**base, **fields}
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


# --------------------------------------------------------------------------- environment


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


# --------------------------------------------------------------------------- build


def _flag(flags: Mapping[str, object], key: str) -> object | None:
    value = flags.get(key)
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return None  # an empty flag (e.g. --docker-socket=${UNSET}) means "not given"
    return value


def _normalize_flags(flags: Mapping[str, object] | None) -> dict[str, object]:
    return {
        str(k).lstrip("-").replace("-", "_"): v for k, v in (flags or {}).items() if v is not None
    }


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


# --------------------------------------------------------------------------- hub.labels.yaml

_LABELS_FILE_KEYS = ("version", "service", "source", "labels", "command", "env_files")


@dataclass(frozen=True)
class LabelsFile:
    """``hub.labels.yaml``: what ``hub install`` keeps of the compose service (see
    docs/configuration.md): its ``rediacc.hub.*`` labels, interpolated ``command`` and env files."""

    labels: Mapping[str, str]
    command: tuple[str, ...] = ()
    service: str = "hub"
    source: Path | None = None  # the compose file it was written from
    env_files: tuple[Path, ...] = ()
    version: int = LABELS_FILE_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", _frozen(self.labels))
        object.__setattr__(self, "command", tuple(self.command))
        object.__setattr__(self, "env_files", tuple(Path(p) for p in self.env_files))

    @classmethod
    def from_compose(cls, service: ComposeService) -> LabelsFile:
        return cls(
            labels=service.hub_labels,
            command=service.command,
            service=service.name,
            source=service.path,
            env_files=service.env_files,
        )


def dump_labels_file(labels_file: LabelsFile, path: Path | str | None = None) -> str:
    """The YAML text of ``labels_file``; also written atomically to ``path`` when given."""
    doc: dict[str, object] = {"version": labels_file.version, "service": labels_file.service}
    if labels_file.source is not None:
        doc["source"] = str(labels_file.source)
    doc["labels"] = {str(k): str(v) for k, v in labels_file.labels.items()}
    doc["command"] = list(labels_file.command)
    doc["env_files"] = [str(p) for p in labels_file.env_files]
    header = (
        "# hub.labels.yaml: the hub's labels and start command, written by `hub install`"
        + (f" from {labels_file.source}" if labels_file.source else "")
        + ".\n# Format: docs/configuration.md. Secrets stay in the env files, never here.\n"
    )
    text = header + yaml.safe_dump(
        doc, sort_keys=False, default_flow_style=False, allow_unicode=True, width=1000
    )
    if path is not None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        # the operator's directory as it is (a link to it included), as hub install's files
        safefs.write_atomic(target, text, mode=0o644, base=target.parent)
    return text


def _labels_file_from_doc(doc: object, path: Path) -> LabelsFile:
    problems: list[str] = []
    if not isinstance(doc, Mapping):
        raise ConfigError(
            f"{path}: not a hub.labels.yaml: expected a mapping with version, service, labels"
        )
    for key in doc:
        if key not in _LABELS_FILE_KEYS:
            problems.append(
                f"{path}: unknown key {key!r}{_suggest(str(key), list(_LABELS_FILE_KEYS))} (keys: {', '.join(_LABELS_FILE_KEYS)})"
            )
    version = doc.get("version")
    if version != LABELS_FILE_VERSION:
        problems.append(
            f"{path}: version {version!r} is not supported; expected version: {LABELS_FILE_VERSION}"
        )
    labels = doc.get("labels")
    if not isinstance(labels, Mapping):
        problems.append(f"{path}: labels must be a mapping of label: value")
        labels = {}
    command = doc.get("command") or []
    if not isinstance(command, list) or not all(isinstance(a, (str, int, float)) for a in command):
        problems.append(
            f"{path}: command must be a list of strings, e.g. [hub, start, --port=7112]"
        )
        command = []
    env_files = doc.get("env_files") or []
    if not isinstance(env_files, list) or not all(isinstance(a, str) for a in env_files):
        problems.append(f"{path}: env_files must be a list of paths")
        env_files = []
    service = doc.get("service", "hub")
    if not isinstance(service, str):
        problems.append(f"{path}: service must be a string")
        service = "hub"
    source = doc.get("source")
    if problems:
        raise ConfigError(problems)
    return LabelsFile(
        labels={
            str(k): "" if v is None else (str(v).lower() if isinstance(v, bool) else str(v))
            for k, v in labels.items()
        },
        command=tuple(str(a) for a in command),
        service=service,
        source=Path(source) if isinstance(source, str) else None,
        env_files=tuple(Path(os.path.normpath(path.parent / p)) for p in env_files),
    )


def load_labels_file(path: Path | str) -> LabelsFile:
    """Read a ``hub.labels.yaml`` (relative ``env_files`` are relative to the file)."""
    path = Path(os.path.normpath(Path(path).absolute()))
    return _labels_file_from_doc(read_yaml(path), path)


# --------------------------------------------------------------------------- load_config


def load_config(
    source: Path | str,
    *,
    env_file: Path | str | None = None,
    service: str | None = None,
    flags: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
    require_oauth: bool = True,
) -> HubConfig:
    """The hub's configuration from a compose file or a ``hub.labels.yaml``.

    Flags come from the service's ``command`` (or the labels file's), overridden by ``flags``.
    Variables come from the env files (the service's ``env_file`` entries or the labels file's
    ``env_files``), then ``env_file``, then ``environ`` (default ``os.environ``), later winning.
    Raises ConfigError listing every problem found.
    """
    path = Path(os.path.normpath(Path(source).absolute()))
    environ = dict(os.environ if environ is None else environ)
    doc = read_yaml(path)
    problems: list[str] = []
    warnings: list[str] = []
    if isinstance(doc, Mapping) and "services" in doc:
        svc = load_compose(path, service=service, env_file=env_file, environ=environ)
        labels, command, env_files, file_env = svc.labels, svc.command, svc.env_files, dict(svc.env)
        service_name: str | None = svc.name
        warnings += svc.warnings
    elif isinstance(doc, Mapping) and "labels" in doc:
        lf = _labels_file_from_doc(doc, path)
        if service is not None and service != lf.service:
            raise ConfigError(
                f"{path}: --service {service}: this labels file is for service {lf.service}"
            )
        labels, command, service_name = lf.labels, lf.command, lf.service
        file_env = {}
        env_files = []
        for entry in lf.env_files:
            if not entry.is_file():
                (warnings if env_file is not None else problems).append(
                    f"{path}: env file {entry} does not exist"
                    + ("" if env_file is not None else "; create it or pass --env-file")
                )
                continue
            try:
                file_env.update(parse_env_file(entry, environ))
            except ConfigError as exc:
                problems.extend(exc.problems)
            env_files.append(entry)
        if env_file is not None:
            explicit = Path(os.path.normpath(Path(env_file).absolute()))
            file_env.update(parse_env_file(explicit, environ))
            env_files.append(explicit)
    else:
        raise ConfigError(
            f"{path}: neither a compose file (no top-level services:) nor a hub.labels.yaml (no labels:)"
        )
    merged_flags = _parse_start_flags(command, problems)
    command_env_file = _flag(merged_flags, "env_file")
    if env_file is None and command_env_file is not None:
        # The file's own `hub start --env-file=...`: what `hub start` would read, so read it too.
        entry = Path(os.path.normpath(path.parent / str(command_env_file)))
        try:
            file_env.update(parse_env_file(entry, environ))
            env_files = [*env_files, entry]
        except ConfigError as exc:
            problems.extend(f"flag --env-file: {p}" for p in exc.problems)
    merged_flags.update(_normalize_flags(flags))
    env = {**file_env, **environ}
    kwargs = _build(labels, merged_flags, env, require_oauth, problems, warnings)
    if problems:
        raise ConfigError(problems)
    config = HubConfig(**kwargs, source=path, service=service_name, env_files=tuple(env_files))
    traefik = {k: v for k, v in labels.items() if k.startswith("traefik.")}
    warnings += traefik_warnings(traefik, config)
    return dataclasses.replace(config, warnings=tuple(warnings))


def traefik_warnings(traefik_labels: Mapping[str, str], config: HubConfig) -> list[str]:
    """Routes the compose file's Traefik labels would not deliver to the hub.

    Only when the service has Traefik labels at all (the seed's shorter examples leave them out):
    a route whose host no router rule names, and a Traefik service aimed at a port other than
    ``--port``.
    """
    if not traefik_labels:
        return []
    warnings = []
    rules = [
        v
        for k, v in traefik_labels.items()
        if re.fullmatch(r"traefik\.http\.routers\.[^.]+\.rule", k)
    ]
    for prefix in config.routes:
        host = f"{prefix}.{config.base_domain}"
        if not any(f"`{host}`" in rule for rule in rules):
            warnings.append(
                f"route {prefix}: no Traefik router rule names {host}; add e.g. "
                f"traefik.http.routers.hub-{prefix}.rule=Host(`{host}`)"
            )
    for key, value in traefik_labels.items():
        m = re.fullmatch(r"traefik\.http\.services\.([^.]+)\.loadbalancer\.server\.port", key)
        if m and value.strip() != str(config.port):
            warnings.append(
                f"label {key}={value}: Traefik would send {m.group(1)}'s traffic to port {value.strip()}, "
                f"but the hub listens on --port {config.port}"
            )
    return warnings


# --------------------------------------------------------------------------- reporting


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
