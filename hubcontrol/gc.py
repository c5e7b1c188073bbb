"""Garbage collection of abandoned per-user data-roots and orphaned checkpoint images.

``hub gc <workspace-dir>`` runs ``plan_gc`` (read-only: finds candidates and decides, through the
pure ``data_root_verdict`` and ``checkpoint_verdict``, what to remove and why) and then, unless it
is a dry run, ``apply_gc`` (re-checks every candidate under the network-ID registry's lock right
before touching it, unmounts what a crashed daemon left mounted, deletes, releases the network-ID
claim and the dead daemon's bridges, rules and cgroups).

Definitions (documented for operators in docs/operations.md):

* A **data-root** is a directory ``<workspace-dir>/<u>-docker/`` holding a regular file
  ``.networkid`` with a user network ID (decimal, >= 32768). Anything else is not ours and is
  never touched; a symlink in place of a data-root or its marker is refused.
* Its **age** is the time since the newest of: the marker's mtime, the docker data directory's
  mtime (dockerd recreates ``data/tmp`` at every start), the daemon's pidfile and its log
  (``.rediacc/docker/{data,docker.pid,dockerd.log}``): a user who came back yesterday is one day
  old even if their marker was written a year ago.
* The daemon is **running** when a live ``dockerd`` process has this data-root's
  ``.rediacc/docker/data`` as its ``--data-root`` (found via its pidfile or /proc), or something
  answers on its socket ``/run/rediacc/hub/<net_id>/docker.sock``.
* The daemon is **configured** when the host would start it without the hub deciding anew:
  systemd supervisor: a unit file for the user's daemon (``rediacc-hub-dockerd-<u>-<net_id>``
  or an older hub's ``rediacc-hub-dockerd-<u>``) in /etc/systemd/system or
  /run/systemd/transient, a drop-in or enablement link for it, or such a file in
  /run/systemd/system the hub did not write. The runtime unit the supervisor writes there for a
  start (its first line is ``systemd.MARKER``) is not: only the hub starts it, the supervisor
  removes it when it stops the daemon, and while the daemon runs it is "running" (an active unit
  counts too). GC removes those a dead daemon left with its data-root. Local supervisor: nothing
  outlives the hub but the daemon process itself, so configured means running. The network-ID claim is not evidence either
  way: it lasts as long as the marker does, and GC releases it with the data-root.
* A data-root is **eligible** when age > max-age AND the daemon is neither running nor configured.
* A **seed** is a directory ``<workspace-dir>/.seeds/<image id>`` (``hubcontrol.seeds``). It is
  removed when the hub's last record of what its templates use (``.seeds/wanted.json``) does not
  name its image and nothing holds its lock (a build or a clone); without that record every seed
  is kept. A ``.seeds/.build-*`` directory nobody is building (a crash) is removed too.
* A **checkpoint image** is an entry of ``<workspace-dir>/<u>/.checkpoint/``. It is **orphaned**
  when it is older than max-age (mtime), the user's daemon is neither running nor configured, and
  no container is left that could restore it: the user's data-root is gone (or removed in this
  run) or no ``containers/<id>/checkpoints`` link in it points at the image or at ``.checkpoint``.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hubcontrol import du, mounts, names, procs, safefs, seeds, storage, userns
from hubcontrol.config import USER_NETWORK_ID_BASE, USER_NETWORK_ID_STEP
from hubcontrol.durations import format_duration
from hubcontrol.errors import DaemonError, GCError
from hubcontrol.netids import DEFAULT_REGISTRY
from hubcontrol.supervisor import RUN_DIR, remapped_exec_roots
from hubcontrol.supervisor import systemd as systemd_supervisor

MARKER = ".networkid"
DATA_ROOT_SUFFIX = names.DATA_ROOT_SUFFIX
CHECKPOINT_DIR = storage.CHECKPOINT_DIR
DEFAULT_MAX_AGE = 30 * 24 * 3600.0
DEFAULT_EXEC_BASE = RUN_DIR  # /run/rediacc/hub: <net_id>/ is a daemon's exec-root
DEFAULT_CLAIMS_DIR = DEFAULT_REGISTRY  # /var/lib/rediacc/netids
SYSTEMD_UNIT_DIRS = (
    Path("/etc/systemd/system"),
    Path("/run/systemd/system"),
    Path("/run/systemd/transient"),
)
# Evidence of recent use, relative to the data-root; the newest mtime wins. dockerd recreates
# <data-root>/tmp at every start, which stamps the data directory itself (measured with 20.10),
# whichever supervisor started it and wherever its log goes.
USE_STAMPS = (
    MARKER,
    ".rediacc/docker/data",
    ".rediacc/docker/docker.pid",
    ".rediacc/docker/dockerd.log",
)
BTRFS_SUBVOLUME_INODE = 256  # BTRFS_FIRST_FREE_OBJECTID: the root directory of every subvolume


class Action(enum.StrEnum):
    REMOVE = "remove"  # eligible: removed unless dry run
    KEEP = "keep"  # a hub object in use or too young
    REFUSE = "refuse"  # looks like a data-root but is not safe to treat as one


class Kind(enum.StrEnum):
    DATA_ROOT = "data-root"
    CHECKPOINT = "checkpoint"
    CLAIM = "claim"  # a network-ID claim whose data-root dir no longer exists
    SEED = "seed"  # a seed data-root (or a build of one) under <workspace-dir>/.seeds


# ---------------------------------------------------------------------------------------------
# Pure decisions


def data_root_verdict(
    *,
    age: float | None,
    max_age: float,
    running: str | None,
    configured: str | None,
    refusal: str | None = None,
) -> tuple[Action, str]:
    """Decide what GC does with one data-root; returns (action, reason for a person).

    ``age`` is seconds since last use (None: unknown), ``running``/``configured`` are evidence
    strings (None: not running / not configured), ``refusal`` says why the path is not safe to
    treat as a data-root. Anything uncertain keeps the data-root.
    """
    if refusal:
        return Action.REFUSE, refusal
    if running:
        return Action.KEEP, f"daemon running ({running})"
    if configured:
        return Action.KEEP, f"daemon configured ({configured})"
    if age is None:
        return Action.KEEP, "age unknown"
    if age <= max_age:
        return (
            Action.KEEP,
            f"used {format_duration(age, parts=2)} ago, max age {format_duration(max_age, parts=2)}",
        )
    return (
        Action.REMOVE,
        f"unused for {format_duration(age, parts=2)} (> {format_duration(max_age, parts=2)}), daemon not configured",
    )


def checkpoint_verdict(
    *,
    age: float | None,
    max_age: float,
    daemon_in_use: str | None,
    container_left: str | None,
) -> tuple[Action, str]:
    """Decide what GC does with one checkpoint image; ``daemon_in_use``/``container_left`` are
    evidence strings (None: none)."""
    if daemon_in_use:
        return Action.KEEP, f"daemon {daemon_in_use}"
    if container_left:
        return Action.KEEP, f"container can still restore it ({container_left})"
    if age is None:
        return Action.KEEP, "age unknown"
    if age <= max_age:
        return (
            Action.KEEP,
            f"written {format_duration(age, parts=2)} ago, max age {format_duration(max_age, parts=2)}",
        )
    return Action.REMOVE, f"orphaned: no container left, {format_duration(age, parts=2)} old"


def parse_marker(text: str) -> int | None:
    """The network ID in a ``.networkid`` marker, or None unless it is a user network ID
    (``32768 + 64*k``, see ``hubcontrol.netids``)."""
    value = text.strip()
    if not value.isdecimal() or len(value) > 10:
        return None
    net_id = int(value)
    offset = net_id - USER_NETWORK_ID_BASE
    return net_id if offset >= 0 and offset % USER_NETWORK_ID_STEP == 0 else None


def dockerd_data_root(argv: Sequence[str]) -> str | None:
    """The ``--data-root`` of a dockerd command line, or None if ``argv`` is not a dockerd."""
    if not argv or os.path.basename(argv[0]) != "dockerd":
        return None
    for i, arg in enumerate(argv):
        for flag in ("--data-root", "-g", "--graph"):
            if arg == flag and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(flag + "="):
                return arg[len(flag) + 1 :]
    return "/var/lib/docker"


# ---------------------------------------------------------------------------------------------
# Looking at the host


def live_dockerds() -> dict[int, str]:
    """pid -> realpath of --data-root for every dockerd visible in /proc."""
    found: dict[int, str] = {}
    for pid in procs.pids():
        root = dockerd_data_root(procs.cmdline(pid))
        if root is not None:
            found[pid] = os.path.realpath(root)
    return found


def veth_end(iface: Path) -> tuple[int, int] | None:
    """``(ifindex, iflink)`` of the interface at ``iface`` (``/sys/class/net/<name>``): for one
    end of a veth pair, its own index and its peer's."""
    try:
        return int((iface / "ifindex").read_text()), int((iface / "iflink").read_text())
    except (OSError, ValueError):
        return None


