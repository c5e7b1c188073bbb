"""Host artefacts for ``hub install`` / ``hub uninstall``: the systemd unit, the labels file, the
environment file and the Traefik file-provider routes, rendered from the hub's compose service.

Rendering is pure (``render_unit``, ``render_traefik``, ``render_env_file``, ``plan_install``);
``write_artefacts`` and ``remove_artefacts`` touch the filesystem under a root prefix, and only
``systemctl`` talks to systemd. Nothing here prints: the CLI reports what these return.

Decisions (docs/operations.md explains them to operators):

* Secrets: the service's ``env_file`` entries are parsed as compose parses them and written,
  merged and re-quoted for systemd, to ``/etc/rediacc/hub/hub.env`` (mode 0600, root). Compose
  and systemd disagree on env-file syntax (interpolation, escapes), so pointing
  ``EnvironmentFile=`` at the repo's ``hub/.env`` would read some secrets differently, and the
  copy cannot be world-readable however the repo's file is. Re-run ``hub install`` after editing
  ``hub/.env``.
* The unit runs the service's ``command:`` with the absolute path of the ``hub`` executable and
  ``--labels /etc/rediacc/hub/hub.labels.yaml``; ``KillMode=process`` so a hub restart or upgrade
  never takes per-user daemons down with it (they live in their own units or cgroups and are
  adopted by the next hub).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from hubcontrol import safefs
from hubcontrol.config import DEFAULT_LABELS_FILE, DEFAULT_PORT, LabelsFile, dump_labels_file
from hubcontrol.errors import ConfigError, InstallError

UNIT_NAME = "rediacc-hub.service"
UNIT_PATH = Path("/etc/systemd/system") / UNIT_NAME
LABELS_PATH = DEFAULT_LABELS_FILE
ENV_PATH = Path("/etc/rediacc/hub/hub.env")
# The hub service's CPUWeight= (systemd's default for every unit: 100). Three times, as a hub
# without systemd moves its own session's group ahead (hubproxy/server/priority.py).
HUB_CPU_WEIGHT = 300
TRAEFIK_PATH = Path("/opt/rediacc/proxy/traefik/dynamic/rediacc-hub.yaml")
GC_NAME = "rediacc-hub-gc"
GC_SERVICE_PATH = Path("/etc/systemd/system") / f"{GC_NAME}.service"
GC_TIMER_PATH = Path("/etc/systemd/system") / f"{GC_NAME}.timer"
GC_PATHS = (GC_SERVICE_PATH, GC_TIMER_PATH)
ALL_PATHS = (UNIT_PATH, LABELS_PATH, ENV_PATH, TRAEFIK_PATH, *GC_PATHS)
DEFAULT_UPSTREAM_HOST = "127.0.0.1"
HUB_EXECUTABLES = ("hub", "hubcli")


@dataclass(frozen=True)
class Artefact:
    """One file ``hub install`` owns: where it goes (absolute, without the root prefix) and what
    it holds."""

    path: Path
    content: str
    mode: int
    what: str  # for a person: "systemd unit", ...
    secret: bool = False  # never print ``content``

    def under(self, root: Path) -> Path:
        return under_root(root, self.path)


def under_root(root: Path, path: Path) -> Path:
    return Path(root) / path.relative_to("/")


# ------------------------------------------------------------------------------------ systemd unit

_SAFE_ARG = re.compile(r"[A-Za-z0-9_@+=:,./-]+")


def systemd_quote(arg: str) -> str:
    """Quote one command-line argument for ``ExecStart=`` (systemd.service(5), "Command lines").

    ``%`` and ``$`` are doubled so systemd neither expands specifiers nor variables: the hub gets
    exactly the argument compose would have passed.
    """
    escaped = arg.replace("%", "%%").replace("$", "$$")
    if escaped and _SAFE_ARG.fullmatch(escaped):
        return escaped
    escaped = (
        escaped.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    )
    return f'"{escaped}"'


def exec_start_argv(
    command: Sequence[str], *, hub_exe: str, labels_path: Path = LABELS_PATH
) -> list[str]:
    """The hub's command with an absolute executable and ``--labels`` pointing at the labels file.

    An existing ``--labels`` is replaced: the unit always reads the file ``hub install`` wrote.
    """
    if not command:
        raise ConfigError(
            "the hub's service has no command:; give it the seed's `command: [hub, start, ...]`"
        )
    exe, *args = command
    if exe in HUB_EXECUTABLES:
        exe = hub_exe
    elif not os.path.isabs(exe):
        found = shutil.which(exe)
        if not found:
            raise ConfigError(
                f"command: {exe!r} is not an absolute path and not on PATH; use `hub` or an absolute path"
            )
        exe = found
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == "--labels":
            skip = True
            continue
        if arg.startswith("--labels="):
            continue
        kept.append(arg)
    return [exe, *kept, "--labels", str(labels_path)]


def render_unit(
    argv: Sequence[str],
    *,
    env_file: Path | None = ENV_PATH,
    source: str | None = None,
) -> str:
    """The text of ``rediacc-hub.service`` running ``argv``."""
    header = "# Generated by `hub install`"
    header += f" from {source}" if source else ""
    lines = [
        header + ". Do not edit: change the compose file",
        "# or its env_file and run `hub install` again (see docs/operations.md).",
        "[Unit]",
        "Description=Rediacc Hub: per-user environments behind OAuth2",
        "Wants=network-online.target",
        "After=network-online.target docker.service",
        "",
        "[Service]",
        "Type=simple",
        # Runs as root: it starts per-user dockerd, bridges, iptables rules and mounts.
        "User=root",
        f"EnvironmentFile={env_file}" if env_file else None,
        "Environment=PYTHONUNBUFFERED=1",
        "ExecStart=" + " ".join(systemd_quote(a) for a in argv),
        "Restart=on-failure",
        "RestartSec=2s",
        "# Stop only the hub: per-user daemons live in their own units or cgroups and are adopted",
        "# by the next hub, so a restart or upgrade never stops a user's environment.",
        "KillMode=process",
        "TimeoutStopSec=30s",
        "LimitNOFILE=1048576",
        "# Every user's every request goes through this one process: when the host is busy it",
        "# gets three times another service's CPU share (users together: rediacc.slice, 20).",
        f"CPUWeight={HUB_CPU_WEIGHT}",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(line for line in lines if line is not None)


def render_gc_units(hub_exe: str, workspace_dir: Path, max_age: str) -> tuple[str, str]:
    """The seed's GC service and timer (docs/operations.md), running ``hub gc`` daily."""
    argv = [hub_exe, "gc", str(workspace_dir), f"--max-age={max_age}"]
    service = "\n".join(
        [
            "# Generated by `hub install --gc-timer`; removed by `hub uninstall`.",
            "[Unit]",
            "Description=Rediacc Hub data-root GC",
            "After=local-fs.target",
            "",
            "[Service]",
            "Type=oneshot",
            "ExecStart=" + " ".join(systemd_quote(a) for a in argv),
            "",
        ]
    )
    timer = "\n".join(
        [
            "# Generated by `hub install --gc-timer`; removed by `hub uninstall`.",
            "[Unit]",
            "Description=Daily Rediacc Hub GC",
            "",
            "[Timer]",
            "OnCalendar=daily",
            "RandomizedDelaySec=1h",
            "Persistent=true",
            "",
            "[Install]",
            "WantedBy=timers.target",
            "",
        ]
    )
    return service, timer


