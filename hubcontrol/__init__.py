"""hubcontrol: the hub's control plane as an anyio library.

Per-user dockerd, environment containers from templates, hooks, CRIU checkpoint/restore, audit
streams, stats and garbage collection. Runs embedded in the proxy process (in a thread with its own
event loop) and is importable on its own by automation scripts. It never imports mitmproxy, typer
or rich.
"""

from hubcontrol.config import (
    ComposeService,
    HubConfig,
    LabelsFile,
    OAuthConfig,
    Template,
    build_config,
    config_as_dict,
    dump_labels_file,
    load_compose,
    load_config,
    load_labels_file,
    parse_cpu_quota,
    parse_duration,
    parse_size,
    parse_start_flags,
)
from hubcontrol.errors import (
    CheckpointError,
    ConfigError,
    DaemonError,
    EnvironmentError_,
    GCError,
    HookError,
    HubError,
    ImageError,
    NetworkError,
    PolicyError,
    UsernameError,
)

__all__ = [
    "CheckpointError",
    "ComposeService",
    "ConfigError",
    "DaemonError",
    "EnvironmentError_",
    "GCError",
    "HookError",
    "HubConfig",
    "HubError",
    "ImageError",
    "LabelsFile",
    "NetworkError",
    "OAuthConfig",
    "PolicyError",
    "Template",
    "UsernameError",
    "build_config",
    "config_as_dict",
    "dump_labels_file",
    "load_compose",
    "load_config",
    "load_labels_file",
    "parse_cpu_quota",
    "parse_duration",
    "parse_size",
    "parse_start_flags",
]
