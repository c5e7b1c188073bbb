"""Per-user dockerd as a systemd unit, for hosts whose PID 1 is systemd (production).

Per user ``u`` with network ID ``n`` two units are written to ``/run/systemd/system`` (runtime
units: only the hub starts them, ``stop`` removes them again, and a reboot clears any left over):

* ``rediacc-hub-dockerd-<u>-<n>.service`` in ``rediacc.slice``: dockerd with ``CPUQuota=`` from the
  template, ``Delegate=yes`` and ``OOMScoreAdjust=-500``, no ``Restart=`` (an idle stop is the
  hub's decision), and the daemon's own allowance ``MemoryMax=``/``TasksMax=``
  (``Limits.daemon_memory``/``daemon_pids``). The template's memory limit is not shared with
  dockerd: that would let the OOM killer take the daemon down with the user's containers; this
  allowance holds only what the daemon itself (dockerd, containerd, the shims) grows to.
  dockerd, containerd and the shims run in the child group ``daemon`` of the unit's group
  (``_JOIN``), which the rules for the daemon's own traffic match; CRIU moves to the sibling
  ``criu`` (``criu_wrapper_text``), so the rules that keep the daemon off loopback do not break
  checkpoints;
* ``rediacc-hub-<u>-<n>.slice`` (``-`` escaped as ``\\x2d``, so it nests under
  ``rediacc-hub.slice`` in ``rediacc.slice``): the containers' ``--cgroup-parent``, with
  ``CPUQuota=``, ``MemoryMax=`` and ``TasksMax=``. dockerd uses the systemd cgroup driver, so each
  container is a scope in this slice.

The whole user is bounded by the sum of the two units' limits.

The network ID in both names makes them unique on the host (as the local supervisor's cgroups
``hub-<u>-<n>``): two hubs with a user of the same name, or a name reused with a new network ID,
never share a unit. A unit is adopted only while its dockerd serves the spec's data-root.
The user's policy socket runs beside the daemon as the transient
``rediacc-hub-policy-<u>-<n>.service`` (``hubcontrol.policysockets.systemd_run_argv``), bound to it.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hubcontrol import safefs
from hubcontrol.errors import DaemonError
from hubcontrol.install import systemd_quote as _quote
from hubcontrol.supervisor import (
    CRIU_GROUP,
    CRIU_WRAPPER_DIR,
    DAEMON_GROUP,
    DaemonSpec,
    DaemonSupervisor,
    containerd_launch,
    containerd_serves,
    containerd_stop_script,
    daemon_config,
    dockerd_argv,
    dockerd_env,
    prepare_daemon_dirs,
    prepare_exec_root,
    private_containerd,
    wait_for_ping,
    write_containerd_config,
    write_criu_wrapper,
    write_daemon_config,
)

log = logging.getLogger(__name__)

UNIT_DIR = Path("/run/systemd/system")
SLICE = "rediacc.slice"
# The first line of every unit file the supervisor writes: GC (hubcontrol.gc.HostProbe) tells
# these runtime units, which only the hub starts, from units an operator configured.
MARKER = "# Written by the hub (hubcontrol.supervisor.systemd); removed when it stops the daemon."
# In the daemon unit's (delegated) cgroup: dockerd, containerd and the shims run in DAEMON_GROUP,
# which the rules for the daemon's own traffic match; CRIU, which runc starts from there, moves to
# the sibling CRIU_GROUP first (``supervisor.criu_wrapper_text``).


def escape(name: str) -> str:
    """systemd-escape for a safe name (only ``-`` needs escaping in ``[a-z0-9-]``)."""
    return name.replace("-", "\\x2d")


def service_name(user: str, net_id: int) -> str:
    """``rediacc-hub-dockerd-<u>-<net_id>.service``: the network ID makes it unique on the host,
    so a user name another hub (or an earlier claim) also uses never names this daemon's unit."""
    return f"rediacc-hub-dockerd-{user}-{net_id}.service"


def legacy_service_name(user: str) -> str:
    """The unit name of hubs before the network ID was part of it (adopted, never written)."""
    return f"rediacc-hub-dockerd-{user}.service"


def slice_name(user: str, net_id: int) -> str:
    return f"rediacc-hub-{escape(f'{user}-{net_id}')}.slice"


def daemon_cgroup_path(user: str, net_id: int) -> str:
    """Where the daemon's group is when systemd's root is the cgroup root (a host's PID 1):
    ``rediacc.slice/<unit>/daemon``. The supervisor asks the running daemon instead
    (``SystemdSupervisor.daemon_cgroup``); this is the fallback and the documentation."""
    return f"{SLICE}/{service_name(user, net_id)}/{DAEMON_GROUP}"


