"""The hub's side of the policy sockets: starting, adopting, replacing and stopping one per-user
process (``python -m hubcontrol.policysocket``) beside each per-user daemon.

The process itself lives in ``hubcontrol.policysocket`` and imports none of this. What the two
share is the command line: ``command(args)`` writes it, the process's ``__main__`` parses it.
A running process is found by its command line (``running_pid``), and kept only while that
command line is exactly the one this hub would start (``start``): a template switch, or a hub
upgrade whose command line differs, replaces it, so fixes to the policy take effect.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import json
import logging
import os
import select
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from hubcontrol import network, procs, safefs, storage
from hubcontrol.config import DEFAULT_WORKSPACE
from hubcontrol.errors import DaemonError
from hubcontrol.policysocket.bindroot import default_bind_root, unmount_bind_root
from hubcontrol.records import UserRecord
from hubcontrol.supervisor.systemd import SystemdSupervisor

if TYPE_CHECKING:
    from hubcontrol.config import Template
    from hubcontrol.services import HubServices
    from hubcontrol.supervisor import DaemonSpec

log = logging.getLogger(__name__)

MODULE = "hubcontrol.policysocket"
# The longest step between two polls of a starting policy socket (a pidfile read and a local
# connect): a coarser one cost every start and resume up to 0.2 s after the socket was up.
ACCEPT_POLL_MAX = 0.05
# A policy socket started as a detached process (not a systemd unit) is handed the write end
# of a pipe, by number in this variable (not on its command line, which must stay the one
# ``command`` writes); it writes one byte there once it listens and has written its pidfile,
# and ``start`` waits on the read end instead of polling. EOF (it died first) falls back to
# the poll, which then reports the failure.
READY_FD_ENV = "HUB_POLICY_SOCKET_READY_FD"
# The command line of a policy socket started by a hub before the policy socket was its own
# package: ``python -c <bootstrap> <package dir> --flag=value...``, the bootstrap importing
# ``hubcontrol.socketproxy``. Such processes are found (to be replaced) by this part of it.
LEGACY_MARKER = "from hubcontrol import socketproxy"


@dataclass(frozen=True)
class ProxyArgs:
    """Everything a user's policy socket process is started with."""

    listen: str
    upstream: str
    workspace: str
    container_workspace: str = "/workspace"
    binds_dir: str | None = None
    user_networks: tuple[str, ...] = ()
    allowed_registries: tuple[str, ...] = ()
    publish_ip: str | None = None
    idle_timeout: float = 30.0
    pidfile: str | None = None
    audit_dir: str | None = None
    audit_user: str | None = None
    net_id: int | None = None


def command(args: ProxyArgs, python: str = sys.executable) -> list[str]:
    """The argv that runs a policy socket as its own process: ``python -m hubcontrol.policysocket
    --flag=value...``. Every value is joined to its flag with ``=``: the username comes from the
    OAuth provider and may start with ``-``."""
    options = [
        ("--listen", args.listen),
        ("--upstream", args.upstream),
        ("--workspace", args.workspace),
        ("--container-workspace", args.container_workspace),
        ("--idle-timeout", str(args.idle_timeout)),
        ("--binds-dir", args.binds_dir),
        ("--publish-ip", args.publish_ip),
        ("--pidfile", args.pidfile),
        ("--audit-dir", args.audit_dir),
        ("--audit-user", args.audit_user),
        ("--net-id", None if args.net_id is None else str(args.net_id)),
        *(("--user-network", net) for net in args.user_networks),
        *(("--allow-registry", reg) for reg in args.allowed_registries),
    ]
    return [python, "-m", MODULE] + [
        f"{flag}={value}" for flag, value in options if value is not None
    ]


