"""Daemon supervisors: how a per-user dockerd is started, stopped, found again and limited.

``DaemonSupervisor`` is the contract; ``local.LocalSupervisor`` (detached child processes plus
cgroups, for hosts whose PID 1 is not systemd, such as CI) and ``systemd.SystemdSupervisor`` (a
unit per user in ``rediacc.slice``) implement it. ``choose(name)`` picks one by name, or by
detection for ``"auto"``.

Contract (every method is blocking; the hub calls them in worker threads):

* ``start(spec, while_starting=None)`` returns once the daemon answers ``GET /_ping`` on
  ``spec.socket``; raises DaemonError (with the end of the daemon's log) otherwise. Starting a
  running daemon is a no-op. ``while_starting`` runs once the daemon's group (the one
  ``daemon_cgroup`` names) exists, possibly while dockerd still starts, and for a running daemon
  too; ``start`` returns only after it returned. When it raises, a daemon this call started is
  stopped again and the error raised.
  A started daemon keeps running when the hub process exits.
* ``stop(spec, timeout)`` stops the daemon (SIGTERM, then SIGKILL after ``timeout``), cleans up
  what it leaves behind (mounts under its exec-root, cgroups), and is a no-op when not running.
* ``is_running(spec)`` is True while the daemon process of ``spec`` exists.
* ``adopt(spec)`` takes over a daemon started by an earlier hub process; True when one runs.
* ``describe(spec)`` returns a JSON-able dict for status pages (pid, unit, cgroup, ...).
* ``container_cgroup_parent(spec)`` is the ``--cgroup-parent`` for the daemon's containers.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import re
import shlex
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from hubcontrol import criupages, durations, procs, safefs, storage, userns
from hubcontrol.errors import ConfigError, DaemonError

RUN_DIR = Path("/run/rediacc/hub")
CRIU_BIN = "/opt/rediacc/criu/bin"
INIT_PATH = "/usr/bin/tini-static"
SYSTEM_CONTAINERD = Path("/run/containerd/containerd.sock")
DOCKERD = "dockerd"
# The longest step between two /_ping polls of a starting dockerd. A ping is a local socket
# connect (microseconds); the earlier 0.2 s step cost a resume up to that much after dockerd was
# already up (docs/performance.md, "Resume of a checkpointed user").
PING_POLL_MAX = 0.05
CPU_PERIOD_US = 100_000

# The daemon's own allowance, beside the template's limits (which hold the containers only).
# Measured with the per-user dockerd 20.10 on the test host: dockerd and containerd take about
# 50 MB and 16 tasks idle, and each running container adds a shim of about 5 MB and 12 tasks. The
# policy socket caps a user at dockerpolicy.MAX_CONTAINERS (100) containers and caps what each
# container's configuration may hold, so legitimate use stays near 600 MB and 1,250 tasks; the
# rest is headroom for pulls, builds and loads. Past it, the kernel kills the daemon (memory) or
# refuses it threads (tasks): the user's own daemon, never the host or another user.
DAEMON_MEMORY = 1 << 30
DAEMON_PIDS = 2048


T = TypeVar("T")


def _limit(label: str, parse: Callable[[str | None], T], value: str | None) -> T:
    """``parse(value)``, a bad value raising ConfigError naming the template label."""
    try:
        return parse(value)
    except ValueError as e:
        raise ConfigError(f"rediacc.hub.limits.{label}: {e}") from None


@dataclass(frozen=True)
class Limits:
    """Resource limits of one user (from the template's ``rediacc.hub.limits.*`` labels)."""

    cpu: str | None = None  # CPUQuota= form, "200%"
    memory: str | None = None  # MemoryMax= form, "8G"; the containers' group
    pids: int | None = None  # the containers' group
    # dockerd, containerd and the shims: a group (or unit) of their own, always limited
    daemon_memory: int = DAEMON_MEMORY  # bytes
    daemon_pids: int = DAEMON_PIDS

    @property
    def cpus(self) -> float | None:
        """The containers' CPUs (``cpu`` as a number); None when unlimited."""
        return _limit("cpu", durations.parse_cpu_quota, self.cpu)

    @property
    def memory_bytes(self) -> int | None:
        """The containers' memory in bytes (``memory``); None when unlimited."""
        return _limit("memory", durations.parse_memory_max, self.memory)

    @property
    def total_memory(self) -> int | None:
        """The whole user's memory (containers + daemon); None when the containers' is unset."""
        memory = self.memory_bytes
        return None if memory is None else memory + self.daemon_memory

    @property
    def total_pids(self) -> int | None:
        """The whole user's tasks (containers + daemon); None when the containers' is unset."""
        return None if self.pids is None else self.pids + self.daemon_pids


@dataclass(frozen=True)
class DaemonSpec:
    """Everything needed to run one user's dockerd (derived, never persisted)."""

    user: str  # safe name
    net_id: int
    data_root: Path
    daemon_dir: Path  # config, pidfile, TMPDIR, log
    network_config: Mapping[str, Any] = field(default_factory=dict)
    limits: Limits = Limits()
    env_socket: bool = True  # dockerd also serves the environment's socket directory itself
    run_dir: Path = RUN_DIR
    # --userns-remap: the account whose /etc/subuid range the daemon maps containers to
    # (hubcontrol.userns.account_name); None: containers share the host's user namespace
    userns_remap: str | None = None
    userns_root: int | None = None  # with it: the host uid/gid of the namespace's root

    def __post_init__(self) -> None:
        object.__setattr__(self, "network_config", MappingProxyType(dict(self.network_config)))

    @property
    def exec_root(self) -> Path:
        return self.run_dir / str(self.net_id)

    @property
    def socket(self) -> Path:
        return self.exec_root / "docker.sock"

    @property
    def env_dir(self) -> Path:
        """Mounted into the environment; holds the docker socket the environment talks to."""
        return self.exec_root / "env"

    @property
    def env_socket_path(self) -> Path:
        return self.env_dir / "docker.sock"

    @property
    def pidfile(self) -> Path:
        return self.daemon_dir / "docker.pid"

    @property
    def config_file(self) -> Path:
        return self.daemon_dir / "daemon.json"

    @property
    def tmpdir(self) -> Path:
        return self.daemon_dir / "tmp"

    @property
    def log(self) -> Path:
        return self.daemon_dir / "dockerd.log"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def containerd_dir(self) -> Path:
        """The daemon's containerd state (dockerd's own layout for the containerd it manages:
        ``containerd.pid`` is there in both cases, see ``private_containerd``)."""
        return self.exec_root / "containerd"

    @property
    def containerd_socket(self) -> Path:
        return self.containerd_dir / "containerd.sock"

    @property
    def containerd_config(self) -> Path:
        return self.containerd_dir / "containerd.toml"

    @property
    def containerd_pidfile(self) -> Path:
        return self.containerd_dir / "containerd.pid"


# Docker's storage drivers, as directories of a data-root (a data-root holds its driver's).
STORAGE_DRIVERS = frozenset(
    {"overlay2", "btrfs", "zfs", "fuse-overlayfs", "aufs", "overlay", "devicemapper", "vfs"}
)


def storage_driver(backing_filesystem: str, entries: frozenset[str] | set[str]) -> str | None:
    """The ``storage-driver`` of a per-user dockerd whose data-root is on ``backing_filesystem``
    and holds the directory ``entries``; None lets dockerd choose (its earlier driver, else its
    default).

    On BTRFS dockerd would choose its ``btrfs`` driver, which makes a subvolume per layer; a
    snapshot of the data-root does not include nested subvolumes, so a clone of a seed
    (``hubcontrol.seeds``) would have no layers. ``overlay2`` keeps every layer inside the
    data-root's one subvolume, and on BTRFS it diffs natively (measured: docs/architecture.md,
    "Seed data-roots"). Elsewhere dockerd's own default is ``overlay2`` already, and on a
    filesystem that cannot hold it (overlay on overlay) naming it would stop the daemon. A
    data-root an older hub filled with another driver keeps that driver: its images are there."""
    if backing_filesystem != "btrfs":
        return None
    others = (set(entries) & STORAGE_DRIVERS) - {"overlay2"}
    if others and "overlay2" not in entries:
        return None
    return "overlay2"


def data_root_storage_driver(data_root: Path) -> str | None:
    """``storage_driver`` for the data-root ``data_root`` as it is on disk now."""
    try:
        entries = set(os.listdir(data_root))
    except OSError:
        entries = set()
    return storage_driver(storage.filesystem_type(Path(data_root)), entries)


# dockerd's daemon.json "builder" entitlements (moby 20.10 config.BuilderEntitlements): both off.
BUILDER_ENTITLEMENTS = (("network-host", False), ("security-insecure", False))


def daemon_config(spec: DaemonSpec, *, cgroup_parent: str | None = None) -> dict[str, Any]:
    """The ``daemon.json`` of a per-user dockerd (flags for paths, this file for the rest)."""
    config = {
        "experimental": True,
        "init-path": INIT_PATH,
        # Must stay true: dockerd 20.10, restarting with default-address-pools set and without
        # live-restore, deletes the host's docker0 ("Clear stale bridge network" calls
        # removeDefaultBridgeInterface), which takes down the host daemon's default network.
        # The hub stops a user's containers itself before it stops the daemon.
        "live-restore": True,
        "log-driver": "json-file",
        "log-opts": {"max-size": "10m", "max-file": "3"},
        # BuildKit builds come through the policy socket as opaque gRPC (docs/security.md,
        # "BuildKit"), so the daemon itself must refuse what the policy cannot see: moby 20.10
        # grants network.host unless told otherwise (a RUN step in the host's network namespace,
        # past every per-user rule), and security.insecure would run a step privileged.
        "builder": {"Entitlements": dict(BUILDER_ENTITLEMENTS)},
        **spec.network_config,
    }
    if cgroup_parent:
        config["cgroup-parent"] = cgroup_parent
    if spec.userns_remap:
        config["userns-remap"] = spec.userns_remap
    driver = data_root_storage_driver(spec.data_root)
    if driver:
        config["storage-driver"] = driver
    return config


def private_containerd(system_socket: Path = SYSTEM_CONTAINERD) -> bool:
    """Whether a per-user dockerd needs its containerd started for it.

    dockerd 20.10 starts a containerd of its own (in its group, with its PATH and TMPDIR) only
    when nothing is at ``/run/containerd/containerd.sock``; when something is (a system
    containerd: every host with Debian's docker.io or Docker CE), it hands every container to
    that one. The shims and runc would then run in the system containerd's group and with its
    environment: outside the user's bounds, without the CRIU wrapper on their PATH (so every
    checkpoint fails) and with its TMPDIR. So on such a host the supervisor starts the user's
    containerd itself, with the configuration dockerd would give it, in the daemon's group
    (``containerd_launch``), and dockerd uses it (``--containerd``). Either way each user's
    containers, shims and checkpoints stay in their own containerd."""
    return os.path.lexists(system_socket)  # what dockerd looks at (os.Lstat)


def dockerd_argv(spec: DaemonSpec, *, containerd_socket: Path = SYSTEM_CONTAINERD) -> list[str]:
    argv = [
        DOCKERD,
        "--data-root", str(spec.data_root),
        "--exec-root", str(spec.exec_root),
        "--pidfile", str(spec.pidfile),
        "--config-file", str(spec.config_file),
        "-H", f"unix://{spec.socket}",
    ]  # fmt: skip
    if spec.env_socket:
        argv += ["-H", f"unix://{spec.env_socket_path}"]
    if private_containerd(containerd_socket):
        argv += ["--containerd", str(spec.containerd_socket)]
    return argv


def containerd_config_text(spec: DaemonSpec) -> str:
    """The per-user containerd's configuration: what dockerd 20.10 writes for the containerd it
    manages (``libcontainerd/supervisor``), at the same paths, so a data-root runs the same
    under either."""
    data = spec.data_root / "containerd" / "daemon"
    return (
        "version = 1\n"
        f"root = {json.dumps(str(data))}\n"
        f"state = {json.dumps(str(spec.containerd_dir / 'daemon'))}\n"
        'disabled_plugins = ["cri"]\n'
        "\n[grpc]\n"
        f"  address = {json.dumps(str(spec.containerd_socket))}\n"
        "  uid = 0\n  gid = 0\n"
        "\n[plugins]\n  [plugins.linux]\n"
        '    shim = "containerd-shim"\n    runtime = "runc"\n'
        f"    runtime_root = {json.dumps(str(spec.data_root / 'runc'))}\n"
    )


def write_containerd_config(spec: DaemonSpec) -> None:
    safefs.ensure_dir(spec.exec_root, "containerd", mode=0o700)
    safefs.write_atomic(spec.containerd_config, containerd_config_text(spec), mode=0o600)


# How long a start waits for the per-user containerd's socket (steps of 10 ms).
CONTAINERD_START_TICKS = 3000


def containerd_launch(spec: DaemonSpec) -> str:
    """Shell run by the daemon's launcher after it joined the daemon's group and before it execs
    dockerd, when ``private_containerd()``: stop a containerd an earlier start of this daemon
    left (``containerd_stop_script``), start the user's own and wait for its socket. As the
    containerd dockerd starts itself, it is dockerd's child (the launcher execs dockerd) and
    dies with it (``setpriv --pdeathsig KILL``, as dockerd's ``Pdeathsig``): it never outlives
    its daemon. It runs without systemd's NOTIFY_SOCKET, which is dockerd's. Exit 98, with a
    line for the log, if it dies or does not listen in time."""
    ticks = CONTAINERD_START_TICKS
    return (
        containerd_stop_script(spec) + 'rm -f "$c/containerd.sock"; '
        "setpriv --pdeathsig KILL -- env -u NOTIFY_SOCKET containerd "
        '--config "$c/containerd.toml" --log-level info </dev/null & '
        'p=$!; echo "$p" > "$c/containerd.pid"; i=0; '
        'while [ ! -S "$c/containerd.sock" ]; do '
        "s=$(cut -d' ' -f3 /proc/\"$p\"/stat 2>/dev/null); "
        '[ -n "$s" ] && [ "$s" != Z ] || { echo "hub: containerd exited at start" >&2; exit 98; }; '
        f'[ $i -lt {ticks} ] || {{ echo "hub: containerd did not listen" >&2; exit 98; }}; '
        "sleep 0.01; i=$((i+1)); done; "
    )


def containerd_stop_script(spec: DaemonSpec) -> str:
    """Shell that stops the user's own containerd (the PID in its pidfile, if that process runs
    this daemon's configuration): SIGTERM, SIGKILL after 10 s. Leaves ``$c`` set to its dir."""
    return (
        f"c={shlex.quote(str(spec.containerd_dir))}; "
        'p=$(cat "$c/containerd.pid" 2>/dev/null); '
        'if [ -n "$p" ] && grep -qF "$c/containerd.toml" /proc/"$p"/cmdline 2>/dev/null; then '
        'kill -TERM "$p"; i=0; '
        'while kill -0 "$p" 2>/dev/null && [ $i -lt 500 ]; do sleep 0.02; i=$((i+1)); done; '
        'kill -KILL "$p" 2>/dev/null; fi; '
    )


def containerd_pid(spec: DaemonSpec) -> int | None:
    """The PID of the daemon's containerd (the one dockerd manages, or the supervisor's), or None."""
    try:
        pid = int(spec.containerd_pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    argv = [os.path.basename(a) for a in procs.cmdline(pid)[:1]]
    return pid if argv == ["containerd"] and procs.alive(pid) else None


def containerd_serves(spec: DaemonSpec, dockerd_pid: int) -> bool:
    """False when the dockerd at ``dockerd_pid`` uses the user's own containerd
    (``--containerd`` on this spec's socket) and that containerd is gone: nothing restarts it
    (dockerd restarts only a containerd it started), so such a daemon is not running."""
    argv = procs.cmdline(dockerd_pid)
    if "--containerd" not in argv[:-1]:
        return True
    if argv[argv.index("--containerd") + 1] != str(spec.containerd_socket):
        return True
    return own_containerd_pid(spec) is not None


def own_containerd_pid(spec: DaemonSpec) -> int | None:
    """The PID of the containerd the supervisor started for ``spec`` (``containerd_launch``):
    the pidfile's process, while it runs this daemon's configuration; None otherwise."""
    pid = containerd_pid(spec)
    return pid if pid is not None and str(spec.containerd_config) in procs.cmdline(pid) else None


DAEMON_GOGC = "50"


def dockerd_env(spec: DaemonSpec, base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    path = env.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env["PATH"] = f"{CRIU_BIN}:{path}"
    # containerd leaves full memory images (ctrd-checkpoint*) in TMPDIR after restores
    env["TMPDIR"] = str(spec.tmpdir)
    # Go collects when its heap has grown by GOGC% since the last collection (100 by default),
    # and an idle daemon keeps about that much. At 50, an idle per-user dockerd and containerd
    # (and the shims, which inherit it) hold 4-5 MiB less between them (bench/density.py), for
    # more frequent collections while the daemon is busy; the limits are unchanged. An
    # operator's own GOGC in the hub's environment wins.
    env.setdefault("GOGC", DAEMON_GOGC)
    return env


DAEMON_GROUP = "daemon"  # in a user's group: dockerd, containerd and the shims
CRIU_GROUP = "criu"  # its sibling, where the CRIU wrapper moves CRIU
# Where the CRIU wrapper lives: not in the exec-root, since /run is mounted noexec on Debian
# hosts (initramfs-tools mounts it so) and in a container's tmpfs, where runc's exec of it fails
# ("permission denied") and every checkpoint with it. One wrapper serves every user of either
# supervisor (it finds its group at run time).
CRIU_WRAPPER_DIR = Path("/var/lib/rediacc/hub/bin")


def criu_wrapper_text() -> str:
    """``<CRIU_WRAPPER_DIR>/criu``, first on every per-user dockerd's PATH (both supervisors):
    runc runs it for every dump and restore. It moves CRIU from the daemon's group (whose own
    connections ``RDH-OUTPUT`` rejects on loopback, where CRIU's start-up check of TCP repair
    connects to itself) into the sibling ``criu`` group, then runs the real CRIU; CRIU works on
    the container's namespaces, which the user cannot steer (checkpoints are the hub's only),
    so it needs no network limit. The group is read at run time: where systemd puts a unit is
    systemd's choice (a container's systemd nests it), and the local supervisor's layout
    (``<user group>/daemon`` beside ``<user group>/criu``) is the same; without a v2 group to
    move to, the step does nothing.
    It also lets processes restored into a ``--userns-remap`` namespace read their images
    (``userns.CRIU_RESTORE_PRELUDE``): one wrapper serves every daemon, and for a daemon
    without remapping that step only opens a directory no one but root can reach anyway. And it
    moves a checkpoint's staged memory images into containerd's copy (``criupages``)."""
    path = f"{CRIU_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    return (
        "#!/bin/sh\n"
        "# written by the hub (hubcontrol.supervisor.criu_wrapper_text)\n"
        "g=$(sed -n 's/^0:://p' /proc/self/cgroup)\n"
        "r=/sys/fs/cgroup; [ -e $r/cgroup.controllers ] || r=$r/unified\n"
        f'case "$g" in */{DAEMON_GROUP}) '
        f'echo $$ > "$r${{g%/{DAEMON_GROUP}}}/{CRIU_GROUP}/cgroup.procs" 2>/dev/null ;; esac\n'
        + criupages.IMAGE_PATH
        + userns.CRIU_RESTORE_PRELUDE
        + criupages.RESTORE_PRELUDE
        + f'PATH={shlex.quote(path)} exec criu "$@"\n'
    )


def write_criu_wrapper(wrapper_dir: Path = CRIU_WRAPPER_DIR) -> None:
    wrapper_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    text = criu_wrapper_text()
    wrapper = wrapper_dir / "criu"
    with contextlib.suppress(OSError):
        if not wrapper.is_symlink() and wrapper.read_text() == text:
            return
    safefs.write_atomic(wrapper, text, mode=0o755)


def ping(path: Path | str, timeout: float = 1.0) -> bool:
    """True when the daemon at unix socket ``path`` answers ``GET /_ping`` with OK."""
    # A raw request: httpx's unix transport leaks the socket when connect() fails, and this
    # runs in a polling loop while dockerd starts.
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
    except OSError:
        return False
    head, _, body = data.partition(b"\r\n\r\n")
    return head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n", 1)[0] and body == b"OK"


def remapped_exec_roots(run_dir: Path, net_id: int) -> list[Path]:
    """What dockerd with ``--userns-remap`` keeps beside the exec-root ``<run-dir>/<net_id>``:
    ``<net_id>.<uid>.<gid>``, its remapped root's own, which outlives the daemon. Directories
    only, never a link."""
    pattern = re.compile(rf"{net_id}\.\d+\.\d+")
    try:
        entries = list(os.scandir(run_dir))
    except FileNotFoundError:
        return []
    return [
        Path(e.path)
        for e in entries
        if pattern.fullmatch(e.name) and e.is_dir(follow_symlinks=False)
    ]


def prepare_daemon_dirs(spec: DaemonSpec) -> None:
    """Make the daemon dir, data-root and TMPDIR as root's directories without following a link
    (the hub checked the chain above them: ``storage.prepare_user_tree``)."""
    daemon_dir = Path(spec.daemon_dir)
    daemon_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # under --userns-remap the namespace's root must pass through it (storage.remap_modes)
    gid, mode = storage.remap_modes(spec.userns_root)
    safefs.ensure_dir(daemon_dir.parent, daemon_dir.name, mode=mode, gid=gid)
    for inner in (spec.data_root, spec.tmpdir):
        rel = safefs.split(inner, daemon_dir)
        safefs.ensure_dir(
            daemon_dir,
            "/".join(rel),
            mode=0o710 if inner == spec.data_root else 0o700,
            set_mode=inner != spec.data_root,
        )


def prepare_exec_root(spec: DaemonSpec) -> None:
    """Make the daemon's exec-root (``<run_dir>/<net_id>``) and its ``env`` directory."""
    spec.run_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
    # under --userns-remap CRIU restores the environment's mounts (the env socket dir below) from
    # inside its user namespace, as its root: that group may pass through
    gid, mode = storage.remap_modes(spec.userns_root)
    safefs.ensure_dir(spec.run_dir, str(spec.net_id), mode=mode, gid=gid)
    safefs.ensure_dir(spec.exec_root, "env", mode=0o755)


def write_daemon_config(spec: DaemonSpec, config: Mapping[str, Any]) -> None:
    """Write ``daemon.json``: a link planted at its path is replaced, never written through."""
    safefs.write_atomic(spec.config_file, json.dumps(config, indent=2) + "\n", mode=0o600)


def log_tail(path: Path, limit: int = 2000) -> str:
    try:
        with os.fdopen(safefs.open_file(path), "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return "(no log)"


def wait_for_ping(spec: DaemonSpec, alive: Callable[[], bool], timeout: float = 60.0) -> None:
    """Poll ``/_ping`` until it answers; DaemonError if ``alive()`` turns False or time runs out."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while not ping(spec.socket):
        if not alive():
            raise DaemonError(
                "Your Docker daemon failed to start.",
                f"dockerd for {spec.user} (net {spec.net_id}) exited; log {spec.log}:\n"
                f"{log_tail(spec.log)}",
            )
        if time.monotonic() > deadline:
            raise DaemonError(
                "Your Docker daemon did not start in time.",
                f"dockerd for {spec.user} (net {spec.net_id}) did not answer /_ping on "
                f"{spec.socket} within {timeout:.0f} s; log {spec.log}:\n{log_tail(spec.log)}",
            )
        time.sleep(delay)
        delay = min(delay * 1.5, PING_POLL_MAX)


class DaemonSupervisor(abc.ABC):
    """Starts, stops and finds per-user dockerd processes (see the module docstring)."""

    name: str = ""

    @abc.abstractmethod
    def start(
        self, spec: DaemonSpec, *, while_starting: Callable[[], None] | None = None
    ) -> None: ...

    @abc.abstractmethod
    def stop(self, spec: DaemonSpec, timeout: float = 30.0) -> None: ...

    @abc.abstractmethod
    def is_running(self, spec: DaemonSpec) -> bool: ...

    @abc.abstractmethod
    def adopt(self, spec: DaemonSpec) -> bool: ...

    @abc.abstractmethod
    def describe(self, spec: DaemonSpec) -> dict[str, Any]: ...

    @abc.abstractmethod
    def container_cgroup_parent(self, spec: DaemonSpec) -> str | None: ...

    def apply_limits(self, spec: DaemonSpec) -> None:  # noqa: B027 - optional hook
        """Update the limits of a running daemon's groups (after a template switch)."""

    def set_users_cpu_weight(self, weight: int | None) -> None:  # noqa: B027 - optional hook
        """Give ``rediacc.slice`` (every user's daemon and containers) this CPU weight against
        the host's own services (``--users-cpu-weight``), from the next daemon start on; None
        leaves the slice as it is."""

    def daemon_cgroup(self, spec: DaemonSpec) -> str | None:
        """The daemon's cgroup v2 group relative to the v2 root, which the rules for the daemon's
        own traffic match (``network.apply_daemon_isolation``); None when there is none."""
        return None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not getattr(cls, "__abstractmethods__", None) and not cls.name:
            raise TypeError(f"{cls.__name__} must set a class attribute `name`")


def pid1_is_systemd() -> bool:
    try:
        return (
            os.readlink("/proc/1/exe").endswith("/systemd") or Path("/run/systemd/system").is_dir()
        )
    except OSError:
        return Path("/run/systemd/system").is_dir()


def choose(name: str = "auto") -> DaemonSupervisor:
    """The supervisor called ``name``: "local", "systemd" or "auto" (systemd when PID 1 is)."""
    if name == "auto":
        name = "systemd" if pid1_is_systemd() else "local"
    if name == "local":
        from hubcontrol.supervisor.local import LocalSupervisor

        return LocalSupervisor()
    if name == "systemd":
        from hubcontrol.supervisor.systemd import SystemdSupervisor

        return SystemdSupervisor()
    raise ConfigError(f"--supervisor={name!r} is not known; use local, systemd or auto")
