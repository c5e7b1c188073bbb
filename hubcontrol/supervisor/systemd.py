"""Per-user dockerd as a systemd unit, for hosts whose PID 1 is systemd (production).

Per user ``u`` (network ID ``n``) two units are written to ``/run/systemd/system`` (runtime units:
gone after a reboot, when no daemon runs anyway; the hub writes them again on the next login):

* ``rediacc-hub-dockerd-<u>.service`` in ``rediacc.slice``: dockerd with ``CPUQuota=`` from the
  template, ``Delegate=yes`` and ``OOMScoreAdjust=-500``, no ``Restart=`` (an idle stop is the
  hub's decision), and the daemon's own allowance ``MemoryMax=``/``TasksMax=``
  (``Limits.daemon_memory``/``daemon_pids``). The template's memory limit is not shared with
  dockerd: that would let the OOM killer take the daemon down with the user's containers; this
  allowance holds only what the daemon itself (dockerd, containerd, the shims) grows to;
* ``rediacc-hub-<u>.slice`` (``-`` in ``u`` escaped as ``\\x2d``, so it nests under
  ``rediacc-hub.slice`` in ``rediacc.slice``): the containers' ``--cgroup-parent``, with
  ``CPUQuota=``, ``MemoryMax=`` and ``TasksMax=``. dockerd uses the systemd cgroup driver, so each
  container is a scope in this slice.

The whole user is bounded by the sum of the two units' limits.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from hubcontrol.errors import DaemonError
from hubcontrol.supervisor import (
    DaemonSpec,
    DaemonSupervisor,
    daemon_config,
    dockerd_argv,
    dockerd_env,
    prepare_daemon_dirs,
    wait_for_ping,
    write_daemon_config,
)

UNIT_DIR = Path("/run/systemd/system")
SLICE = "rediacc.slice"


def escape(name: str) -> str:
    """systemd-escape for a safe name (only ``-`` needs escaping in ``[a-z0-9-]``)."""
    return name.replace("-", "\\x2d")


def service_name(user: str) -> str:
    return f"rediacc-hub-dockerd-{user}.service"


def slice_name(user: str) -> str:
    return f"rediacc-hub-{escape(user)}.slice"


def daemon_cgroup_path(user: str) -> str:
    """The daemon unit's cgroup, relative to the v2 root (``iptables -m cgroup --path``): a
    service in ``Slice=rediacc.slice`` lives at ``rediacc.slice/<unit>``, with containerd and the
    shims it spawns."""
    return f"{SLICE}/{service_name(user)}"


def _quote(arg: str) -> str:
    # systemd's ExecStart= quoting is close to the shell's for plain arguments; "%" and "$" are
    # specifiers/variables there and must be doubled.
    return shlex.quote(arg.replace("%", "%%").replace("$", "$$"))


def service_unit(spec: DaemonSpec) -> str:
    """The text of the daemon's service unit."""
    env = dockerd_env(spec, base={})
    lines = [
        "[Unit]",
        f"Description=Rediacc Hub: Docker daemon of {spec.user} (network {spec.net_id})",
        "Documentation=https://github.com/rediacc (docs/environments.md)",
        "After=network-online.target",
        "Wants=network-online.target",
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=notify",
        f"Slice={SLICE}",
        *(f'Environment="{k}={v}"' for k, v in sorted(env.items())),
        f"ExecStartPre=/bin/mkdir -p {_quote(str(spec.exec_root))} {_quote(str(spec.env_dir))} "
        f"{_quote(str(spec.tmpdir))} {_quote(str(spec.data_root))}",
        "ExecStart=" + " ".join(_quote(a) for a in dockerd_argv(spec)),
        "ExecReload=/bin/kill -s HUP $MAINPID",
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
        "[Unit]",
        f"Description=Rediacc Hub: containers of {spec.user}",
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


def daemon_json(spec: DaemonSpec) -> dict:
    config = daemon_config(spec, cgroup_parent=slice_name(spec.user))
    config["exec-opts"] = ["native.cgroupdriver=systemd"]
    return config


class SystemdSupervisor(DaemonSupervisor):
    """dockerd as ``rediacc-hub-dockerd-<u>.service`` (see the module docstring)."""

    name = "systemd"

    def __init__(self, unit_dir: Path = UNIT_DIR, systemctl: str = "systemctl") -> None:
        self.unit_dir = Path(unit_dir)
        self.systemctl = systemctl

    def _ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([self.systemctl, *args], capture_output=True, text=True)
        if check and proc.returncode:
            raise DaemonError(
                "Your Docker daemon could not be managed.",
                f"systemctl {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}",
            )
        return proc

    def write_units(self, spec: DaemonSpec) -> bool:
        """Write the unit files; True when any changed (a daemon-reload is then needed)."""
        self.unit_dir.mkdir(parents=True, exist_ok=True)
        changed = False
        for name, text in ((service_name(spec.user), service_unit(spec)),
                           (slice_name(spec.user), slice_unit(spec))):  # fmt: skip
            path = self.unit_dir / name
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
                changed = True
        prepare_daemon_dirs(spec)
        write_daemon_config(spec, daemon_json(spec))
        return changed

    def is_running(self, spec: DaemonSpec) -> bool:
        return (
            self._ctl("is-active", "--quiet", service_name(spec.user), check=False).returncode == 0
        )

    def adopt(self, spec: DaemonSpec) -> bool:
        return self.is_running(spec)

    def container_cgroup_parent(self, spec: DaemonSpec) -> str | None:
        return slice_name(spec.user)

    def daemon_cgroup(self, spec: DaemonSpec) -> str | None:
        return daemon_cgroup_path(spec.user)

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
                self._ctl("set-property", "--runtime", slice_name(spec.user), *props, check=False)
            self._ctl(
                "set-property", "--runtime", service_name(spec.user),
                *daemon_limit_properties(spec), check=False,
            )  # fmt: skip

    def start(self, spec: DaemonSpec, timeout: float = 120.0) -> None:
        if self.is_running(spec):
            return
        if self.write_units(spec):
            self._ctl("daemon-reload")
        self._ctl("start", service_name(spec.user))
        wait_for_ping(spec, lambda: self.is_running(spec), timeout)
        if spec.env_socket and spec.env_socket_path.exists():
            spec.env_socket_path.chmod(0o666)

    def stop(self, spec: DaemonSpec, timeout: float = 30.0) -> None:
        self._ctl("stop", service_name(spec.user), check=False)

    def describe(self, spec: DaemonSpec) -> dict:
        show = self._ctl("show", "-p", "MainPID", "-p", "ActiveState", "--value",
                         service_name(spec.user), check=False).stdout.split()  # fmt: skip
        pid = int(show[0]) if show and show[0].isdigit() and show[0] != "0" else None
        return {
            "supervisor": self.name,
            "unit": service_name(spec.user),
            "slice": slice_name(spec.user),
            "pid": pid,
            "state": show[1] if len(show) > 1 else "unknown",
            "socket": str(spec.socket),
            "log": f"journalctl -u {service_name(spec.user)}",
        }