def args_for(
    spec: DaemonSpec,
    *,
    workspace: Path | str,
    container_workspace: str,
    net: network.UserNetwork | None = None,
    allowed_registries: Sequence[str] = (),
    audit: tuple[str, str, int] | None = None,
) -> ProxyArgs:
    """The policy socket of the per-user daemon ``spec`` (a ``supervisor.DaemonSpec``): it serves
    ``spec.env_socket_path`` and forwards to ``spec.socket``; ``net`` (a ``network.UserNetwork``)
    gives the address block the user's own networks and published ports may use; ``audit`` is
    (audit dir, username, net ID) for refusal records in the user's audit log."""
    return ProxyArgs(
        listen=str(spec.env_socket_path),
        upstream=str(spec.socket),
        workspace=str(workspace),
        container_workspace=container_workspace,
        binds_dir=str(spec.exec_root / "binds"),
        user_networks=(str(net.address_pool),) if net is not None else (),
        publish_ip=str(net.bridge_address.ip) if net is not None else None,
        allowed_registries=tuple(allowed_registries),
        pidfile=str(spec.exec_root / "policy.pid"),
        audit_dir=audit[0] if audit else None,
        audit_user=audit[1] if audit else None,
        net_id=audit[2] if audit else None,
    )


def drop_idle_for_daemon(spec: DaemonSpec) -> bool:
    """``drop_idle_connections`` for the policy socket of the daemon ``spec`` (a DaemonSpec),
    for the checkpointer to call right before a dump."""
    return drop_idle_connections(args_for(spec, workspace="", container_workspace=""))


class PolicySockets:
    """Runs a policy socket process beside every per-user daemon of a ``Hub``.

    The hub awaits ``ensure`` right after it starts or adopts a user's daemon and ``stop`` right
    before it stops one, so a user's environment never runs without its policy socket, and a
    stale stop can never hit the next start (lifecycle events arrive later, and out of the
    hub's lock). The hub must be built with ``env_socket_by_daemon=False``, so dockerd does not
    serve the environment's socket itself.
    """

    def __init__(self, hub: HubServices, allowed_registries: Sequence[str] = ()) -> None:
        if getattr(hub, "env_socket_by_daemon", False):
            raise ValueError(
                "PolicySockets needs Hub(env_socket_by_daemon=False): dockerd would serve the "
                "environment's socket itself, without the policy"
            )
        self.hub = hub
        self.allowed_registries = tuple(allowed_registries)  # --allow-registry, settable
        if not isinstance(hub.supervisor, SystemdSupervisor):
            SPAWNER.prestart()  # forks them: started now, not at the first user's start

    def args(
        self, spec: DaemonSpec, rec: UserRecord, template: Template | None = None
    ) -> ProxyArgs:
        """The policy socket of the daemon ``spec`` of the user of ``rec``."""
        assert rec.net_id is not None  # a per-user daemon has its network
        config = self.hub.config
        if template is None:
            template = config.templates.get(rec.template or config.default_template)
        ephemeral = rec.mode == "ephemeral" or (template is not None and template.ephemeral)
        return args_for(
            spec,
            # an ephemeral environment's workspace is a tmpfs: nothing on the host to bind
            workspace=""
            if ephemeral
            else storage.UserPaths(Path(config.workspace_dir), rec.name).workspace,
            container_workspace=template.workspace if template else DEFAULT_WORKSPACE,
            net=network.user_network(rec.net_id, config.user_subnet_pool),
            allowed_registries=self.allowed_registries,
            audit=(str(config.audit_dir), rec.username, rec.net_id),
        )

    async def ensure(
        self, spec: DaemonSpec, rec: UserRecord, template: Template | None = None
    ) -> None:
        """Start the user's policy socket unless it runs with these settings; never raises (the
        environment still starts, without a docker socket, and the failure is logged)."""
        await anyio.to_thread.run_sync(self.launch(spec, rec, template).result)

    def launch(
        self, spec: DaemonSpec, rec: UserRecord, template: Template | None = None
    ) -> concurrent.futures.Future[None]:
        """``ensure`` without waiting: the work runs in a thread of its own and the returned
        future is done once the socket accepts connections or its failure is logged (it never
        holds an exception). A start overlaps it with work that needs no docker socket in the
        environment (a CRIU restore: ``Hub._ensure_container``)."""
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        try:
            daemon_unit = None
            if isinstance(self.hub.supervisor, SystemdSupervisor):
                # the unit really running the daemon (with the network ID in its name)
                daemon_unit = self.hub.supervisor.unit(spec)
            args = self.args(spec, rec, template)  # now: the record changes as the start goes on
        except Exception:
            log.exception("the policy socket of %s did not start", rec.name)
            done.set_result(None)
            return done
        log_path = None if daemon_unit else spec.daemon_dir / "policy.log"

        def run() -> None:
            try:
                start(args, log_path=log_path, daemon_unit=daemon_unit)
            except Exception:
                log.exception("the policy socket of %s did not start", rec.name)
            finally:
                done.set_result(None)

        threading.Thread(target=run, name=f"policy-socket-{rec.name}", daemon=True).start()
        return done

    def running(self, spec: DaemonSpec) -> bool:
        """Whether the policy socket of the daemon ``spec`` runs (its pidfile, else /proc)."""
        return running_pid(args_for(spec, workspace="", container_workspace="")) is not None

    async def stop(self, spec: DaemonSpec) -> None:
        await anyio.to_thread.run_sync(stop, args_for(spec, workspace="", container_workspace=""))


