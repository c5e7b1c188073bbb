"""Per-user dockerd as a detached process plus cgroups, for hosts whose PID 1 is not systemd.

The daemon runs in its own session with its output in its log file, so it keeps running when the
hub process exits or restarts; it is found again through its pidfile (checked against the
process's command line, so a recycled PID is never mistaken for it).

Cgroups (v2 where the unified hierarchy has controllers, else v1 per controller)::

    rediacc.slice/hub-<u>-<net_id>/              cpu limit; memory and pids: the sum of the two below
    rediacc.slice/hub-<u>-<net_id>/daemon        dockerd, containerd, shims: the daemon's allowance
    rediacc.slice/hub-<u>-<net_id>/containers    the template's memory and pids limits; the
                                                 daemon's --cgroup-parent

The template's memory limit sits on the containers' group, and the daemon has an allowance of its
own (``Limits.daemon_memory``/``daemon_pids``), not one limit shared by both: a container that
passes its limit is OOM-killed inside the containers' group and the daemon never feels it, and
a daemon the user makes grow (the policy socket caps what a request may make it hold, but images
are unbounded) is killed inside its own group, where live-restore keeps the containers running.
The parent's limits are the sum, so the whole user is bounded by one number the host can budget.

On hybrid hosts (v1 controllers, the v2 hierarchy mounted at ``/sys/fs/cgroup/unified``) the
daemon also joins ``rediacc.slice/hub-<u>-<net_id>/daemon`` there: the network rules for the
daemon's own traffic match that v2 group (``network.apply_daemon_isolation``). CRIU, which runc
starts from the daemon's group, moves to the sibling v2 group ``criu``: the CRIU wrapper both
supervisors put first on dockerd's PATH (``supervisor.criu_wrapper_text``, in
``CRIU_WRAPPER_DIR``, not under /run, which Debian mounts noexec).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hubcontrol import procs, safefs, storage
from hubcontrol.errors import DaemonError
from hubcontrol.supervisor import (
    CPU_PERIOD_US,
    CRIU_WRAPPER_DIR,
    DaemonSpec,
    DaemonSupervisor,
    Limits,
    containerd_launch,
    containerd_serves,
    daemon_config,
    dockerd_argv,
    dockerd_env,
    own_containerd_pid,
    prepare_daemon_dirs,
    prepare_exec_root,
    private_containerd,
    wait_for_ping,
    write_containerd_config,
    write_criu_wrapper,
    write_daemon_config,
)

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
SLICE = "rediacc.slice"
V1_CONTROLLERS = ("cpu", "memory", "pids")


def group_name(user: str, net_id: int) -> str:
    """The user's cgroup name: the network ID makes it unique on the host, so two hubs (or two
    test runs) that both have a user ``alice`` never share, limit or kill each other's groups."""
    return f"{user}-{net_id}"


def v1_shares(weight: int) -> int:
    """cgroup v1 ``cpu.shares`` for a v2 ``cpu.weight`` (100 -> 1024, as systemd maps them)."""
    return max(2, min(262144, round(weight * 1024 / 100)))


def _group(spec: DaemonSpec) -> str:
    return group_name(spec.user, spec.net_id)


def group_path(name: str) -> str:
    return f"/{SLICE}/hub-{name}"


