"""The hub's configuration model: typed, immutable, shared by the proxy, the control plane and the CLI.

The *types* (``hubcontrol.config.model``) are the contract every other module codes against.
Loading them from a compose file, a ``hub.labels.yaml``, ``hub start`` flags and the environment
lives beside them, one module per source:

- ``load_config(path, ...)`` (``load``): a compose file or a ``hub.labels.yaml`` plus flags and
  environment;
- ``build_config(labels, flags, environ)`` (``build``): the pure core, collecting every problem
  into one ``ConfigError`` whose messages name the label, flag or variable, the bad value and the
  fix; it reads ``labels``, ``flags`` and ``environ`` for each source's rules;
- ``parse_start_flags(argv)`` (``flags``), ``load_labels_file`` / ``dump_labels_file``
  (``labelsfile``, the file ``hub install`` writes), ``config_as_dict`` (``report``),
  ``load_compose`` (in ``hubcontrol.compose``), and the value parsers (``values``; durations,
  sizes and CPU quotas in ``hubcontrol.durations``).

docs/configuration.md is the operator's reference for every label, flag and variable.
"""

from __future__ import annotations

from hubcontrol.compose import ComposeService, load_compose, parse_env_file
from hubcontrol.config.build import build_config
from hubcontrol.config.environ import (
    ENV_VARIABLES,
    MIN_SESSION_SECRET_BYTES,
    OAUTH_REQUIRED,
    SECRET_VARIABLES,
    session_secret_bytes,
)
from hubcontrol.config.flags import START_FLAGS, StartFlag, parse_start_flags
from hubcontrol.config.labels import DOCKER_MODES, HUB_PREFIX, TEMPLATE_FIELDS
from hubcontrol.config.labelsfile import (
    LABELS_FILE_VERSION,
    LabelsFile,
    dump_labels_file,
    load_labels_file,
)
from hubcontrol.config.load import load_config, traefik_warnings
from hubcontrol.config.model import (
    DEFAULT_AUDIT_DIR,
    DEFAULT_DOCKER_SOCKET,
    DEFAULT_LABELS_FILE,
    DEFAULT_PORT,
    DEFAULT_SHM_SIZE,
    DEFAULT_STATE_DIR,
    DEFAULT_TEMPLATE_NAME,
    DEFAULT_USER,
    DEFAULT_USER_SUBNET_POOL,
    DEFAULT_WORKSPACE,
    MODES,
    USER_NETWORK_ID_BASE,
    USER_NETWORK_ID_STEP,
    HubConfig,
    OAuthConfig,
    Template,
)
from hubcontrol.config.report import REDACTED, config_as_dict
from hubcontrol.config.values import (
    MAX_WORKERS,
    SUPERVISORS,
    parse_bool,
    parse_docker_socket,
    parse_domain,
    parse_port,
    parse_route_prefix,
    parse_workers,
)
from hubcontrol.durations import (
    format_duration,
    parse_cpu_quota,
    parse_duration,
    parse_memory_max,
    parse_size,
)

__all__ = [
    "DEFAULT_AUDIT_DIR",
    "DEFAULT_DOCKER_SOCKET",
    "DEFAULT_LABELS_FILE",
    "DEFAULT_PORT",
    "DEFAULT_SHM_SIZE",
    "DEFAULT_STATE_DIR",
    "DEFAULT_TEMPLATE_NAME",
    "DEFAULT_USER",
    "DEFAULT_USER_SUBNET_POOL",
    "DEFAULT_WORKSPACE",
    "DOCKER_MODES",
    "ENV_VARIABLES",
    "HUB_PREFIX",
    "LABELS_FILE_VERSION",
    "MAX_WORKERS",
    "MIN_SESSION_SECRET_BYTES",
    "MODES",
    "OAUTH_REQUIRED",
    "REDACTED",
    "SECRET_VARIABLES",
    "START_FLAGS",
    "SUPERVISORS",
    "TEMPLATE_FIELDS",
    "USER_NETWORK_ID_BASE",
    "USER_NETWORK_ID_STEP",
    "ComposeService",
    "HubConfig",
    "LabelsFile",
    "OAuthConfig",
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
    "parse_docker_socket",
    "parse_domain",
    "parse_duration",
    "parse_env_file",
    "parse_memory_max",
    "parse_port",
    "parse_route_prefix",
    "parse_size",
    "parse_start_flags",
    "parse_workers",
    "session_secret_bytes",
    "traefik_warnings",
]