# ------------------------------------------------------------------------------------ env file

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def render_env_file(values: Mapping[str, str], *, source: Sequence[Path] = ()) -> str:
    """An ``EnvironmentFile=`` for systemd holding exactly ``values``.

    The file is read twice: by systemd (``EnvironmentFile=``) and by the configuration loader
    (compose syntax, through ``hub.labels.yaml``'s ``env_files``), so it is written in the syntax
    both read alike: single quotes (literal for both, newlines included), or for a value holding a
    single quote, double quotes with ``\\`` and ``"`` escaped. A value with both a single quote
    and ``$`` has no common spelling and is refused.
    """
    out = [
        "# Generated by `hub install`" + (f" from {', '.join(map(str, source))}" if source else "")
    ]
    out.append(
        "# Secrets: keep this file root-only (0600). Edit the source and re-run `hub install`."
    )
    for key, value in values.items():
        if not _ENV_NAME.fullmatch(key):
            raise ConfigError(
                f"env file variable {key!r} is not a valid environment variable name for systemd; "
                "use letters, digits and underscores"
            )
        if "\0" in value:
            raise ConfigError(f"env file variable {key} contains a NUL byte")
        if "'" not in value:
            out.append(f"{key}='{value}'")
        elif "$" in value:
            raise ConfigError(
                f"env file variable {key} holds both ' and $, which systemd and compose read "
                "differently; change the value (e.g. a secret without quotes)"
            )
        else:
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            out.append(f'{key}="{escaped}"')
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------ Traefik

