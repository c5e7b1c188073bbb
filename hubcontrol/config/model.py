"""The configuration types every other module codes against: ``HubConfig``, ``Template``,
``OAuthConfig``, and their defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hubcontrol.errors import ConfigError

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
# --users-cpu-weight: rediacc.slice's CPU weight against the host's own services (cgroup v2's
# scale, where every group's default is 100). Measured (docs/performance.md, "Load held"): with
# users at the default 100, 32 daemons booting at once on 2 cores kept the hub's event loop from
# the CPU and /_hub/health took 310 ms at p99; at 20 it was 89 ms, and a bare process beside the
# hub 9 ms instead of 100 ms. Users compete with each other as before; only when the host's own
# services want the CPU do all users together yield: 20 against 100 for each busy service.
DEFAULT_USERS_CPU_WEIGHT = 20
USER_NETWORK_ID_BASE = 32768
USER_NETWORK_ID_STEP = 64
DEFAULT_TEMPLATE_NAME = "default"

MODES = ("persistent", "ephemeral")


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
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
    # rediacc.hub.checkpoint: None (unset) follows --checkpoint; True/False win over it
    checkpoint: bool | None = None
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
    # HUB_OAUTH_GROUPS_PATH: where HUB_ALLOWED_GROUPS looks in the userinfo answer, a dot-path
    # like HUB_OAUTH_USERINFO_PATH (Nextcloud: ocs.data.groups)
    groups_path: str = "groups"


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
    # --userns-remap / HUB_USERNS_REMAP: per-user daemons put containers in a user namespace of
    # the user's own host ids (hubcontrol.userns), so CRIU can dump non-root environments where
    # root lacks CAP_SYS_RESOURCE (docs/checkpoint.md)
    userns_remap: bool = False
    workers: int = 1  # proxy processes on --port; worker 0 also runs the control plane
    # --users-cpu-weight / HUB_USERS_CPU_WEIGHT: rediacc.slice's CPU weight (config.values)
    users_cpu_weight: int = DEFAULT_USERS_CPU_WEIGHT
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