class Cgroups:
    """The cgroup tree of one user, on v2 or v1 (see the module docstring)."""

    def __init__(self, root: Path = CGROUP_ROOT) -> None:
        self.root = root
        # rediacc.slice's CPU weight (cgroup v2 scale), written whenever a user's group is made;
        # None leaves the slice as the operator set it (DaemonSupervisor.set_users_cpu_weight)
        self.slice_cpu_weight: int | None = None
        unified = root / "cgroup.controllers"
        self.v2 = unified.exists()
        if self.v2:
            self.available = set(unified.read_text().split())
        else:
            self.available = {c for c in V1_CONTROLLERS if (root / c / "cgroup.procs").exists()}
        # the v2 hierarchy, for matching the daemon's sockets (none on pure v1 hosts)
        self.unified: Path | None = root
        if not self.v2:
            hybrid = root / "unified"
            self.unified = hybrid if (hybrid / "cgroup.procs").exists() else None

    def daemon_cgroup(self, user: str) -> str | None:
        """The daemon's group relative to the v2 root (what ``iptables -m cgroup --path`` takes),
        None without a v2 hierarchy."""
        if self.unified is None:
            return None
        return group_path(user).lstrip("/") + "/daemon"

    def _unified_daemon_dir(self, user: str) -> Path | None:
        if self.v2 or self.unified is None:
            return None  # on v2 the daemon group is among dirs() already
        return self.unified / group_path(user).lstrip("/") / "daemon"

    def join_daemon(self, user: str) -> None:
        """Move the processes of the user's v1 daemon group into its v2 daemon group (a daemon
        started before the v2 group existed, adopted after a hub upgrade)."""
        target = self._unified_daemon_dir(user)
        if target is None:
            return
        target.mkdir(parents=True, exist_ok=True)
        pids: set[int] = set()
        for base in self.dirs(user, "daemon"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(p) for p in (base / "cgroup.procs").read_text().split())
        for pid in sorted(pids):
            with contextlib.suppress(OSError):  # exited meanwhile
                (target / "cgroup.procs").write_text(str(pid))

    def dirs(self, user: str, leaf: str = "") -> list[Path]:
        rel = group_path(user).lstrip("/") + (f"/{leaf}" if leaf else "")
        if self.v2:
            return [self.root / rel]
        return [self.root / c / rel for c in sorted(self.available)]

    def _v1(self, controller: str, user: str, leaf: str = "") -> Path | None:
        if controller not in self.available:
            return None
        return self.root / controller / group_path(user).lstrip("/") / leaf

    def create(self, user: str) -> None:
        if self.v2:
            wanted = [c for c in ("cpu", "memory", "pids") if c in self.available]
            enable = " ".join(f"+{c}" for c in wanted)
            slice_dir = self.root / SLICE
            top = self.root / group_path(user).lstrip("/")
            for d in (slice_dir, top, top / "daemon", top / "containers", top / "criu"):
                d.mkdir(exist_ok=True)
            for d in (self.root, slice_dir, top):
                if enable:
                    with contextlib.suppress(OSError):
                        (d / "cgroup.subtree_control").write_text(enable)
            if self.slice_cpu_weight is not None and "cpu" in self.available:
                self._write_weight(slice_dir / "cpu.weight", str(self.slice_cpu_weight))
        else:
            for base in self.dirs(user):
                (base / "daemon").mkdir(parents=True, exist_ok=True)
                (base / "containers").mkdir(parents=True, exist_ok=True)
            if self.slice_cpu_weight is not None and "cpu" in self.available:
                shares = v1_shares(self.slice_cpu_weight)
                self._write_weight(self.root / "cpu" / SLICE / "cpu.shares", str(shares))
            unified = self._unified_daemon_dir(user)
            if unified is not None:
                unified.mkdir(parents=True, exist_ok=True)
                (unified.parent / "criu").mkdir(exist_ok=True)

    def procs_files(self, user: str) -> list[Path]:
        """Where the daemon's PID is written before it execs dockerd."""
        unified = self._unified_daemon_dir(user)
        extra = [unified / "cgroup.procs"] if unified is not None else []
        return [d / "cgroup.procs" for d in self.dirs(user, "daemon")] + extra

    def apply(self, user: str, limits: Limits) -> None:
        """Write ``limits``: the template's on the containers' group, the daemon's allowance on
        the daemon's group, their sum on the user's group (unlimited when the template's is)."""
        cpus = limits.cpus
        quota = None if cpus is None else int(cpus * CPU_PERIOD_US)
        for leaf, memory, pids in (
            ("", limits.total_memory, limits.total_pids),
            ("daemon", limits.daemon_memory, limits.daemon_pids),
            ("containers", limits.memory_bytes, limits.pids),
        ):
            if self.v2:
                d = self.root / group_path(user).lstrip("/") / leaf
                if not leaf:
                    self._write(
                        d / "cpu.max", f"{'max' if quota is None else quota} {CPU_PERIOD_US}"
                    )
                self._write(d / "memory.max", "max" if memory is None else str(memory))
                self._write(d / "pids.max", "max" if pids is None else str(pids))
                continue
            cpu = self._v1("cpu", user)
            if not leaf and cpu is not None:
                self._write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                self._write(cpu / "cpu.cfs_quota_us", "-1" if quota is None else str(quota))
            mem = self._v1("memory", user, leaf)
            if mem is not None:
                self._write(mem / "memory.limit_in_bytes", "-1" if memory is None else str(memory))
            pid = self._v1("pids", user, leaf)
            if pid is not None:
                self._write(pid / "pids.max", "max" if pids is None else str(pids))

    def read(self, user: str) -> dict[str, Any]:
        """The limits in force, as the kernel reports them (for status pages and tests): the
        containers' group under the plain names, the daemon's under ``daemon.``, the whole
        user's under ``total.``."""
        out: dict[str, Any] = {}
        top = group_path(user).lstrip("/")
        if self.v2:
            base = self.root / top
            files = [("cpu.max", base / "cpu.max")]
            for prefix, leaf in (("", "containers"), ("daemon.", "daemon"), ("total.", "")):
                for name in ("memory.max", "pids.max"):
                    files.append((prefix + name, base / leaf / name))
        else:
            files = []
            if "cpu" in self.available:
                files.append(("cpu.cfs_quota_us", self.root / "cpu" / top / "cpu.cfs_quota_us"))
            for prefix, leaf in (("", "containers"), ("daemon.", "daemon"), ("total.", "")):
                for ctl, name in (("memory", "memory.limit_in_bytes"), ("pids", "pids.max")):
                    if ctl in self.available:
                        files.append((prefix + name, self.root / ctl / top / leaf / name))
        for key, path in files:
            with contextlib.suppress(OSError):
                out[key] = path.read_text().strip()
        return out

    def pids(self, user: str) -> set[int]:
        found: set[int] = set()
        for base in self.dirs(user):
            for members in base.rglob("cgroup.procs") if base.exists() else ():
                with contextlib.suppress(OSError, ValueError):
                    found.update(int(p) for p in members.read_text().split())
        return found

    def remove(self, user: str, timeout: float = 5.0) -> bool:
        """Remove the user's groups (deepest first); True when none is left.

        A group whose last process just exited can stay busy for a moment (the kernel releases
        it asynchronously), so busy groups are retried until ``timeout``.
        """
        rel = group_path(user).lstrip("/")
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            if self.v2:
                bases = [self.root / rel]
            else:
                # runc creates the cgroup parent in every mounted hierarchy, not only ours
                bases = [p / rel for p in self.root.iterdir() if (p / rel).is_dir()]
            left = False
            for base in bases:
                if not base.exists():
                    continue
                dirs = [p for p in base.rglob("*") if p.is_dir()]
                for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True) + [base]:
                    try:
                        d.rmdir()
                    except FileNotFoundError:
                        pass
                    except OSError:
                        left = True
            if not left or time.monotonic() > deadline:
                return not left
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    @staticmethod
    def _write_weight(path: Path, value: str) -> None:
        """The slice's weight is the host's comfort, not a user's bound: a host that will not
        take it (no cpu controller delegated here) logs it and starts the user anyway."""
        try:
            path.write_text(value)
        except OSError as e:
            log.warning("could not give %s the CPU weight %s (users keep the default): %s",
                        path.parent, value, e)  # fmt: skip

    @staticmethod
    def _write(path: Path, value: str) -> None:
        try:
            path.write_text(value)
        except OSError as e:
            raise DaemonError(
                "The hub could not apply your resource limits.", f"writing {value!r} to {path}: {e}"
            ) from None