# Traefik's label keys are case-insensitive; its file provider documents camelCase. Keys not
# listed here are passed through as written (header names, plugin options).
_CANONICAL = {
    k.lower(): k
    for k in (
        "routers services middlewares serversTransports entryPoints rule ruleSyntax service "
        "priority tls certResolver options domains main sans loadBalancer servers url port scheme "
        "passHostHeader healthCheck sticky cookie serversTransport responseForwarding "
        "flushInterval observability accessLogs metrics tracing weighted mirroring failover "
        "redirectScheme redirectRegex stripPrefix stripPrefixRegex addPrefix basicAuth digestAuth "
        "forwardAuth headers ipWhiteList ipAllowList rateLimit inFlightReq buffering chain "
        "circuitBreaker compress errors retry replacePath replacePathRegex passTLSClientCert "
        "contentType permanent prefixes regex replacement users usersFile realm removeHeader "
        "headerField address trustForwardHeader authResponseHeaders authRequestHeaders "
        "customRequestHeaders customResponseHeaders sourceRange ipStrategy depth excludedIPs "
        "average burst period amount attempts initialInterval sslRedirect stsSeconds "
        "stsIncludeSubdomains stsPreload forceSTSHeader frameDeny contentTypeNosniff "
        "browserXssFilter referrerPolicy contentSecurityPolicy accessControlAllowMethods "
        "accessControlAllowOriginList accessControlAllowHeaders accessControlExposeHeaders "
        "accessControlMaxAge accessControlAllowCredentials addVaryHeader hostsProxyHeaders "
        "allowedHosts status query forceSlash path interval timeout hostname followRedirects "
        "name secure httpOnly sameSite maxAge insecureSkipVerify"
    ).split()
}
_LISTS = {
    "entryPoints", "middlewares", "sans", "prefixes", "users", "sourceRange",
    "excludedIPs", "authResponseHeaders", "authRequestHeaders", "accessControlAllowMethods",
    "accessControlAllowOriginList", "accessControlAllowHeaders", "accessControlExposeHeaders",
    "hostsProxyHeaders", "allowedHosts", "status",
}  # fmt: skip
_FREE_KEYS = {"customRequestHeaders", "customResponseHeaders", "sslProxyHeaders"}
_INTS = {
    "priority",
    "port",
    "average",
    "burst",
    "amount",
    "attempts",
    "depth",
    "stsSeconds",
    "accessControlMaxAge",
    "maxAge",
}
_BOOLS = {
    "passHostHeader", "permanent", "trustForwardHeader", "sslRedirect", "stsIncludeSubdomains",
    "stsPreload", "forceSTSHeader", "frameDeny", "contentTypeNosniff", "browserXssFilter",
    "accessControlAllowCredentials", "addVaryHeader", "removeHeader", "forceSlash",
    "followRedirects", "secure", "httpOnly", "insecureSkipVerify", "accessLogs", "metrics", "tracing",
}  # fmt: skip
_INDEXED = re.compile(r"^(.+)\[(\d+)\]$")
_TRAEFIK_NAME = re.compile(r"[A-Za-z0-9_.@-]+")


def _typed(key: str, value: str, label: str) -> Any:
    if key in _LISTS:
        return [v.strip() for v in value.split(",") if v.strip()]
    if key in _INTS:
        if not value.strip().isdecimal():
            raise ConfigError(f"label {label}={value!r}: {key} must be a whole number")
        return int(value)
    if key in _BOOLS:
        low = value.strip().lower()
        if low not in ("true", "false"):
            raise ConfigError(f"label {label}={value!r}: {key} must be true or false")
        return low == "true"
    return value