def abandoned_veth_ends(exec_roots: Iterable[Path]) -> set[tuple[int, int]]:
    """The host's ends (``veth_end``) of veth pairs whose other end is in a network namespace a
    daemon left bind-mounted at ``<exec-root>/netns/*`` and that no process is in or holds:
    what a dockerd killed while a container ran leaves (the container's namespace outlives it
    as a mount, and with it the pair). Empty unless such a namespace exists."""
    files = []
    for root in exec_roots:
        with contextlib.suppress(OSError), os.scandir(root / "netns") as entries:
            files += [Path(e.path) for e in entries if e.is_file(follow_symlinks=False)]
    if not files:
        return set()
    in_use = procs.net_namespaces_in_use()
    ends = set()
    for path in sorted(files):
        try:
            if os.stat(path).st_ino in in_use:
                continue
            listed = subprocess.run(
                ["nsenter", f"--net={path}", "ip", "-j", "link", "show"],
                capture_output=True, text=True, timeout=10,
            )  # fmt: skip
            links = json.loads(listed.stdout or "[]") if listed.returncode == 0 else []
        except (OSError, ValueError, subprocess.TimeoutExpired):
            continue  # not a namespace (a leftover empty file), or unreadable: proves nothing
        for link in links:
            if "link_index" in link and "link_netnsid" in link:  # its peer is in another netns
                ends.add((int(link["link_index"]), int(link["ifindex"])))
    return ends