# ExecStart runs dockerd through this: it moves itself into the ``daemon`` child of the unit's
# cgroup v2 group (Delegate=yes: the subtree is the unit's own) and creates the ``criu`` sibling,
# then (on a host with a system containerd) starts the user's own containerd there
# (``supervisor.containerd_launch``), then execs dockerd (same PID, so Type=notify and MainPID are
# dockerd's). On hosts without a v2 hierarchy there is nothing to match, and nothing to move. A
# failed move fails the start.
_JOIN = (
    "g=$(sed -n 's/^0:://p' /proc/self/cgroup); "
    "r=/sys/fs/cgroup; [ -e $r/cgroup.controllers ] || r=$r/unified; "
    'if [ -n "$g" ] && [ -e "$r/cgroup.procs" ]; then '
    f'mkdir -p "$r$g/{DAEMON_GROUP}" "$r$g/{CRIU_GROUP}" && '
    f'echo $$ > "$r$g/{DAEMON_GROUP}/cgroup.procs" || exit 97; fi; '
)


def service_unit(spec: DaemonSpec, wrapper_dir: Path = CRIU_WRAPPER_DIR) -> str:
    """The text of the daemon's service unit."""
    env = dockerd_env(spec, base={})
    # the CRIU wrapper first on dockerd's PATH (it is what runc runs)
    env["PATH"] = f"{wrapper_dir}:{env['PATH']}"
    own_containerd = private_containerd()
    script = _JOIN + (containerd_launch(spec) if own_containerd else "") + 'exec "$@"'
    lines = [
        MARKER,
        "[Unit]",
        f"Description=Rediacc Hub: Docker daemon of {spec.user} (network {spec.net_id})",
        "Documentation=https://github.com/rediacc",
        "After=network-online.target",
        "Wants=network-online.target",
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=notify",
        f"Slice={SLICE}",
        *(f"Environment={_quote(f'{k}={v}')}" for k, v in sorted(env.items())),
        f"ExecStartPre=/bin/mkdir -p {_quote(str(spec.exec_root))} {_quote(str(spec.env_dir))} "
        f"{_quote(str(spec.tmpdir))} {_quote(str(spec.data_root))}",
        "ExecStart="
        + " ".join(_quote(a) for a in ["/bin/sh", "-c", script, "sh", *dockerd_argv(spec)]),
        "ExecReload=/bin/kill -s HUP $MAINPID",
        # KillMode=process stops dockerd only (the shims outlive it, as live-restore wants):
        # the user's own containerd is stopped after it
        *(
            [
                "ExecStopPost="
                + " ".join(_quote(a) for a in ["/bin/sh", "-c", containerd_stop_script(spec)])
            ]
            if own_containerd
            else []
        ),
        "Restart=no",
        "TimeoutStartSec=120",
        "TimeoutStopSec=30",
        "KillMode=process",
        "Delegate=yes",
        "OOMScoreAdjust=-500",
        "LimitNOFILE=1048576",
        "LimitNPROC=infinity",
        "LimitCORE=infinity",
    ]
    if spec.limits.cpu:
        lines.append(f"CPUQuota={spec.limits.cpu}")
    lines += daemon_limit_properties(spec)
    return "\n".join(lines) + "\n"


def daemon_limit_properties(spec: DaemonSpec) -> list[str]:
    """The daemon unit's own allowance (see the module docstring)."""
    return [f"MemoryMax={spec.limits.daemon_memory}", f"TasksMax={spec.limits.daemon_pids}"]


def slice_unit(spec: DaemonSpec) -> str:
    """The text of the slice holding the user's containers (the limits that bite)."""
    lines = [
        MARKER,
        "[Unit]",
        f"Description=Rediacc Hub: containers of {spec.user} (network {spec.net_id})",
        "Before=slices.target",
        "",
        "[Slice]",
    ]
    if spec.limits.cpu:
        lines.append(f"CPUQuota={spec.limits.cpu}")
    if spec.limits.memory:
        lines.append(f"MemoryMax={spec.limits.memory}")
    if spec.limits.pids:
        lines.append(f"TasksMax={spec.limits.pids}")
    return "\n".join(lines) + "\n"


def daemon_json(spec: DaemonSpec) -> dict[str, Any]:
    config = daemon_config(spec, cgroup_parent=slice_name(spec.user, spec.net_id))
    config["exec-opts"] = ["native.cgroupdriver=systemd"]
    return config


