"""hubcontrol: the hub's control plane as an anyio library.

Per-user dockerd, environment containers from templates, hooks, CRIU checkpoint/restore, audit
streams, stats and garbage collection. Runs embedded in the proxy process (in a thread with its own
event loop) and is importable on its own by automation scripts. It never imports mitmproxy, typer
or rich.
"""

from hubcontrol.config import HubConfig, OAuthConfig, Template
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
    "ConfigError",
    "DaemonError",
    "EnvironmentError_",
    "GCError",
    "HookError",
    "HubConfig",
    "HubError",
    "ImageError",
    "NetworkError",
    "OAuthConfig",
    "PolicyError",
    "Template",
    "UsernameError",
]