def _insert(tree: dict[str, Any], parts: list[str], value: str, label: str) -> None:
    node: Any = tree
    free = False
    for i, raw in enumerate(parts):
        last = i == len(parts) - 1
        index = None
        m = _INDEXED.match(raw)
        if m:
            raw, index = m.group(1), int(m.group(2))
        key = raw if free else _CANONICAL.get(raw.lower(), raw)
        free = free or key in _FREE_KEYS
        if index is not None:
            seq = node.setdefault(key, [])
            if not isinstance(seq, list):
                raise ConfigError(f"label {label}: {key} is both a list and a value")
            while len(seq) <= index:
                seq.append({})
            if last:
                seq[index] = value
                return
            node = seq[index]
            continue
        if last:
            if key in node and isinstance(node[key], dict) and node[key]:
                raise ConfigError(f"label {label}: {key} is set both as a value and as a section")
            if key == "tls" and value.strip().lower() == "true":
                node.setdefault("tls", {})
                return
            if key == "tls" and value.strip().lower() == "false":
                return
            node[key] = value if free else _typed(key, value, label)
            return
        child = node.get(key)
        if child is None or (key == "tls" and child == {}):
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"label {label}: {key} is set both as a value and as a section")
        node = child


def render_traefik(
    labels: Mapping[str, str],
    *,
    upstream_host: str = DEFAULT_UPSTREAM_HOST,
    hub_port: int = DEFAULT_PORT,
) -> dict[str, Any]:
    """Traefik file-provider configuration (v2 and v3) from ``traefik.*`` compose labels.

    Routers, middlewares and services under ``traefik.http.*`` and ``traefik.tcp.*`` are
    translated the way Traefik's docker provider reads them: ``loadbalancer.server.port`` becomes a
    server ``url`` (``address`` for TCP) at ``upstream_host``; a router without ``service`` uses
    the service of the same name, else the only one; with no service at all, one named
    ``rediacc-hub`` at ``hub_port`` is made. Label keys are case-insensitive; output is camelCase.
    """
    trees: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for label in sorted(labels):
        value = labels[label]
        parts = label.split(".")
        if (len(parts) == 2 and parts[1].lower() == "enable") or parts[1:2] == ["docker"]:
            continue  # docker-provider settings; meaningless for the file provider
        if len(parts) < 5 or parts[1].lower() not in ("http", "tcp", "udp"):
            problems.append(
                f"label {label}: not a Traefik router, service or middleware label "
                "(traefik.http.routers.<name>.<option>=...)"
            )
            continue
        proto = parts[1].lower()
        section = _CANONICAL.get(parts[2].lower(), parts[2])
        if section not in ("routers", "services", "middlewares", "serversTransports"):
            problems.append(
                f"label {label}: unknown section {parts[2]!r}; use routers, services or middlewares"
            )
            continue
        name = parts[3]
        if not _TRAEFIK_NAME.fullmatch(name):
            problems.append(f"label {label}: {name!r} is not a valid Traefik name")
            continue
        tree = trees.setdefault(proto, {})
        obj = tree.setdefault(section, {}).setdefault(name, {})
        rest = parts[4:]
        if section == "services":
            rest_l = [p.lower() for p in rest]
            if rest_l[:2] == ["loadbalancer", "server"] and len(rest) == 3:
                obj.setdefault("_server", {})[rest_l[2]] = value
                continue
        try:
            _insert(obj, rest, value, label)
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)

    for proto, tree in trees.items():
        services = tree.setdefault("services", {})
        for name, svc in services.items():
            server = svc.pop("_server", None)
            if server is None:
                continue
            lb = svc.setdefault("loadBalancer", {})
            if "url" in server:
                lb["servers"] = [{"url": server["url"]}]
                continue
            port = server.get("port", str(hub_port))
            if not port.isdecimal() or not 0 < int(port) < 65536:
                raise ConfigError(
                    f"label traefik.{proto}.services.{name}.loadbalancer.server.port={port!r}: "
                    "must be a port number 1-65535"
                )
            if proto == "http":
                scheme = server.get("scheme", "http")
                lb["servers"] = [{"url": f"{scheme}://{upstream_host}:{port}"}]
            else:
                lb["servers"] = [{"address": f"{upstream_host}:{port}"}]
        for name, router in tree.get("routers", {}).items():
            if "service" in router:
                continue
            if name in services:
                router["service"] = name
            elif len(services) == 1:
                router["service"] = next(iter(services))
            elif not services:
                services["rediacc-hub"] = {
                    "loadBalancer": {"servers": [{"url": f"http://{upstream_host}:{hub_port}"}]}
                }
                router["service"] = "rediacc-hub"
            else:
                raise ConfigError(
                    f"Traefik router {name!r} names no service and there are several "
                    f"({', '.join(sorted(services))}); add traefik.{proto}.routers.{name}.service=<name>"
                )
        for name, router in tree.get("routers", {}).items():
            if router["service"] not in services and "@" not in router["service"]:
                raise ConfigError(
                    f"Traefik router {name!r} uses service {router['service']!r}, which no label defines"
                )
            if proto == "http" and "rule" not in router:
                raise ConfigError(
                    f"Traefik router {name!r} has no rule; add traefik.http.routers.{name}.rule=Host(`...`)"
                )
        if not tree["services"]:
            del tree["services"]
    return trees