def _cgroup2_path(pid: int) -> str | None:
    """The cgroup v2 group of ``pid`` relative to the v2 root (``/proc/<pid>/cgroup``'s ``0::``
    line, as this process's cgroup namespace sees it: what ``iptables -m cgroup --path`` takes)."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:].strip("/") or None
    return None


def _data_root_of(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    for i, arg in enumerate(argv[:-1]):
        if arg == "--data-root":
            return os.path.realpath(argv[i + 1])
    return None


class SystemdSupervisor(DaemonSupervisor):
    """dockerd as ``rediacc-hub-dockerd-<u>-<net_id>.service`` (see the module docstring)."""

    name = "systemd"

    def __init__(
        self,
        unit_dir: Path = UNIT_DIR,
        systemctl: str = "systemctl",
        wrapper_dir: Path = CRIU_WRAPPER_DIR,
    ) -> None:
        self.unit_dir = Path(unit_dir)
        self.systemctl = systemctl
        self.wrapper_dir = Path(wrapper_dir)
        self.users_cpu_weight: int | None = None
        self._weight_set: int | None = None  # what this process last gave rediacc.slice

    def set_users_cpu_weight(self, weight: int | None) -> None:
        self.users_cpu_weight = weight

    def _apply_slice_weight(self) -> None:
        """``CPUWeight=`` on rediacc.slice (a runtime drop-in, as for the users' slices), once
        per value: the users' daemons and containers yield the CPU to the host's services."""
        weight = self.users_cpu_weight
        if weight is None or weight == self._weight_set:
            return
        done = self._ctl("set-property", "--runtime", SLICE, f"CPUWeight={weight}", check=False)
        if done.returncode:
            log.warning(
                "could not set CPUWeight=%s on %s (users keep the host's default weight): %s",
                weight, SLICE, (done.stderr or done.stdout).strip(),
            )  # fmt: skip
            return
        self._weight_set = weight

    def _ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([self.systemctl, *args], capture_output=True, text=True)
        if check and proc.returncode:
            raise DaemonError(
                "Your Docker daemon could not be managed.",
                f"systemctl {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}",
            )
        return proc

    def _state(self, unit: str) -> tuple[str, int | None]:
        """(ActiveState, MainPID or None) of ``unit``."""
        out = self._ctl(
            "show", "-p", "ActiveState", "-p", "MainPID", unit, check=False
        ).stdout.splitlines()
        props = dict(line.split("=", 1) for line in out if "=" in line)
        pid = props.get("MainPID", "0")
        main = int(pid) if pid.isdigit() and pid != "0" else None
        return props.get("ActiveState", "unknown"), main

    def _runs(self, unit: str, spec: DaemonSpec) -> tuple[bool, int | None]:
        """Whether ``unit`` is active, and its dockerd's PID when that dockerd serves ``spec``'s
        data-root (None when it runs another one: never ours to adopt)."""
        state, pid = self._state(unit)
        if state != "active":
            return False, None
        if pid is None or _data_root_of(pid) != os.path.realpath(spec.data_root):
            return True, None
        return True, pid

    def unit(self, spec: DaemonSpec) -> str:
        """The service unit running (or to run) ``spec``'s daemon: its own name, or the name an
        older hub gave it (``legacy_service_name``) while such a unit runs this very data-root,
        so an upgrade adopts it instead of starting a second dockerd on the same data."""
        legacy = legacy_service_name(spec.user)
        active, pid = self._runs(legacy, spec)
        if active and pid is not None:
            return legacy
        return service_name(spec.user, spec.net_id)

    def write_units(self, spec: DaemonSpec) -> bool:
        """Write the unit files; True when any changed (a daemon-reload is then needed)."""
        self.unit_dir.mkdir(parents=True, exist_ok=True)
        changed = False
        units = (
            (service_name(spec.user, spec.net_id), service_unit(spec, self.wrapper_dir)),
            (slice_name(spec.user, spec.net_id), slice_unit(spec)),
        )
        for name, text in units:
            path = self.unit_dir / name
            if not path.exists() or path.read_text() != text:
                safefs.write_atomic(path, text, mode=0o644)
                changed = True
        prepare_daemon_dirs(spec)
        write_criu_wrapper(self.wrapper_dir)
        write_daemon_config(spec, daemon_json(spec))
        if private_containerd():
            prepare_exec_root(spec)
            write_containerd_config(spec)
        return changed

    def is_running(self, spec: DaemonSpec) -> bool:
        active, pid = self._runs(self.unit(spec), spec)
        return active and pid is not None and containerd_serves(spec, pid)

    def adopt(self, spec: DaemonSpec) -> bool:
        return self.is_running(spec)

    def container_cgroup_parent(self, spec: DaemonSpec) -> str | None:
        return slice_name(spec.user, spec.net_id)

    def daemon_cgroup(self, spec: DaemonSpec) -> str | None:
        """The group dockerd really runs in (``<unit's group>/daemon``), read from its process:
        systemd decides where the unit's group is (a systemd in a container nests it below the
        container's group). Before the daemon runs: where a host's systemd puts it."""
        _state, pid = self._state(self.unit(spec))
        found = _cgroup2_path(pid) if pid is not None else None
        return found or daemon_cgroup_path(spec.user, spec.net_id)

    def apply_limits(self, spec: DaemonSpec) -> None:
        props = []
        if spec.limits.cpu:
            props.append(f"CPUQuota={spec.limits.cpu}")
        if spec.limits.memory:
            props.append(f"MemoryMax={spec.limits.memory}")
        if spec.limits.pids:
            props.append(f"TasksMax={spec.limits.pids}")
        if self.is_running(spec):
            if props:
                self._ctl(
                    "set-property",
                    "--runtime",
                    slice_name(spec.user, spec.net_id),
                    *props,
                    check=False,
                )
            self._ctl(
                "set-property", "--runtime", service_name(spec.user, spec.net_id),
                *daemon_limit_properties(spec), check=False,
            )  # fmt: skip

    def start(
        self,
        spec: DaemonSpec,
        timeout: float = 120.0,
        *,
        while_starting: Callable[[], None] | None = None,
    ) -> None:
        unit = self.unit(spec)
        active, pid = self._runs(unit, spec)
        if active and pid is not None and not containerd_serves(spec, pid):
            log.warning("%s: the user's own containerd is gone; restarting the daemon", unit)
            self._ctl("stop", unit, check=False)
            active, pid = self._runs(unit, spec)
        if active and pid is not None:
            if while_starting is not None:
                while_starting()
            return
        if active:
            raise DaemonError(
                "Your Docker daemon could not be started.",
                f"unit {unit} is active but does not run {spec.data_root}: another daemon "
                "holds this user's unit name and network ID; it is not adopted. Stop that unit "
                "(systemctl stop) or check /var/lib/rediacc/netids for a duplicate claim",
            )
        if self.write_units(spec):
            self._ctl("daemon-reload")
        self._apply_slice_weight()
        self._ctl("reset-failed", unit, check=False)
        self._ctl("start", unit)
        try:
            if while_starting is not None:
                # the unit's group is systemd's to make: it exists once the unit runs (dockerd
                # is Type=notify, so here it is ready already and nothing overlaps)
                while_starting()
            wait_for_ping(spec, lambda: self._state(unit)[0] in ("active", "activating"), timeout)
        except BaseException:
            if while_starting is not None:
                self._ctl("stop", unit, check=False)
            raise
        if spec.env_socket and spec.env_socket_path.exists():
            spec.env_socket_path.chmod(0o666)

    def stop(self, spec: DaemonSpec, timeout: float = 30.0) -> None:
        """Stop the daemon's unit and the user's slice (anything left in it), then remove the
        unit files and runtime drop-ins: a stopped user leaves no unit behind (``hub gc`` and
        ``systemctl list-units`` see nothing of them until their next start)."""
        unit = self.unit(spec)
        service = service_name(spec.user, spec.net_id)
        slice_ = slice_name(spec.user, spec.net_id)
        active, pid = self._runs(unit, spec)
        if active and pid is None:
            return  # another daemon's unit (see start): neither stopped nor removed
        self._ctl("stop", unit, slice_, check=False)
        self._ctl("revert", unit, slice_, check=False)  # set-property --runtime drop-ins
        for name in {service, slice_, unit}:
            (self.unit_dir / name).unlink(missing_ok=True)
        self._ctl("daemon-reload", check=False)
        self._ctl("reset-failed", unit, check=False)

    def describe(self, spec: DaemonSpec) -> dict[str, Any]:
        unit = self.unit(spec)
        state, pid = self._state(unit)
        return {
            "supervisor": self.name,
            "unit": unit,
            "slice": slice_name(spec.user, spec.net_id),
            "pid": pid,
            "state": state,
            "socket": str(spec.socket),
            "cgroup": self.daemon_cgroup(spec),
            "log": f"journalctl -u {unit}",
        }
