"""hubcontrol: the hub's control plane as an anyio library.

Per-user dockerd, environment containers from templates, hooks, CRIU checkpoint/restore, audit
streams, stats and garbage collection. Runs embedded in the proxy process (in a thread with its own
event loop) and is importable on its own by automation scripts. It never imports mitmproxy, typer
or rich.

The public names below are imported on first use (PEP 562, as anyio and httpx keep ``import``
cheap): ``import hubcontrol`` loads nothing else, and importing a submodule loads only what that
submodule needs. The per-user processes rely on it: ``python -m hubcontrol.policysocket`` and
``python -m hubcontrol.du`` must not load docker-py, httpx or yaml, nor the Hub.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it
_EXPORTS = {
    "AuditManager": "hubcontrol.audit",
    "AuditStream": "hubcontrol.audit",
    "AuditLog": "hubcontrol.auditlog",
    "follow_audit_log": "hubcontrol.auditlog",
    "read_audit_log": "hubcontrol.auditlog",
    "CheckpointHealth": "hubcontrol.checkpoint",
    "CheckpointTarget": "hubcontrol.checkpoint",
    "Checkpointer": "hubcontrol.checkpoint",
    "CriuCheckpointer": "hubcontrol.checkpoint",
    "RecreateCheckpointer": "hubcontrol.checkpoint",
    "make_checkpointer": "hubcontrol.checkpoint",
    "ComposeService": "hubcontrol.config",
    "DEFAULT_LABELS_FILE": "hubcontrol.config",
    "HubConfig": "hubcontrol.config",
    "LabelsFile": "hubcontrol.config",
    "OAuthConfig": "hubcontrol.config",
    "START_FLAGS": "hubcontrol.config",
    "Template": "hubcontrol.config",
    "build_config": "hubcontrol.config",
    "config_as_dict": "hubcontrol.config",
    "dump_labels_file": "hubcontrol.config",
    "load_compose": "hubcontrol.config",
    "load_config": "hubcontrol.config",
    "load_labels_file": "hubcontrol.config",
    "parse_cpu_quota": "hubcontrol.config",
    "parse_duration": "hubcontrol.config",
    "parse_size": "hubcontrol.config",
    "parse_start_flags": "hubcontrol.config",
    "SyncHub": "hubcontrol.embed",
    "embedded": "hubcontrol.embed",
    "Environment": "hubcontrol.environment",
    "AuditError": "hubcontrol.errors",
    "CheckpointError": "hubcontrol.errors",
    "ConfigError": "hubcontrol.errors",
    "DaemonError": "hubcontrol.errors",
    "EnvironmentError_": "hubcontrol.errors",
    "GCError": "hubcontrol.errors",
    "HookError": "hubcontrol.errors",
    "HubError": "hubcontrol.errors",
    "ImageError": "hubcontrol.errors",
    "NetworkError": "hubcontrol.errors",
    "PolicyError": "hubcontrol.errors",
    "UsernameError": "hubcontrol.errors",
    "GCEntry": "hubcontrol.gc",
    "GCPlan": "hubcontrol.gc",
    "apply_gc": "hubcontrol.gc",
    "plan_gc": "hubcontrol.gc",
    "EnvironmentStatus": "hubcontrol.hub",
    "Hub": "hubcontrol.hub",
    "Progress": "hubcontrol.hub",
    "Route": "hubcontrol.hub",
    "RouteTable": "hubcontrol.hub",
    "STATES": "hubcontrol.hub",
    "Decision": "hubcontrol.idle",
    "IdleCuller": "hubcontrol.idle",
    "IdleFacts": "hubcontrol.idle",
    "checkpoint_wanted": "hubcontrol.idle",
    "decide": "hubcontrol.idle",
    "safe_name": "hubcontrol.names",
    "Counter": "hubcontrol.stats",
    "Gauge": "hubcontrol.stats",
    "Histogram": "hubcontrol.stats",
    "Lifecycle": "hubcontrol.stats",
    "StatusView": "hubcontrol.stats",
    "UserStats": "hubcontrol.stats",
    "install_log_formatter": "hubcontrol.text",
    "keep_aside": "hubcontrol.safefs",
    "open_file": "hubcontrol.safefs",
    "UnsafePathError": "hubcontrol.safefs",
    "write_atomic": "hubcontrol.safefs",
    "write_new": "hubcontrol.safefs",
}

__all__ = [
    "AuditError",
    "AuditLog",
    "AuditManager",
    "AuditStream",
    "CheckpointError",
    "CheckpointHealth",
    "CheckpointTarget",
    "Checkpointer",
    "ComposeService",
    "ConfigError",
    "Counter",
    "CriuCheckpointer",
    "DEFAULT_LABELS_FILE",
    "DaemonError",
    "Decision",
    "Environment",
    "EnvironmentError_",
    "EnvironmentStatus",
    "GCEntry",
    "GCError",
    "GCPlan",
    "Gauge",
    "Histogram",
    "HookError",
    "Hub",
    "HubConfig",
    "HubError",
    "IdleCuller",
    "IdleFacts",
    "ImageError",
    "LabelsFile",
    "Lifecycle",
    "NetworkError",
    "OAuthConfig",
    "PolicyError",
    "Progress",
    "RecreateCheckpointer",
    "Route",
    "RouteTable",
    "START_FLAGS",
    "STATES",
    "StatusView",
    "SyncHub",
    "Template",
    "UnsafePathError",
    "UserStats",
    "UsernameError",
    "apply_gc",
    "build_config",
    "checkpoint_wanted",
    "config_as_dict",
    "decide",
    "dump_labels_file",
    "embedded",
    "follow_audit_log",
    "install_log_formatter",
    "keep_aside",
    "open_file",
    "load_compose",
    "load_config",
    "load_labels_file",
    "make_checkpointer",
    "parse_cpu_quota",
    "parse_duration",
    "parse_size",
    "parse_start_flags",
    "plan_gc",
    "read_audit_log",
    "safe_name",
    "write_atomic",
    "write_new",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ imports on demand
    from hubcontrol.audit import AuditManager, AuditStream
    from hubcontrol.auditlog import AuditLog, follow_audit_log, read_audit_log
    from hubcontrol.checkpoint import (
        Checkpointer,
        CheckpointHealth,
        CheckpointTarget,
        CriuCheckpointer,
        RecreateCheckpointer,
        make_checkpointer,
    )
    from hubcontrol.config import (
        DEFAULT_LABELS_FILE,
        START_FLAGS,
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
    from hubcontrol.embed import SyncHub, embedded
    from hubcontrol.environment import Environment
    from hubcontrol.errors import (
        AuditError,
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
    from hubcontrol.gc import GCEntry, GCPlan, apply_gc, plan_gc
    from hubcontrol.hub import STATES, EnvironmentStatus, Hub, Progress, Route, RouteTable
    from hubcontrol.idle import Decision, IdleCuller, IdleFacts, checkpoint_wanted, decide
    from hubcontrol.names import safe_name
    from hubcontrol.safefs import UnsafePathError, keep_aside, open_file, write_atomic, write_new
    from hubcontrol.stats import Counter, Gauge, Histogram, Lifecycle, StatusView, UserStats
    from hubcontrol.text import install_log_formatter


def __getattr__(name: str) -> Any:  # noqa: ANN401 - whichever export it loads
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hubcontrol' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