def render_traefik_file(config: Mapping[str, Any], *, source: str | None = None) -> str:
    header = "# Generated by `hub install`" + (f" from {source}" if source else "")
    header += ". Traefik's file provider reloads it on change.\n"
    if not config:
        return header + "{}\n"
    return header + yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=False)


# ------------------------------------------------------------------------------------ plan


def hub_port_of(argv: Sequence[str]) -> int:
    """The ``--port`` in the hub's command (the seed's ``--port=7112``), else the default."""
    for i, arg in enumerate(argv):
        value = None
        if arg.startswith("--port="):
            value = arg.split("=", 1)[1]
        elif arg == "--port" and i + 1 < len(argv):
            value = argv[i + 1]
        if value is not None:
            if not value.isdecimal() or not 0 < int(value) < 65536:
                raise ConfigError(f"command: --port={value!r} must be a port number 1-65535")
            return int(value)
    return DEFAULT_PORT


def render_labels_file(service: Any) -> str:
    """``hub.labels.yaml`` (``hubcontrol.config.LabelsFile``) for a compose service.

    Its ``env_files`` name the installed ``hub.env``, not the repo's files: the installed hub must
    not depend on the checkout, and ``hub config check /etc/rediacc/hub/hub.labels.yaml`` then
    sees what the unit sees.
    """
    labels_file = replace(LabelsFile.from_compose(service), env_files=(ENV_PATH,))
    return dump_labels_file(labels_file)


_HOST_RULE = re.compile(r"\bHost\(([^)]*)\)")  # v2 allows Host(`a`, `b`)
_BACKQUOTED = re.compile(r"`([^`]*)`")


def route_warnings(
    route_prefixes: Sequence[str], traefik: Mapping[str, Any], hub_port: int
) -> list[str]:
    """Mistakes Traefik would not report: a hub route no router sends to the hub, a router that
    sends to a port the hub does not listen on."""
    warnings = []
    http = traefik.get("http", {})
    hosts = [
        host
        for router in http.get("routers", {}).values()
        for args in _HOST_RULE.findall(str(router.get("rule", "")))
        for host in _BACKQUOTED.findall(args)
    ]
    for prefix in route_prefixes:
        if not any(host.startswith(f"{prefix}.") for host in hosts):
            warnings.append(
                f"route {prefix!r} (rediacc.hub.route.{prefix}) has no Traefik router with "
                f"Host(`{prefix}.<domain>`): add traefik.http.routers.hub-{prefix}.* labels, or "
                "route it to the hub's port another way"
            )
    for name, service in http.get("services", {}).items():
        for server in service.get("loadBalancer", {}).get("servers", []):
            url = str(server.get("url", ""))
            port = url.rsplit(":", 1)[-1].split("/")[0]
            if port.isdecimal() and int(port) != hub_port:
                warnings.append(
                    f"Traefik service {name!r} sends to {url}, but the hub listens on --port={hub_port}"
                )
    return warnings