def is_policy_socket(argv: Sequence[str]) -> bool:
    """Whether ``argv`` is a policy socket's command line: this version's (``-m
    hubcontrol.policysocket``) or an earlier version's (``LEGACY_MARKER``), which a hub of this
    version finds and replaces (its command line differs from ``command``)."""
    head = list(argv[1:3])
    return head == ["-m", MODULE] or (head[:1] == ["-c"] and LEGACY_MARKER in "".join(head[1:]))


def _same_mount_namespace(pid: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
    except OSError:
        return False


def _serves(pid: int, listen: str) -> bool:
    """Whether ``pid`` is a policy socket process for ``listen`` (either flag spelling) in this
    process's mount namespace: the same path in another one (a hub in a container, seen in the
    host's /proc) is another file, and that process is not ours to replace or stop."""
    if not _same_mount_namespace(pid):
        return False
    cmdline = procs.cmdline(pid)
    if not is_policy_socket(cmdline):
        return False
    pairs = zip(cmdline, cmdline[1:], strict=False)
    return f"--listen={listen}" in cmdline or ("--listen", listen) in pairs


def running_pid(args: ProxyArgs) -> int | None:
    """The PID of the policy socket process serving ``args.listen``, or None. Its pidfile is
    asked first; without one, the process table (a process whose pidfile was removed by a
    cleanup still holds the socket path, and must be found to be replaced)."""
    if args.pidfile:
        with contextlib.suppress(OSError, ValueError):
            pid = int(Path(args.pidfile).read_text().strip())
            if _serves(pid, args.listen):
                return pid
    for pid in procs.pids():
        if pid != os.getpid() and _serves(pid, args.listen) and procs.alive(pid):
            return pid
    return None


def _started_pid(args: ProxyArgs) -> int | None:
    """The PID of the policy socket ``start`` just launched, once it serves: its pidfile, which
    the process writes once it listens. Reading the whole process table instead (``running_pid``)
    on every poll cost each start thousands of /proc reads under the hub's GIL, which many
    logins at once turned into stalls of every request the hub serves (bench/load.py)."""
    if not args.pidfile:
        return running_pid(args)
    with contextlib.suppress(OSError, ValueError):
        pid = int(Path(args.pidfile).read_text().strip())
        if _serves(pid, args.listen):
            return pid
    return None


def start(
    args: ProxyArgs,
    *,
    log_path: Path | str | None = None,
    daemon_unit: str | None = None,
    timeout: float = 15.0,
) -> int:
    """Start the policy socket process unless one serves ``args.listen`` already; return its PID
    once the socket accepts connections. It outlives the hub, as the user's dockerd does: a
    detached process (``setsid --fork``), or with ``daemon_unit`` (systemd hosts) a transient
    unit bound to the daemon's (``systemd_run_argv``; its output goes to the journal)."""
    pid = running_pid(args)
    if pid is not None:
        wanted = command(args)[1:]  # the interpreter's path aside
        if _accepts(args.listen, tries=3) and procs.cmdline(pid)[-len(wanted) :] == wanted:
            return pid
        # Running, but its socket file is gone (a daemon restart's cleanup removed it), or it
        # serves other settings (a template switch moved the workspace), or an earlier version
        # of the hub started it (another command line, older code): start over.
        stop(args)
    log_file = os.fdopen(_open_log(log_path), "ab") if log_path else None
    ready_r = ready_w = -1
    try:
        if not daemon_unit:
            ready_r, ready_w = os.pipe()
        try:
            if daemon_unit or not SPAWNER.spawn(
                command(args), log_file.fileno() if log_file else -1, ready_w
            ):
                subprocess.run(
                    systemd_run_argv(args, daemon_unit)
                    if daemon_unit
                    else ["setsid", "--fork", *command(args)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL if log_file is None else log_file,
                    stderr=subprocess.STDOUT,
                    check=True,
                    close_fds=True,
                    pass_fds=(ready_w,) if ready_w >= 0 else (),
                    env={**os.environ, READY_FD_ENV: str(ready_w)} if ready_w >= 0 else None,
                    cwd="/",
                )
        finally:
            if ready_w >= 0:
                os.close(ready_w)  # the process holds the only write end now
        deadline = time.monotonic() + timeout
        if ready_r >= 0:
            _wait_readable(ready_r, deadline)
    finally:
        if log_file is not None:
            log_file.close()
        if ready_r >= 0:
            os.close(ready_r)
    delay = 0.02
    while time.monotonic() < deadline:
        pid = _started_pid(args)
        if pid is not None and _accepts(args.listen):
            return pid
        time.sleep(delay)
        delay = min(delay * 1.5, ACCEPT_POLL_MAX)
    raise DaemonError(
        "The hub could not open your environment's docker socket.",
        f"policy socket {args.listen} did not start within {timeout:.0f} s"
        + (f"; see {log_path}" if log_path else ""),
    )


class Spawner:
    """The hub's end of ``hubcontrol.policysocket.spawner``: policy sockets forked from one
    process that imported them once, instead of executed, where no systemd starts them. Each
    then shares the interpreter's and the policy's pages with the others, and starts without
    Python's imports (docs/scaling.md). The spawner is this process's child, started at the
    first policy socket and again if it died; it ends when this process does.

    ``spawn`` answers False when the spawner cannot be used (``HUB_POLICY_SOCKET_FORK=0``, or it
    failed); the caller then executes the command as before."""

    ENV = "HUB_POLICY_SOCKET_FORK"
    TIMEOUT = 15.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._channel: socket.socket | None = None

    def enabled(self) -> bool:
        return os.environ.get(self.ENV, "1").strip() != "0"

    def spawn(self, argv: list[str], log_fd: int, ready_fd: int) -> bool:
        if not self.enabled():
            return False
        request: dict[str, object] = {
            "argv": argv,
            "env": dict(os.environ),
            "log": log_fd >= 0,
            "ready": ready_fd >= 0,
        }
        fds = [fd for fd in (log_fd, ready_fd) if fd >= 0]
        with self._lock:
            try:
                channel = self._channel_locked()
                socket.send_fds(channel, [json.dumps(request).encode()], fds)
                reply = json.loads(channel.recv(65536) or b"{}")
            except (OSError, ValueError) as e:
                log.warning("policy sockets: the spawner failed (%s); starting it as a process", e)
                self._close_locked()
                return False
        if "pid" not in reply:
            log.warning(
                "policy sockets: the spawner refused (%s); starting it as a process",
                reply.get("error", "no answer"),
            )
            return False
        return True

    def _channel_locked(self) -> socket.socket:
        if self._channel is not None and self._proc is not None and self._proc.poll() is None:
            return self._channel
        self._close_locked()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", f"{MODULE}.spawner", str(theirs.fileno())],
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                close_fds=True,
                cwd="/",
            )
        finally:
            theirs.close()
        ours.settimeout(self.TIMEOUT)
        self._channel = ours
        return ours

    def _close_locked(self) -> None:
        if self._channel is not None:
            self._channel.close()  # the spawner sees the end and exits
            self._channel = None
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def prestart(self) -> None:
        """Start the spawner now, in the background, so the first user's start does not wait for
        its imports (a hub that will start policy sockets calls this when it is made)."""
        if not self.enabled():
            return

        def run() -> None:
            with self._lock:
                try:
                    self._channel_locked()
                except OSError as e:
                    log.warning("policy sockets: the spawner did not start (%s)", e)

        threading.Thread(target=run, name="policy-socket-spawner", daemon=True).start()

    def pid(self) -> int | None:
        """The spawner's PID while it runs."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def close(self) -> None:
        with self._lock:
            self._close_locked()


SPAWNER = Spawner()
atexit.register(SPAWNER.close)


def _wait_readable(fd: int, deadline: float) -> None:
    """Until ``fd`` (the ready pipe) has a byte or EOF, or ``deadline``: either way the caller
    then looks for itself."""
    remaining = deadline - time.monotonic()
    if remaining > 0:
        poller = select.poll()  # not select(): the hub holds far more than 1024 descriptors
        poller.register(fd, select.POLLIN)
        if poller.poll(remaining * 1000):
            os.read(fd, 1)


def _open_log(path: str | Path) -> int:
    """The policy socket's log, opened by root without following a link (docs/security.md,
    "Paths root touches")."""
    return safefs.open_own_file(path, os.O_WRONLY | os.O_APPEND, 0o600)


def stop(args: ProxyArgs, timeout: float = 10.0) -> None:
    """Stop the policy socket process (SIGTERM, then SIGKILL) and remove what it leaves."""
    pid = running_pid(args)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while procs.alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if procs.alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    # Bind pins stay (see PolicySocket.serve); the legacy view goes, as it always did.
    unmount_bind_root(default_bind_root(args.listen))
    for path in (args.listen, args.pidfile):
        with contextlib.suppress(OSError, TypeError):
            if path and (path == args.pidfile or stat.S_ISSOCK(os.lstat(path).st_mode)):
                os.unlink(path)


def drop_idle_connections(args: ProxyArgs) -> bool:
    """Ask the policy socket to close idle client connections now (before a CRIU dump: an open
    docker.sock connection in the container makes the dump fail). False when none runs."""
    pid = running_pid(args)
    if pid is None:
        return False
    os.kill(pid, signal.SIGUSR1)
    return True


def systemd_run_argv(args: ProxyArgs, daemon_unit: str, python: str = sys.executable) -> list[str]:
    """Run the policy socket as a transient unit beside ``daemon_unit`` (hosts whose PID 1 is
    systemd): a child of the hub would sit in the hub's own unit and die with every hub restart;
    this unit survives it, and stops with the daemon's unit (``BindsTo=``)."""
    base = daemon_unit.removesuffix(".service")
    # only the prefix: a username may itself contain "-dockerd-" (a-dockerd-b vs a-policy-b)
    unit = base.replace("-dockerd-", "-policy-", 1) if "-dockerd-" in base else f"{base}-policy"
    return [
        "systemd-run",
        "--quiet",
        "--collect",
        f"--unit={unit}.service",
        "--slice=rediacc.slice",
        f"--property=BindsTo={daemon_unit}",
        f"--property=After={daemon_unit}",
        "--property=KillMode=mixed",
        "--property=Restart=on-failure",
        # outside the user's groups, so bounded itself (docs/security.md, "The policy socket")
        "--property=MemoryMax=512M",
        # a transient unit gets a clean environment: the module must be found where the hub's
        # own interpreter finds it (a detached child inherits the hub's environment anyway)
        *([f"--setenv=PYTHONPATH={path}"] if (path := os.environ.get("PYTHONPATH")) else []),
        *command(args, python),
    ]


def _accepts(path: str, tries: int = 1) -> bool:
    """Whether ``path`` accepts a connection (``tries`` attempts, for a busy host: a needless
    restart would cut the user's open docker sessions)."""
    for attempt in range(tries):
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.settimeout(3)
            probe.connect(path)
            return True
        except OSError:
            if attempt + 1 < tries:
                time.sleep(0.2)
        finally:
            probe.close()
    return False