def _systemctl_default() -> str | None:
    return "systemctl" if Path("/run/systemd/system").is_dir() else None


@dataclass
class HostProbe:
    """Finds out, on this host, whether a user's daemon is running or configured.

    Paths are parameters so tests (and packagers) can point it elsewhere.
    """

    exec_base: Path = DEFAULT_EXEC_BASE
    claims_dir: Path = DEFAULT_CLAIMS_DIR
    unit_dirs: Sequence[Path] = SYSTEMD_UNIT_DIRS
    # Where the systemd supervisor writes its runtime units (``SystemdSupervisor.unit_dir``): a
    # unit file there that carries its marker was written by the hub for one start and is not
    # evidence on its own (see ``configured``).
    runtime_unit_dirs: Sequence[Path] = (systemd_supervisor.UNIT_DIR,)
    unit_names: Callable[[str, int | None], Iterable[str]] | None = None
    # systemctl to ask whether a user's unit is active (None where PID 1 is not systemd)
    systemctl: str | None = field(default_factory=_systemctl_default)
    # After removing a data-root: delete what its daemon left on the host (bridges, isolation
    # rules, empty cgroups). Off in tests that use made-up network IDs.
    host_cleanup: bool = True
    sys_net: Path = Path("/sys/class/net")
    _dockerds: dict[int, str] | None = field(default=None, repr=False)

    def refresh(self) -> None:
        self._dockerds = None

    def running(self, data_root: Path, net_id: int | None, user: str = "") -> str | None:
        data = os.path.realpath(data_root / ".rediacc/docker/data")
        if self._dockerds is None:
            self._dockerds = live_dockerds()
        for pid, root in self._dockerds.items():
            if root == data and procs.alive(pid):
                return f"dockerd pid {pid}"
        if net_id is not None:
            sock = self.exec_base / str(net_id) / "docker.sock"
            if sock.exists() and _answers(sock):
                return f"socket {sock} answers"
            # An environment on the host's daemon (a template without a per-user daemon) has
            # no dockerd of its own: its container's interface on the user's bridges says it
            # runs, whatever the marker's age (removing it would strip a live environment of
            # its bridges and isolation rules).
            # An interface whose other end is in a namespace a dead daemon left mounted (and
            # nothing is in) is no sign of use: removing the data-root unmounts it, and the
            # kernel then deletes the pair.
            dead: set[tuple[int, int]] | None = None
            for bridge in (f"rdh{net_id}", f"rdh{net_id}e"):
                with contextlib.suppress(OSError):
                    attached = sorted(os.listdir(self.sys_net / bridge / "brif"))
                    if attached and dead is None:
                        roots = [self.exec_base / str(net_id)]
                        dead = abandoned_veth_ends(
                            roots + remapped_exec_roots(self.exec_base, net_id)
                        )
                    live = [i for i in attached if veth_end(self.sys_net / i) not in (dead or ())]
                    if live:
                        return f"interface {live[0]} on bridge {bridge}"
        if user and self.systemctl and net_id is not None and self.unit_names is None:
            # the supervisor's unit between its start and dockerd's exec (or while it stops)
            # has no dockerd to find yet
            name = systemd_supervisor.service_name(user, net_id)
            state = _unit_state(self.systemctl, name)
            if state in ("active", "activating", "deactivating", "reloading"):
                return f"systemd unit {name} {state}"
        return None

    def configured(self, user: str, data_root: Path, net_id: int | None) -> str | None:
        """Evidence that the host would start the user's daemon without the hub: a unit file for
        it in /etc or /run/systemd/transient, a drop-in, or an enablement link. The runtime unit
        the systemd supervisor writes for a start (``/run/systemd/system``, with its marker) is
        not: nothing but the hub starts it, and the supervisor removes it when it stops the
        daemon (``running`` covers the time it runs)."""
        runtime = {os.path.realpath(d) for d in self.runtime_unit_dirs}
        for name in self._unit_names(user, net_id):
            for d in self.unit_dirs:
                for candidate in (d / name, d / f"{name}.d", *d.glob(f"*.wants/{name}")):
                    if not (candidate.exists() or candidate.is_symlink()):
                        continue
                    if candidate == d / name and os.path.realpath(d) in runtime:
                        if _hub_written(candidate):
                            continue
                    return f"systemd unit {candidate}"
        return None

    def remove_runtime_units(self, user: str, net_id: int) -> list[str]:
        """Delete the runtime units the systemd supervisor wrote for ``user``/``net_id`` (a daemon
        that died without the hub's stop leaves them); returns what was removed."""
        names = (
            systemd_supervisor.service_name(user, net_id),
            systemd_supervisor.slice_name(user, net_id),
        )
        done = []
        for d in self.runtime_unit_dirs:
            for name in names:
                path = d / name
                if not path.is_symlink() and path.is_file() and _hub_written(path):
                    path.unlink()
                    done.append(f"unit {name} removed")
        if done and self.systemctl:
            _run(self.systemctl, "daemon-reload")
        return done

    def _unit_names(self, user: str, net_id: int | None) -> Iterable[str]:
        if self.unit_names is not None:
            return self.unit_names(user, net_id)
        names = [systemd_supervisor.legacy_service_name(user)]
        if net_id is not None:
            names.insert(0, systemd_supervisor.service_name(user, net_id))
        return names


