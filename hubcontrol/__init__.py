"""hubcontrol: the hub's control plane as an anyio library.

Per-user dockerd, environment containers from templates, hooks, CRIU checkpoint/restore, audit
streams, stats and garbage collection. Runs embedded in the proxy process (in a thread with its own
event loop) and is importable on its own by automation scripts. It never imports mitmproxy, typer
or rich.
"""

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
from hubcontrol.stats import Counter, Gauge, Histogram, Lifecycle, StatusView, UserStats
from hubcontrol.text import install_log_formatter

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
]