@dataclass(frozen=True)
class InstallPlan:
    """What ``hub install`` writes, what it removes (files an earlier install wrote that this
    configuration no longer needs) and what looks wrong without being an error."""

    artefacts: tuple[Artefact, ...]
    remove: tuple[Path, ...] = ()
    warnings: tuple[str, ...] = ()


def plan_install(
    service: Any,
    *,
    hub_exe: str,
    upstream_host: str = DEFAULT_UPSTREAM_HOST,
    gc_timer: bool | None = None,
    gc_max_age: str = "30d",
    workspace_dir: Path | None = None,
) -> InstallPlan:
    """Every artefact for a loaded compose service (``hubcontrol.compose.ComposeService``).

    ``gc_timer``: True writes the GC service and timer for ``workspace_dir``, False removes them,
    None leaves whatever an earlier install did. Refuses a command with unset variables: compose would substitute empty strings, and the
    unit would keep them (``--workspace-dir=/devbox/workspaces``) long after the shell is gone.
    """
    unset = [w for w in service.warnings if "is not set" in w and "(in command:" in w]
    if unset:
        raise ConfigError(
            [
                f"{w.split(';')[0]}, but the hub's command uses it ({w.split('(in ', 1)[-1].rstrip(')')}); "
                "set it in the environment of `hub install` or in the env_file, or write the value "
                "into the compose file"
                for w in unset
            ]
        )
    source = f"{service.path} (service {service.name})"
    argv = exec_start_argv(service.command, hub_exe=hub_exe)
    hub_port = hub_port_of(argv)
    unit = render_unit(argv, env_file=ENV_PATH, source=source)
    traefik = render_traefik(service.traefik_labels, upstream_host=upstream_host, hub_port=hub_port)
    prefixes = [
        k.removeprefix("rediacc.hub.route.")
        for k in service.hub_labels
        if k.startswith("rediacc.hub.route.")
    ]
    artefacts = [
        Artefact(UNIT_PATH, unit, 0o644, "systemd unit"),
        Artefact(
            ENV_PATH,
            render_env_file(dict(service.env), source=service.env_files),
            0o600,
            "environment (secrets)",
            secret=True,
        ),
        Artefact(LABELS_PATH, render_labels_file(service), 0o644, "template labels"),
    ]
    remove: list[Path] = []
    if traefik:
        artefacts.append(
            Artefact(
                TRAEFIK_PATH, render_traefik_file(traefik, source=source), 0o644, "Traefik routes"
            )
        )
    else:
        remove.append(TRAEFIK_PATH)  # routes from an earlier install would point at nothing now
    if gc_timer:
        if workspace_dir is None:
            raise ConfigError("--gc-timer needs the hub's --workspace-dir")
        gc_service, gc_timer_text = render_gc_units(hub_exe, workspace_dir, gc_max_age)
        artefacts.append(Artefact(GC_SERVICE_PATH, gc_service, 0o644, "GC service"))
        artefacts.append(Artefact(GC_TIMER_PATH, gc_timer_text, 0o644, "GC timer"))
    elif gc_timer is False:
        remove.extend(GC_PATHS)
    return InstallPlan(
        tuple(artefacts),
        tuple(remove),
        tuple(route_warnings(prefixes, traefik, hub_port)),
    )


# ------------------------------------------------------------------------------------ apply


@dataclass(frozen=True)
class Change:
    path: Path  # as written, root prefix included
    status: str  # created | updated | unchanged | removed | absent


def _write_if_changed(target: Path, content: str, mode: int) -> str:
    data = content.encode("utf-8")
    try:
        st = target.lstat()
        if target.is_symlink() or not target.is_file():
            raise InstallError(
                f"{target} exists and is not a regular file; move it away and run hub install again"
            )
        if (
            target.read_bytes() == data
            and (st.st_mode & 0o7777) == mode
            and st.st_uid == os.geteuid()
        ):
            return "unchanged"
        status = "updated"
    except FileNotFoundError:
        status = "created"
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    # Secrets are born with their final mode: write_atomic's temp file is created 0600 and
    # given ``mode`` before the rename, so the content is never readable by others, not even for
    # a moment. ``base``: the operator's directory is used as it is, a link to it included.
    safefs.write_atomic(target, data, mode=mode, base=target.parent, fsync=True)
    return status