def _hub_written(path: Path) -> bool:
    """Whether the unit file at ``path`` starts with the systemd supervisor's marker."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().rstrip("\n") == systemd_supervisor.MARKER
    except OSError:
        return False


def _unit_state(systemctl: str, unit: str) -> str:
    try:
        proc = subprocess.run(
            [systemctl, "show", "-p", "ActiveState", "--value", unit],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return proc.stdout.strip() or "unknown"


def _answers(sock: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(0.5)
    try:
        s.connect(str(sock))
        return True
    except OSError:
        return False
    finally:
        s.close()


def claim_owner(claims_dir: Path, net_id: int) -> str | None:
    """The data-root named by the host-wide claim on ``net_id`` (``hubcontrol.netids``), if any."""
    try:
        return (claims_dir / str(net_id)).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def release_claim(claims_dir: Path, net_id: int, data_root: Path) -> bool:
    """Remove the claim on ``net_id`` if it belongs to ``data_root``; call under ``claims_lock``."""
    owner = claim_owner(claims_dir, net_id)
    if owner is None or os.path.realpath(owner) != os.path.realpath(data_root):
        return False
    (claims_dir / str(net_id)).unlink(missing_ok=True)
    return True


@contextlib.contextmanager
def claims_lock(claims_dir: Path) -> Iterator[None]:
    """The registry's allocation lock (``flock`` on ``<claims_dir>/.lock``, as ``hubcontrol.netids``
    takes it): while GC holds it, no hub can hand a data-root back to a returning user, so the
    re-check and the removal of one data-root are atomic with respect to logins."""
    claims_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(claims_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def disk_usage(path: Path) -> int:
    """Bytes allocated below ``path`` (like ``du -s``), never following symlinks or mounts of
    other filesystems (a self-bind and BTRFS subvolumes count): ``du.walk`` without its bounds,
    since what GC is about to remove is measured whole."""
    return du.walk(path, max_entries=sys.maxsize, max_seconds=math.inf).bytes


# ---------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class GCEntry:
    """One candidate GC looked at, and what it decided."""

    kind: Kind
    path: Path
    user: str
    net_id: int | None
    age: float | None  # seconds since last use; None when unknown
    size: int | None  # bytes
    action: Action
    reason: str
    outcome: str | None = None  # after apply: "removed", "failed: ...", "skipped: ..."

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": str(self.kind),
            "path": str(self.path),
            "user": self.user,
            "net_id": self.net_id,
            "age_seconds": None if self.age is None else int(self.age),
            "size_bytes": self.size,
            "action": str(self.action),
            "reason": self.reason,
            "outcome": self.outcome,
        }


@dataclass(frozen=True)
class GCPlan:
    workspace_dir: Path
    max_age: float
    entries: tuple[GCEntry, ...]

    @property
    def candidates(self) -> tuple[GCEntry, ...]:
        return tuple(e for e in self.entries if e.action is Action.REMOVE)

    @property
    def failed(self) -> tuple[GCEntry, ...]:
        return tuple(e for e in self.entries if (e.outcome or "").startswith("failed"))


def _resolve_workspace(workspace_dir: Path) -> Path:
    path = Path(workspace_dir)
    if not path.exists():
        raise GCError(f"workspace dir {path} does not exist; pass the hub's --workspace-dir")
    if not path.is_dir():
        raise GCError(f"workspace dir {path} is not a directory; pass the hub's --workspace-dir")
    resolved = path.resolve()
    if resolved == Path("/"):
        raise GCError("refusing to garbage-collect /; pass the hub's --workspace-dir")
    return resolved


def _age(paths: Iterable[Path], now: float) -> float | None:
    newest = None
    for p in paths:
        with contextlib.suppress(OSError):
            m = os.lstat(p).st_mtime
            newest = m if newest is None else max(newest, m)
    return None if newest is None else now - newest


def _inspect_data_root(path: Path, workspace: Path) -> tuple[int | None, str | None]:
    """(net_id, refusal) for a ``*-docker`` entry that has a marker."""
    if path.is_symlink():
        target = os.path.realpath(path)
        where = "outside" if not target.startswith(str(workspace) + "/") else "inside"
        return None, f"symlink to {target} ({where} the workspace dir); data-roots are never links"
    if not path.is_dir():
        return None, "not a directory"
    marker = path / MARKER
    if marker.is_symlink() or not marker.is_file():
        return None, f"{MARKER} is not a regular file"
    try:
        text = marker.read_text(encoding="utf-8", errors="replace")[:64]
    except OSError as e:
        return None, f"cannot read {MARKER}: {e.strerror}"
    net_id = parse_marker(text)
    if net_id is None:
        return None, f"{MARKER} holds {text.strip()[:20]!r}, not a user network ID (32768 + 64*k)"
    inner = path / ".rediacc"
    if inner.is_symlink():
        return net_id, f".rediacc is a symlink to {os.path.realpath(inner)}"
    user = path.name[: -len(DATA_ROOT_SUFFIX)]
    if not names.is_safe_name(user):
        return net_id, (
            f"left by a user named {user!r}, a name older hubs allowed: its workspace "
            f"{workspace / user} may be another user's data-root; resolve by hand "
            '(docs/operations.md, "Names older hubs allowed")'
        )
    problems = storage.overlap_problems(storage.UserPaths(workspace, user))
    if problems:
        return net_id, f"overlaps another account's tree: {'; '.join(problems)}"
    return net_id, None


_REMAPPED_ROOT = re.compile(r"\d+\.\d+")  # dockerd --userns-remap: <data-root>/<uid>.<gid>/


def _checkpoint_links(data_root: Path) -> list[tuple[str, str]]:
    """(container id, real path) for each ``containers/<id>/checkpoints`` link in a data-root,
    also in the ``<uid>.<gid>/`` data-roots of a daemon run with ``--userns-remap``."""
    data = data_root / ".rediacc/docker/data"
    roots = [data]
    with contextlib.suppress(OSError):
        roots += [
            Path(e.path)
            for e in os.scandir(data)
            if _REMAPPED_ROOT.fullmatch(e.name) and e.is_dir(follow_symlinks=False)
        ]
    found = []
    for root in roots:
        with contextlib.suppress(OSError):
            for entry in os.scandir(root / "containers"):
                link = Path(entry.path, "checkpoints")
                if link.is_symlink():
                    found.append((entry.name, os.path.realpath(link)))
    return found


def plan_gc(
    workspace_dir: Path,
    *,
    max_age: float = DEFAULT_MAX_AGE,
    now: float | None = None,
    probe: HostProbe | None = None,
    sizes: bool = True,
) -> GCPlan:
    """Look at every data-root and checkpoint image under ``workspace_dir``; change nothing."""
    if max_age < 0:
        raise GCError(f"--max-age must not be negative (got {max_age} s)")
    workspace = _resolve_workspace(workspace_dir)
    now = time.time() if now is None else now
    probe = probe or HostProbe()
    probe.refresh()
    entries: list[GCEntry] = []
    entry_names = {e.name for e in os.scandir(workspace)}
    roots: dict[str, GCEntry] = {}
    for name in sorted(entry_names):
        if not name.endswith(DATA_ROOT_SUFFIX) or name == DATA_ROOT_SUFFIX:
            continue
        path = workspace / name
        user = name[: -len(DATA_ROOT_SUFFIX)]
        if (
            not path.is_symlink()
            and not (path / MARKER).exists()
            and not (path / MARKER).is_symlink()
        ):
            # A workspace of a user whose name ends in -docker, or someone else's directory.
            continue
        net_id, refusal = _inspect_data_root(path, workspace)
        running = configured = None
        age = None
        if refusal is None:
            running = probe.running(path, net_id, user)
            configured = probe.configured(user, path, net_id)
            age = _age((path / s for s in USE_STAMPS), now)
        action, reason = data_root_verdict(
            age=age, max_age=max_age, running=running, configured=configured, refusal=refusal
        )
        size = disk_usage(path) if sizes and action is Action.REMOVE else None
        entry = GCEntry(Kind.DATA_ROOT, path, user, net_id, age, size, action, reason)
        roots[user] = entry
        entries.append(entry)

    for name in sorted(entry_names):
        ckpt = workspace / name / CHECKPOINT_DIR
        if name.endswith(DATA_ROOT_SUFFIX) and name in {f"{u}{DATA_ROOT_SUFFIX}" for u in roots}:
            continue
        if not names.is_safe_name(name):  # the hub's own entry, or a name older hubs allowed
            continue
        if (workspace / name).is_symlink() or ckpt.is_symlink() or not ckpt.is_dir():
            continue
        entries.extend(
            _plan_checkpoints(workspace, name, ckpt, roots.get(name), max_age, now, probe, sizes)
        )
    entries.extend(_plan_orphaned_claims(workspace, probe))
    entries.extend(_plan_seeds(workspace, sizes))
    return GCPlan(workspace, max_age, tuple(entries))


def _plan_seeds(workspace: Path, sizes: bool) -> list[GCEntry]:
    """Seeds no configured template uses, and builds nobody is running (``seeds.seed_verdict``)."""
    paths = seeds.SeedPaths(workspace)
    if safefs.is_link(paths.dir) or not paths.dir.is_dir():
        return []
    wanted = paths.read_wanted()
    out = []
    for hexid in paths.seeds():
        remove, reason = seeds.seed_verdict(hexid, wanted, seeds.busy(paths, hexid))
        path = paths.seed(hexid)
        size = disk_usage(path) if sizes and remove else None
        action = Action.REMOVE if remove else Action.KEEP
        out.append(GCEntry(Kind.SEED, path, "", None, None, size, action, reason))
    for build in paths.builds():
        building = seeds.build_image(build)
        if building is not None and seeds.busy(paths, building):
            action, reason = Action.KEEP, "being built"
        else:
            action, reason = Action.REMOVE, "a seed build that did not finish"
        out.append(GCEntry(Kind.SEED, build, "", None, None, None, action, reason))
    return out


def _remove_seed(entry: GCEntry) -> str:
    """Remove a seed or a dead build, re-checked under its lock (taken without waiting)."""
    paths = seeds.SeedPaths(entry.path.parent.parent)
    if seeds.build_image(entry.path) is not None:
        return "removed" if seeds.remove_build(paths, entry.path) else "skipped: being built"
    remove, reason = seeds.seed_verdict(entry.path.name, paths.read_wanted(), busy=False)
    if not remove:
        return f"skipped: {reason}"
    if not seeds.remove_seed(paths, entry.path.name):
        return "skipped: being built or cloned"
    return "removed"


def _plan_orphaned_claims(workspace: Path, probe: HostProbe) -> list[GCEntry]:
    """Claims (``<claims-dir>/<net_id>``) naming a data-root dir directly inside ``workspace``
    that no longer exists (removed by hand, with its workspace): the network ID, its bridges and
    rules would otherwise stay taken for good. Kept while anything still uses the ID."""
    out = []
    with contextlib.suppress(OSError):
        for entry in sorted(os.scandir(probe.claims_dir), key=lambda e: e.name):
            if not entry.name.isdigit():
                continue
            net_id = int(entry.name)
            owner = claim_owner(probe.claims_dir, net_id)
            if owner is None:
                continue
            path = Path(owner)
            if Path(os.path.realpath(path.parent)) != workspace or not path.name.endswith(
                DATA_ROOT_SUFFIX
            ):
                continue
            if os.path.lexists(path):
                continue
            user = path.name[: -len(DATA_ROOT_SUFFIX)]
            running = probe.running(path, net_id)
            if running:
                action, reason = Action.KEEP, f"data-root gone but network ID in use ({running})"
            else:
                action, reason = Action.REMOVE, "data-root dir no longer exists"
            out.append(GCEntry(Kind.CLAIM, path, user, net_id, None, None, action, reason))
    return out


def _release_orphaned_claim(entry: GCEntry, probe: HostProbe) -> str:
    if entry.net_id is None:  # an orphaned claim is a network ID's: planned with one
        return "skipped: no network ID"
    with claims_lock(probe.claims_dir):
        if os.path.lexists(entry.path):
            return "skipped: the data-root came back"
        probe.refresh()
        if running := probe.running(entry.path, entry.net_id):
            return f"skipped: network ID in use ({running})"
        if not release_claim(probe.claims_dir, entry.net_id, entry.path):
            return "skipped: the claim changed"
    details = ["claim released"]
    if probe.host_cleanup:
        details += remove_daemon_leftovers(entry.user, entry.net_id)
    return f"removed ({', '.join(details)})"


def _plan_checkpoints(
    workspace: Path,
    user: str,
    ckpt: Path,
    root: GCEntry | None,
    max_age: float,
    now: float,
    probe: HostProbe,
    sizes: bool,
) -> list[GCEntry]:
    data_root = workspace / f"{user}{DATA_ROOT_SUFFIX}"
    in_use = None
    links: list[tuple[str, str]] = []
    net_id = root.net_id if root else None
    if root is not None:
        if root.action is Action.REFUSE:
            in_use = f"data-root refused: {root.reason}"
        elif root.action is Action.KEEP and root.reason.startswith("daemon "):
            in_use = root.reason[len("daemon ") :]
        elif root.action is Action.KEEP:
            links = _checkpoint_links(data_root)
    out = []
    ckpt_real = os.path.realpath(ckpt)
    for entry in sorted(os.scandir(ckpt), key=lambda e: e.name):
        image = Path(entry.path)
        real = os.path.realpath(image)
        container = next(
            (
                f"container {cid[:12]}"
                for cid, link in links
                if link in (real, ckpt_real) or real.startswith(link + "/")
            ),
            None,
        )
        age = _age([image], now)
        action, reason = checkpoint_verdict(
            age=age, max_age=max_age, daemon_in_use=in_use, container_left=container
        )
        if root is None and action is Action.REMOVE:
            reason += " (no data-root)"
        if image.is_symlink():  # the checkpointer writes directories; a link is not its image
            action, reason = Action.REFUSE, f"symlink to {real}; checkpoint images are never links"
        size = disk_usage(image) if sizes and action is Action.REMOVE else None
        out.append(GCEntry(Kind.CHECKPOINT, image, user, net_id, age, size, action, reason))
    return out


# ---------------------------------------------------------------------------------------------
# Removal


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False)


def unmount_all(path: Path) -> list[str]:
    """Unmount every mount at or below ``path`` (deepest first); returns what was unmounted.

    Raises GCError when something stays mounted: deleting below a live mount would delete the
    mounted filesystem's content.
    """
    done = []
    for point in mounts.mounts_under(path):
        if _run("umount", point).returncode != 0:
            _run("umount", "-l", point)
        done.append(point)
    left = mounts.mounts_under(path)
    if left:
        raise GCError(f"{left[0]} is still mounted; unmount it and run hub gc again")
    return done


def _is_subvolume(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if st.st_ino != BTRFS_SUBVOLUME_INODE:
        return False
    return (
        _run("btrfs", "subvolume", "show", str(path)).returncode == 0
        if shutil.which("btrfs")
        else False
    )


def _nested_subvolumes(path: Path) -> list[Path]:
    """BTRFS subvolumes strictly below ``path`` (docker's btrfs driver makes them), deepest first."""
    found = []
    for current, dirs, _files in os.walk(path):
        parent_dev = os.lstat(current).st_dev
        for d in list(dirs):
            p = Path(current, d)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if st.st_dev != parent_dev and st.st_ino == BTRFS_SUBVOLUME_INODE:
                found.append(p)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def remove_tree(path: Path) -> str:
    """Delete a data-root or checkpoint image; BTRFS subvolumes are deleted as subvolumes.

    Returns how it was removed.
    """
    if path.is_symlink():
        raise GCError(f"{path} became a symlink; refusing to remove it")
    unmount_all(path)
    if not path.is_dir():
        path.unlink(missing_ok=True)
        return "removed file"
    nested = _nested_subvolumes(path) if shutil.which("btrfs") else []
    for sub in nested:
        res = _run("btrfs", "subvolume", "delete", str(sub))
        if res.returncode != 0:
            raise GCError(f"cannot delete BTRFS subvolume {sub}: {res.stderr.strip()}")
    if _is_subvolume(path):
        res = _run("btrfs", "subvolume", "delete", str(path))
        if res.returncode != 0:
            raise GCError(f"cannot delete BTRFS subvolume {path}: {res.stderr.strip()}")
        return "deleted BTRFS subvolume"
    safefs.remove_tree(path)
    return "removed directory" if not nested else f"removed directory and {len(nested)} subvolumes"


def apply_gc(plan: GCPlan, *, probe: HostProbe | None = None, now: float | None = None) -> GCPlan:
    """Remove every candidate of ``plan``; returns the plan with each entry's outcome.

    Each data-root is re-checked right before removal (a user may have come back since the plan
    was made); a failure on one candidate does not stop the others.
    """
    probe = probe or HostProbe()
    probe.refresh()
    now = time.time() if now is None else now
    removed_users: set[str] = set()
    out: list[GCEntry] = []
    for entry in plan.entries:
        if entry.action is not Action.REMOVE:
            out.append(entry)
            continue
        try:
            if entry.kind is Kind.DATA_ROOT:
                outcome = _remove_data_root(entry, plan, probe, now)
                removed_users.add(entry.user)
            elif entry.kind is Kind.CLAIM:
                outcome = _release_orphaned_claim(entry, probe)
            elif entry.kind is Kind.SEED:
                outcome = _remove_seed(entry)
            else:
                outcome = _remove_checkpoint(entry, plan, probe, removed_users)
        except GCError as e:
            outcome = f"failed: {e.user_message}"
        except OSError as e:
            outcome = f"failed: {e.strerror or e} ({e.filename or entry.path})"
        out.append(replace(entry, outcome=outcome))
    return replace(plan, entries=tuple(out))


def _remove_data_root(entry: GCEntry, plan: GCPlan, probe: HostProbe, now: float) -> str:
    path = entry.path
    if path.parent != plan.workspace_dir:
        raise GCError(f"{path} is not directly inside {plan.workspace_dir}")
    with claims_lock(probe.claims_dir):
        return _remove_data_root_locked(entry, plan, probe, now)


def _remove_data_root_locked(entry: GCEntry, plan: GCPlan, probe: HostProbe, now: float) -> str:
    path = entry.path
    net_id, refusal = _inspect_data_root(path, plan.workspace_dir)
    if refusal or net_id is None or net_id != entry.net_id:
        return f"skipped: {refusal or 'network ID changed'}"
    probe.refresh()
    running = probe.running(path, net_id, entry.user)
    configured = probe.configured(entry.user, path, net_id)
    age = _age((path / s for s in USE_STAMPS), now)
    action, reason = data_root_verdict(
        age=age, max_age=plan.max_age, running=running, configured=configured
    )
    if action is not Action.REMOVE:
        return f"skipped: {reason}"
    how = remove_tree(path)
    owner = claim_owner(probe.claims_dir, net_id)
    released = release_claim(probe.claims_dir, net_id, path)
    details = [how] + (["claim released"] if released else [])
    # What carries the network ID on the host (exec-root, bridges, rules, units) is this
    # data-root's only while no one else claims the ID: a released ID may already be another
    # user's (or, on a shared host, another hub's), whose running daemon lives in them.
    if released or owner is None:
        exec_root = probe.exec_base / str(net_id)
        if exec_root.is_dir() and not exec_root.is_symlink():
            unmount_all(exec_root)
            shutil.rmtree(exec_root, ignore_errors=True)
        for left in remapped_exec_roots(probe.exec_base, net_id):  # --userns-remap's
            unmount_all(left)
            shutil.rmtree(left, ignore_errors=True)
    if probe.host_cleanup and (released or owner is None):
        details += remove_daemon_leftovers(entry.user, net_id)
    if released or owner is None:
        details += probe.remove_runtime_units(entry.user, net_id)
    return f"removed ({', '.join(details)})"


def remove_daemon_leftovers(user: str, net_id: int) -> list[str]:
    """Delete what a dead daemon of ``net_id`` can leave on the host: its isolation rules, its
    bridges and its (empty) cgroups. Each step is idempotent; returns what was found."""
    from hubcontrol import network
    from hubcontrol.supervisor.local import Cgroups, group_name

    done = []
    network.remove_isolation(net_id)
    blocks = set()
    for bridge in (f"{network.BRIDGE_PREFIX}{net_id}", f"{network.BRIDGE_PREFIX}{net_id}e"):
        if network.link_exists(bridge):
            if (block := network.block_of(bridge)) is not None:
                blocks.add(block)
            network.delete_link(bridge)
            done.append(f"bridge {bridge} deleted")
    for block in blocks:  # the bridges of networks the user made on that daemon
        done += [f"bridge {b} deleted" for b in network.remove_stale_bridges(block)]
    with contextlib.suppress(OSError):
        cgroups = Cgroups()
        group = group_name(user, net_id)
        if any(d.exists() for d in cgroups.dirs(group)):
            cgroups.remove(group)
            done.append("cgroups removed")
    try:  # --userns-remap's account and /etc/subuid, /etc/subgid ranges
        if userns.remove_account(net_id):
            done.append(f"account {userns.account_name(net_id)} removed")
    except (DaemonError, ValueError) as e:
        done.append(f"account {userns.account_name(net_id)} not removed: {e}")
    return done


def _remove_checkpoint(
    entry: GCEntry, plan: GCPlan, probe: HostProbe, removed_users: set[str]
) -> str:
    path = entry.path
    if path.parent.parent.parent != plan.workspace_dir or path.parent.name != CHECKPOINT_DIR:
        raise GCError(f"{path} is not a checkpoint image of {plan.workspace_dir}")
    if path.parent.is_symlink() or path.parent.parent.is_symlink():
        return "skipped: checkpoint dir became a symlink"
    data_root = plan.workspace_dir / f"{entry.user}{DATA_ROOT_SUFFIX}"
    if entry.user not in removed_users and data_root.exists():
        if probe.running(data_root, entry.net_id, entry.user) or probe.configured(
            entry.user, data_root, entry.net_id
        ):
            return "skipped: the user's daemon came back"
    # from <workspace-dir> down without following a link: .checkpoint is root's, 0700
    with storage.checkpoint_dir(path.parent, create=False) as fd:
        if fd is None:
            return "skipped: checkpoint dir is gone"
        unmount_all(path)
        shutil.rmtree(path.name, dir_fd=fd)
    return "removed"
