"""``load_config``: the configuration from a compose file or a ``hub.labels.yaml``, its env files,
its command line, the caller's flags and the environment."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path

from hubcontrol.compose import load_compose, parse_env_file, read_yaml
from hubcontrol.config.build import _build
from hubcontrol.config.flags import _flag, _normalize_flags, _parse_start_flags
from hubcontrol.config.labelsfile import _labels_file_from_doc
from hubcontrol.config.model import HubConfig
from hubcontrol.errors import ConfigError


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
        labels, command, file_env = svc.labels, svc.command, dict(svc.env)
        env_files = list(svc.env_files)
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