def write_artefacts(artefacts: Sequence[Artefact], root: Path = Path("/")) -> list[Change]:
    """Write each artefact under ``root`` when its content or mode differs; never touch others."""
    changes = []
    for art in artefacts:
        target = art.under(root)
        try:
            status = _write_if_changed(target, art.content, art.mode)
        except OSError as exc:
            raise InstallError(f"cannot write {target}: {exc.strerror or exc}", repr(exc)) from exc
        changes.append(Change(target, status))
    return changes


def remove_artefacts(paths: Sequence[Path] = ALL_PATHS, root: Path = Path("/")) -> list[Change]:
    """Remove ``hub install``'s files under ``root`` and the directories it made, if empty."""
    changes = []
    for path in paths:
        target = under_root(root, path)
        try:
            target.unlink()
            changes.append(Change(target, "removed"))
        except FileNotFoundError:
            changes.append(Change(target, "absent"))
        except OSError as exc:
            raise InstallError(f"cannot remove {target}: {exc.strerror or exc}", repr(exc)) from exc
        # Enablement links (``*.wants/<unit>``) would dangle; systemctl disable removes them where
        # systemd runs, this covers --root and hosts where it was never called.
        if path.parent == UNIT_PATH.parent and target.parent.is_dir():
            for wants in target.parent.iterdir():  # glob() skips dangling links
                link = wants / path.name
                if wants.name.endswith(".wants") and link.is_symlink():
                    link.unlink()
    for d in (LABELS_PATH.parent,):
        target = under_root(root, d)
        try:
            target.rmdir()
        except OSError:
            pass  # not empty (an operator's own file) or already gone
    return changes


# ------------------------------------------------------------------------------------ systemd


def systemd_running(root: Path = Path("/")) -> bool:
    """True when ``root`` is this host's ``/`` and PID 1 is systemd (``sd_booted()``'s test)."""
    return Path(root).resolve() == Path("/") and os.path.isdir("/run/systemd/system")


def install_commands(changes: Sequence[Change]) -> list[list[str]]:
    """The systemctl calls that make systemd run what was written (after ``stop_commands``)."""
    cmds = [["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", UNIT_NAME]]
    hub_files = {UNIT_PATH.name, LABELS_PATH.name, ENV_PATH.name}
    if any(c.status == "updated" and c.path.name in hub_files for c in changes):
        # enable --now does not restart a running unit; user environments survive the restart.
        cmds.append(["systemctl", "try-restart", UNIT_NAME])
    if any(c.path.name == GC_TIMER_PATH.name and c.status != "removed" for c in changes):
        cmds.append(["systemctl", "enable", "--now", GC_TIMER_PATH.name])
    return cmds


def stop_commands(plan: InstallPlan, root: Path = Path("/")) -> list[list[str]]:
    """systemctl calls needed before ``plan.remove`` deletes unit files (a unit whose file is gone
    can no longer be disabled)."""
    if GC_TIMER_PATH in plan.remove and under_root(root, GC_TIMER_PATH).exists():
        return [["systemctl", "disable", "--now", GC_TIMER_PATH.name]]
    return []


def offline_enable_command(root: Path, changes: Sequence[Change]) -> list[str] | None:
    """``systemctl --root=ROOT enable ...`` for the units written: makes them start at the next
    boot where systemd does not run now (an image being built, a container); None without
    systemctl."""
    systemctl = shutil.which("systemctl")
    if systemctl is None:
        return None
    units = [UNIT_NAME]
    if any(c.path.name == GC_TIMER_PATH.name and c.status != "removed" for c in changes):
        units.append(GC_TIMER_PATH.name)
    return [systemctl, f"--root={Path(root).resolve()}", "enable", *units]


UNINSTALL_STOP = [
    ["systemctl", "disable", "--now", UNIT_NAME],
    ["systemctl", "disable", "--now", GC_TIMER_PATH.name],
]
UNINSTALL_RELOAD = [["systemctl", "daemon-reload"]]


def run_systemctl(cmds: Sequence[Sequence[str]]) -> None:
    for cmd in cmds:
        res = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise InstallError(
                f"`{' '.join(cmd)}` failed: {res.stderr.strip() or res.stdout.strip()}",
                f"{cmd} exited {res.returncode}: {res.stderr}",
            )
