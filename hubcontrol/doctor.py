"""Host prerequisites: what ``hub doctor`` reports and what ``hub start``/``hub install`` check first.

Each check is a module-level function that reads the host under a ``root`` directory (``/`` in
production, a temporary tree in tests) or takes the output of a command, and returns one
``Check``: its status, what was found, and the exact command that fixes it.

Statuses:

* ``fail``: the hub cannot work as documented. ``hub start`` and ``hub install`` stop, ``hub
  doctor`` exits non-zero. These are: no ``dockerd`` (or one older than 20.10), no
  ``/usr/bin/tini-static`` (every environment runs with ``--init``), no ``iptables`` or
  ``ip6tables`` (the isolation rules), no cgroup v2 hierarchy (the rules for a daemon's own
  traffic match its v2 group: without one that traffic is not isolated), cgroup v2 without the
  cpu, memory and pids controllers (the hub's limit writes fail), a BTRFS workspace dir without
  the ``btrfs`` command (data-roots are subvolumes made with it), and, when checkpointing is
  on, a missing CRIU, ``runc.conf`` without ``tcp-established`` or io_uring open to containers.
* ``warn``: the hub works, with less. Checkpoint prerequisites when checkpointing is off or not
  known (``hub doctor`` without ``--checkpoint``), CAP_SYS_RESOURCE (without it only root
  environments can be checkpointed), a workspace dir neither on BTRFS nor XFS (each new user
  loads the template image instead of getting a snapshot of its seed), cgroup v1 without one of
  the limit controllers (that limit is not enforced), iptables' legacy backend, a CRIU or dockerd
  other than the tested versions.
* ``ok``.

Checks about a feature that is off (checkpointing when ``checkpoint`` is False) are left out.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hubcontrol import storage
from hubcontrol.checkpoint import (
    CAP_SYS_RESOURCE,
    host_can_dump_other_users,
    non_root_checkpoints,
)
from hubcontrol.supervisor import CRIU_BIN, INIT_PATH, SYSTEM_CONTAINERD
from hubcontrol.supervisor.local import Cgroups

if TYPE_CHECKING:
    from hubcontrol.config import HubConfig

OK, WARN, FAIL = "ok", "warn", "fail"

CRIU_VERSION = "4.2.1"  # pinned: hubcontrol/hostsetup.py installs exactly this
RUNC_CONF = "etc/criu/runc.conf"
IO_URING_SYSCTL = "proc/sys/kernel/io_uring_disabled"
SYSCTL_CONF = "etc/sysctl.d/60-rediacc-hub.conf"
LIMIT_CONTROLLERS = ("cpu", "memory", "pids")
MIN_DOCKERD = (20, 10)
SETUP = "hub install --setup-host"  # does every fix below that a command can do


@dataclass(frozen=True)
class Check:
    """One prerequisite: ``status`` ok/warn/fail, ``detail`` what was found (and why it matters),
    ``fix`` the command that fixes it ("" when ok or when no command can), ``needed_for`` what
    depends on it: "hub", "checkpoint" or "seeds"."""

    name: str
    status: str
    detail: str
    fix: str = ""
    needed_for: str = "hub"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _under(root: Path, path: str) -> Path:
    return Path(root) / path.lstrip("/")


def _checkpoint_problem(checkpoint: bool | None) -> str:
    """A missing checkpoint prerequisite fails when checkpointing is on, else it is a warning."""
    return FAIL if checkpoint else WARN


def _off(checkpoint: bool | None) -> str:
    return "" if checkpoint else " (needed only with --checkpoint or rediacc.hub.checkpoint=true)"


# -- the checks (pure: files under root, or a command's output) -------------------------------


def check_tini(root: Path = Path("/")) -> Check:
    """``/usr/bin/tini-static``: the per-user daemons' ``init-path``; every environment runs with
    ``--init``, and a restored one needs the same static init it was dumped with."""
    path = _under(root, INIT_PATH)
    if path.is_file() and os.access(path, os.X_OK):
        return Check("tini-static", OK, f"{INIT_PATH} present")
    return Check(
        "tini-static",
        FAIL,
        f"{INIT_PATH} is missing: every environment container runs with --init, which the "
        "per-user daemons point at it",
        "apt-get install -y tini",
    )


def check_criu(version_output: str | None, checkpoint: bool | None = None) -> Check:
    """CRIU in ``/opt/rediacc/criu`` (first on every per-user dockerd's PATH): ``version_output``
    is what ``criu --version`` printed, None when it is missing or did not run."""
    exe = f"{CRIU_BIN}/criu"
    if version_output is None:
        return Check(
            "CRIU",
            _checkpoint_problem(checkpoint),
            f"{exe} is missing or does not run: idle environments cannot be checkpointed"
            + _off(checkpoint),
            SETUP,
            "checkpoint",
        )
    found = re.search(r"^Version:\s*(\S+)", version_output, re.MULTILINE)
    version = found.group(1) if found else "unknown"
    if version == CRIU_VERSION:
        return Check("CRIU", OK, f"{exe} {version}", needed_for="checkpoint")
    return Check(
        "CRIU",
        WARN,
        f"{exe} is version {version}; the hub is tested with {CRIU_VERSION} (Debian 12's own "
        "criu is too old for current kernels)",
        SETUP,
        "checkpoint",
    )


def check_runc_conf(root: Path = Path("/"), checkpoint: bool | None = None) -> Check:
    """``tcp-established`` in ``/etc/criu/runc.conf``: runc reads it for every dump and restore,
    and docker 20.10 has no other way to pass it; without it an environment holding a TCP
    connection cannot be checkpointed."""
    path = _under(root, RUNC_CONF)
    try:
        lines = [line.strip() for line in path.read_text().splitlines()]
    except OSError:
        lines = []
    if "tcp-established" in lines:
        return Check("runc.conf", OK, f"/{RUNC_CONF} has tcp-established", needed_for="checkpoint")
    return Check(
        "runc.conf",
        _checkpoint_problem(checkpoint),
        f"/{RUNC_CONF} lacks tcp-established: environments holding a TCP connection cannot be "
        "checkpointed" + _off(checkpoint),
        "mkdir -p /etc/criu && echo tcp-established >> /etc/criu/runc.conf",
        "checkpoint",
    )


def check_io_uring(root: Path = Path("/"), checkpoint: bool | None = None) -> Check:
    """``kernel.io_uring_disabled`` 1 or 2: containers cannot open an io_uring, which CRIU cannot
    dump (libuv under ttyd and node opens one by default)."""
    path = _under(root, IO_URING_SYSCTL)
    try:
        value = path.read_text().strip()
    except OSError:
        return Check(
            "io_uring",
            WARN,
            "this kernel has no kernel.io_uring_disabled switch (before 6.6): an environment "
            "whose processes open an io_uring (ttyd, node) cannot be checkpointed",
            "",
            "checkpoint",
        )
    if value in ("1", "2"):
        return Check("io_uring", OK, f"kernel.io_uring_disabled = {value}", needed_for="checkpoint")
    return Check(
        "io_uring",
        _checkpoint_problem(checkpoint),
        f"kernel.io_uring_disabled = {value}: containers may open an io_uring, which CRIU cannot "
        "dump (ttyd and node do by default)" + _off(checkpoint),
        "sysctl -w kernel.io_uring_disabled=1 && echo 'kernel.io_uring_disabled = 1' > "
        f"/{SYSCTL_CONF}",
        "checkpoint",
    )


def check_cap_sys_resource(status: str, userns_remap: bool = False) -> Check:
    """CAP_SYS_RESOURCE, which CRIU needs to read the rlimits (``prlimit()``) of processes of
    another uid: without it, and without ``--userns-remap`` (whose user namespaces root owns),
    only environments running as root can be checkpointed. ``status`` is the text of
    ``/proc/self/status``; the explanation is ``checkpoint.non_root_checkpoints``'s."""

    def has(field: str) -> bool:
        found = re.search(rf"^{field}:\s*([0-9a-fA-F]+)", status, re.MULTILINE)
        return found is not None and bool(int(found.group(1), 16) >> CAP_SYS_RESOURCE & 1)

    if host_can_dump_other_users(status):
        return Check("CAP_SYS_RESOURCE", OK, "in the effective set", needed_for="checkpoint")
    if userns_remap:
        return Check(
            "CAP_SYS_RESOURCE",
            OK,
            non_root_checkpoints(False, True)[1],
            needed_for="checkpoint",
        )
    if not has("CapBnd"):
        return Check(
            "CAP_SYS_RESOURCE",
            WARN,
            "this host withholds CAP_SYS_RESOURCE even from root (not in the bounding set, as "
            "on Firecracker VMs): CRIU cannot read the rlimits of processes of another uid, so "
            "checkpoints of environments that run as a non-root user fail and count toward the "
            "three strikes; environments running as root (rediacc.hub.user=root) checkpoint. "
            "Per-user daemons with --userns-remap get around it (docs/checkpoint.md)",
            "hub start --userns-remap (HUB_USERNS_REMAP=true)",
            "checkpoint",
        )
    return Check(
        "CAP_SYS_RESOURCE",
        WARN,
        "not in this process's effective set (it is in the bounding set): checkpoints of "
        "environments that run as a non-root user will fail. Run the hub as root with its full "
        "capabilities (no CapabilityBoundingSet= or User= in its unit)",
        "",
        "checkpoint",
    )


def check_cgroups(root: Path = Path("/")) -> Check:
    """A cgroup v2 hierarchy (the daemon-isolation rules match a daemon's v2 group) and the cpu,
    memory and pids controllers where the hub sets limits: on the v2 root (pure v2; they must be
    delegated to it) or as v1 hierarchies (hybrid hosts)."""
    cgroups = Cgroups(_under(root, "sys/fs/cgroup"))
    mount_v2 = "mount -t cgroup2 none /sys/fs/cgroup/unified"
    if cgroups.v2:
        missing = [c for c in LIMIT_CONTROLLERS if c not in cgroups.available]
        if missing:
            return Check(
                "cgroups",
                FAIL,
                f"cgroup v2 without the {', '.join(missing)} controller(s) in "
                "/sys/fs/cgroup/cgroup.controllers: they are not delegated to this cgroup, and "
                "the hub's limit writes (cpu.max, memory.max, pids.max) would fail",
                "delegate them from the parent cgroup (a container: run it with --cgroupns=host, "
                "or enable them in the parent's cgroup.subtree_control)",
            )
        return Check("cgroups", OK, "cgroup v2 with cpu, memory and pids")
    if cgroups.unified is None:
        return Check(
            "cgroups",
            FAIL,
            "no cgroup v2 hierarchy: the rules that keep a per-user daemon's own traffic (image "
            "pulls, builds) away from other users match its v2 group, so that traffic would not "
            "be isolated",
            f"mkdir -p /sys/fs/cgroup/unified && {mount_v2} (or boot with "
            "systemd.unified_cgroup_hierarchy=1)",
        )
    missing = [c for c in LIMIT_CONTROLLERS if c not in cgroups.available]
    if missing:
        return Check(
            "cgroups",
            WARN,
            "hybrid cgroups (v1 controllers, v2 at /sys/fs/cgroup/unified) without the v1 "
            f"{', '.join(missing)} hierarchy: that limit is not enforced on environments",
            f"mount -t cgroup -o {missing[0]} cgroup /sys/fs/cgroup/{missing[0]}",
        )
    return Check(
        "cgroups",
        OK,
        "hybrid: v1 cpu, memory and pids for limits, v2 at /sys/fs/cgroup/unified for the "
        "daemon-isolation rules",
    )


def check_workspace_filesystem(workspace_dir: Path, filesystem: str, btrfs_tool: bool) -> Check:
    """The filesystem of ``<workspace-dir>``: on BTRFS a new user's data-root is a snapshot of the
    template's seed (seconds, whatever the image's size); on XFS a reflink copy; elsewhere each
    new user's daemon loads the image (``hubcontrol.seeds``)."""
    if filesystem == "btrfs":
        if not btrfs_tool:
            return Check(
                "BTRFS",
                FAIL,
                f"{workspace_dir} is on BTRFS but the btrfs command is missing: data-roots there "
                "are subvolumes made with it",
                "apt-get install -y btrfs-progs",
                "seeds",
            )
        return Check(
            "BTRFS",
            OK,
            f"{workspace_dir} is on BTRFS: new users get a snapshot of the template's seed",
            needed_for="seeds",
        )
    if filesystem == "xfs":
        return Check(
            "BTRFS",
            OK,
            f"{workspace_dir} is on XFS: seeds are cloned by reflink where the filesystem has "
            "reflink=1 (the hub tries at start)",
            needed_for="seeds",
        )
    return Check(
        "BTRFS",
        WARN,
        f"{workspace_dir} is on {filesystem or 'an unknown filesystem'}, not BTRFS: each new "
        "user's daemon loads the template image (measured: 32 s for a 2.2 GB image against "
        "1.2 s from a BTRFS seed; docs/performance.md)",
        "put it on BTRFS, e.g. mkfs.btrfs /dev/<disk> && mount /dev/<disk> "
        f"{workspace_dir} (and an /etc/fstab line); docs/operations.md, 'Seed data-roots'",
        "seeds",
    )


def check_iptables(iptables_output: str | None, ip6tables_output: str | None) -> Check:
    """``iptables`` and ``ip6tables`` (``--version`` output; None when missing): the isolation
    rules. The hub is tested with the nf_tables backend, Debian 12's default."""
    missing = [
        name
        for name, out in (("iptables", iptables_output), ("ip6tables", ip6tables_output))
        if out is None
    ]
    if missing:
        return Check(
            "iptables",
            FAIL,
            f"{' and '.join(missing)} not found: the hub cannot install the rules that isolate "
            "users from each other and from the host",
            "apt-get install -y iptables",
        )

    def backend(out: str) -> str:
        found = re.search(r"\((nf_tables|legacy)\)", out)
        return found.group(1) if found else "unknown"

    v4, v6 = backend(iptables_output or ""), backend(ip6tables_output or "")
    if v4 != v6:
        return Check(
            "iptables",
            WARN,
            f"iptables uses the {v4} backend and ip6tables the {v6} one: keep both (and the host "
            "dockerd) on one backend",
            f"update-alternatives --set ip6tables /usr/sbin/ip6tables-{_alt(v4)}",
        )
    if v4 != "nf_tables":
        return Check(
            "iptables",
            WARN,
            f"iptables uses the {v4} backend; the hub is tested with nf_tables (Debian 12's "
            "default). It works with either as long as the host dockerd and every other firewall "
            "tool use the same one; switch only with dockerd stopped",
            "update-alternatives --set iptables /usr/sbin/iptables-nft && "
            "update-alternatives --set ip6tables /usr/sbin/ip6tables-nft",
        )
    return Check("iptables", OK, "iptables and ip6tables, nf_tables backend")


def _alt(backend: str) -> str:
    return "nft" if backend == "nf_tables" else backend


def check_dockerd(version_output: str | None) -> Check:
    """``dockerd`` (``dockerd --version`` output; None when missing): every user's daemon."""
    if version_output is None:
        return Check(
            "dockerd",
            FAIL,
            "dockerd not found on PATH: every user gets a dockerd of their own",
            "apt-get install -y docker.io",
        )
    found = re.search(r"version (\d+)\.(\d+)[^\s,]*", version_output)
    if not found:
        return Check(
            "dockerd", WARN, f"cannot read the version from {version_output.strip()!r}", ""
        )
    version = (int(found.group(1)), int(found.group(2)))
    shown = found.group(0).removeprefix("version ")
    if version < MIN_DOCKERD:
        return Check(
            "dockerd",
            FAIL,
            f"dockerd {shown} is older than 20.10: the per-user daemon.json (builder "
            "entitlements, live-restore with address pools) needs 20.10 or later",
            "apt-get install -y docker.io",
        )
    return Check("dockerd", OK, f"dockerd {shown}")


def check_containerd(version_output: str | None, system_containerd: bool) -> Check:
    """``containerd`` (``containerd --version`` output; None when missing): every user's daemon
    runs on a containerd of its own, which dockerd starts, or, beside a system containerd
    (``system_containerd``: something at /run/containerd/containerd.sock), the supervisor
    (``supervisor.private_containerd``)."""
    if version_output is None:
        return Check(
            "containerd",
            FAIL,
            "containerd not found on PATH: every user's dockerd runs on a containerd of its own",
            "apt-get install -y containerd (docker.io depends on it)",
        )
    found = re.search(r"\s(v?\d+\.\d+[^\s]*)", version_output)
    shown = f"containerd {found.group(1)}" if found else "containerd"
    if system_containerd:
        return Check(
            "containerd",
            OK,
            f"{shown}; a system containerd runs at /run/containerd/containerd.sock: each user's "
            "daemon still gets its own, in the user's group (docs/environments.md)",
        )
    return Check("containerd", OK, f"{shown} (each user's dockerd starts its own)")


# -- running them on this host -----------------------------------------------------------------


def command_output(argv: list[str], path: str | None = None) -> str | None:
    """stdout+stderr of ``argv`` (its program looked up on ``path``, default $PATH), None when the
    program is missing or fails."""
    exe = argv[0] if "/" in argv[0] else shutil.which(argv[0], path=path)
    if exe is None:
        return None
    try:
        done = subprocess.run(
            [exe, *argv[1:]], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    return done.stdout + done.stderr


def run_checks(
    *,
    workspace_dir: Path,
    checkpoint: bool | None = None,
    userns_remap: bool = False,
    root: Path = Path("/"),
    path: str | None = None,
    run: Callable[[list[str], str | None], str | None] = command_output,
) -> list[Check]:
    """Every check, for a hub with ``workspace_dir`` and checkpointing ``checkpoint`` (None: not
    known, so checkpoint prerequisites are warnings; False: they are left out). Files are read
    under ``root`` and programs found on ``path`` (tests point both at fakes)."""
    checks = [
        check_dockerd(run(["dockerd", "--version"], path)),
        check_containerd(
            run(["containerd", "--version"], path),
            os.path.lexists(_under(root, str(SYSTEM_CONTAINERD).lstrip("/"))),
        ),
        check_tini(root),
        check_iptables(run(["iptables", "--version"], path), run(["ip6tables", "--version"], path)),
        check_cgroups(root),
        check_workspace_filesystem(
            workspace_dir,
            storage.filesystem_type(workspace_dir),
            shutil.which("btrfs", path=path) is not None,
        ),
    ]
    if checkpoint is not False:
        criu = _under(root, f"{CRIU_BIN}/criu")
        try:
            status = _under(root, "proc/self/status").read_text()
        except OSError:
            status = ""
        checks += [
            check_criu(run([str(criu), "--version"], path), checkpoint),
            check_runc_conf(root, checkpoint),
            check_io_uring(root, checkpoint),
            check_cap_sys_resource(status, userns_remap),
        ]
    return checks


def failures(checks: Iterable[Check]) -> list[Check]:
    """The checks that stop ``hub start`` and ``hub install``."""
    return [c for c in checks if c.status == FAIL]


def checkpoint_wanted(config: HubConfig) -> bool:
    """Whether a hub with ``config`` (a ``HubConfig``) checkpoints anyone, as ``Hub`` decides."""
    return bool(config.checkpoint or any(t.checkpoint for t in config.templates.values()))