LOG_KEEP_BYTES = 10 << 20


def _rotate(log: Path) -> None:
    """Keep one previous log (``dockerd.log.1``) once the log passes 10 MiB."""
    with contextlib.suppress(OSError):
        if log.stat().st_size > LOG_KEEP_BYTES:
            os.replace(log, log.with_name(log.name + ".1"))


class LocalSupervisor(DaemonSupervisor):
    """dockerd as a detached child process, limited by cgroups (see the module docstring)."""

    name = "local"

    def __init__(
        self, cgroups: Cgroups | None = None, wrapper_dir: Path = CRIU_WRAPPER_DIR
    ) -> None:
        self.cgroups = cgroups or Cgroups()
        self.wrapper_dir = Path(wrapper_dir)

    def set_users_cpu_weight(self, weight: int | None) -> None:
        self.cgroups.slice_cpu_weight = weight

    # -- finding the daemon -------------------------------------------------------------------

    def pid(self, spec: DaemonSpec) -> int | None:
        """The PID of the running dockerd of ``spec``, checked against its command line."""
        try:
            pid = int(spec.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        if not procs.alive(pid, reap=True):
            return None
        argv = procs.cmdline(pid)
        if not argv or not argv[0].endswith("dockerd") or str(spec.pidfile) not in argv:
            return None
        if not containerd_serves(spec, pid):
            return None  # its own containerd is gone: stopped and started again (start)
        return pid

    def is_running(self, spec: DaemonSpec) -> bool:
        return self.pid(spec) is not None

    def adopt(self, spec: DaemonSpec) -> bool:
        if not self.is_running(spec):
            return False
        self.cgroups.join_daemon(_group(spec))
        return True

    def daemon_cgroup(self, spec: DaemonSpec) -> str | None:
        """The daemon's cgroup v2 group, relative to the v2 root (for the OUTPUT rules)."""
        return self.cgroups.daemon_cgroup(_group(spec))

    def container_cgroup_parent(self, spec: DaemonSpec) -> str | None:
        return f"{group_path(_group(spec))}/containers"

    def describe(self, spec: DaemonSpec) -> dict[str, Any]:
        return {
            "supervisor": self.name,
            "pid": self.pid(spec),
            "socket": str(spec.socket),
            "cgroup": group_path(_group(spec)),
            "limits": self.cgroups.read(_group(spec)),
            "log": str(spec.log),
        }

    # -- lifecycle ------------------------------------------------------------------------------

    def apply_limits(self, spec: DaemonSpec) -> None:
        self.cgroups.create(_group(spec))
        self.cgroups.apply(_group(spec), spec.limits)

    def start(
        self,
        spec: DaemonSpec,
        timeout: float = 60.0,
        *,
        while_starting: Callable[[], None] | None = None,
    ) -> None:
        if self.is_running(spec):
            if while_starting is not None:
                while_starting()
            return
        prepare_daemon_dirs(spec)
        prepare_exec_root(spec)
        self._cleanup_stale(spec)
        self.apply_limits(spec)
        config = daemon_config(spec, cgroup_parent=self.container_cgroup_parent(spec))
        write_daemon_config(spec, config)
        own_containerd = ""
        if private_containerd():
            write_containerd_config(spec)
            own_containerd = containerd_launch(spec)
        # Join the cgroups before exec, so containerd and the shims dockerd spawns start there;
        # record our PID (dockerd's, after exec) before dockerd writes its own pidfile. The
        # shell writes it in the exec-root, root's 0700 dir: a redirect follows links.
        launcher = spec.exec_root / "launcher.pid"
        launcher.unlink(missing_ok=True)
        joins = " ".join(shlex.quote(str(p)) for p in self.cgroups.procs_files(_group(spec)))
        script = (
            f"echo $$ > {shlex.quote(str(launcher))}; "
            f'for f in {joins}; do echo $$ > "$f" || exit 97; done; {own_containerd}exec "$@"'
        )
        env = dockerd_env(spec)
        write_criu_wrapper(self.wrapper_dir)  # what runc runs as CRIU: first on dockerd's PATH
        env["PATH"] = f"{self.wrapper_dir}:{env['PATH']}"
        # setsid --fork: dockerd is not our child, so it outlives the hub and is never a zombie
        # of ours; its output goes to its log file.
        argv = ["setsid", "--fork", "/bin/sh", "-c", script, "sh", *dockerd_argv(spec)]
        _rotate(spec.log)
        log_fd = safefs.open_own_file(spec.log, os.O_WRONLY | os.O_APPEND, 0o600)
        with os.fdopen(log_fd, "ab") as log:
            subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                check=True,
                close_fds=True,
            )
        pid = self._launched_pid(launcher)
        try:
            if while_starting is not None:
                # its groups exist (apply_limits, above): this runs beside dockerd's own start
                while_starting()
            wait_for_ping(spec, lambda: pid is not None and procs.alive(pid, reap=True), timeout)
        except BaseException:
            if pid is not None:
                self._terminate(pid, 5.0)
            raise
        self._open_env_socket(spec)

    def _open_env_socket(self, spec: DaemonSpec) -> None:
        # The environment's user is not root: it reaches the socket through the env directory,
        # which only that user's container mounts (/run/rediacc/hub is root-only on the host).
        if spec.env_socket and spec.env_socket_path.exists():
            os.chmod(spec.env_socket_path, 0o666)

    def stop(self, spec: DaemonSpec, timeout: float = 30.0) -> None:
        pid = self.pid(spec)
        if pid is not None:
            self._terminate(pid, timeout)
        # the user's own containerd (private_containerd), after the dockerd that used it
        own = own_containerd_pid(spec)
        if own is not None:
            self._terminate(own, min(timeout, 10.0))
        self._cleanup_stale(spec)
        self.cgroups.remove(_group(spec))

    @staticmethod
    def _launched_pid(launcher: Path, timeout: float = 5.0) -> int | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                return int(launcher.read_text().strip())
            time.sleep(0.01)
        return None

    def _terminate(self, pid: int, timeout: float) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not self._wait_gone(pid, timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_gone(pid, 10.0)

    @staticmethod
    def _wait_gone(pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        delay = 0.02
        while procs.alive(pid, reap=True):
            if time.monotonic() > deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 1.5, 0.1)
        return True

    def _cleanup_stale(self, spec: DaemonSpec) -> None:
        """What a stopped or crashed dockerd leaves: leftover processes, mounts, sockets."""
        leftovers = self.cgroups.pids(_group(spec))
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in leftovers:
            self._wait_gone(pid, 5.0)
        storage.unmount_under(spec.exec_root / "netns")
        storage.unmount_under(spec.data_root)
        # dockerd refuses to start while its pidfile names a process that still exists, and a
        # killed daemon may linger as a zombie until init reaps it.
        if self.pid(spec) is None:
            spec.pidfile.unlink(missing_ok=True)
            (spec.exec_root / "containerd" / "containerd.pid").unlink(missing_ok=True)
        # (the environment's socket only when dockerd serves it: else it is the policy socket's)
        for sock in (spec.socket, spec.env_socket_path) if spec.env_socket else (spec.socket,):
            with contextlib.suppress(OSError):
                if sock.is_socket():
                    sock.unlink()
        if self.pid(spec) is None:
            # containerd leaves full memory images (ctrd-checkpoint*) there after restores
            with contextlib.suppress(FileNotFoundError), os.scandir(spec.tmpdir) as entries:
                for entry in entries:
                    storage.remove_path(Path(entry.path))
