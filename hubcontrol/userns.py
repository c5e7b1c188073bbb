"""Per-user user namespaces (``--userns-remap``): checkpoints of non-root environments on hosts
whose root lacks CAP_SYS_RESOURCE.

Why (docs/checkpoint.md, "Non-root environments without CAP_SYS_RESOURCE"): CRIU reads every
dumped process's rlimits with ``prlimit()``. For a process of another uid the kernel asks for
CAP_SYS_RESOURCE *in the target's user namespace*; some hosts (Firecracker VMs such as our CI)
withhold that capability from root, so there an environment running as uid 1000 cannot be
dumped. But a process whose effective uid owns a user namespace holds every capability in it
(``cap_capable``: the owner of a child namespace of the caller's). runc creates a container's
user namespace as host root, so CRIU, started by the same root, may read the rlimits of every
process in it. A per-user dockerd with ``--userns-remap`` puts all of that user's containers in
such a namespace.

Each user gets a range of host ids of their own, so no two users' processes (or files) share a
host uid, unlike without remapping, where every environment's uid 1000 is the host's uid 1000:

* the range follows from the user's network ID (``id_range``): ``FIRST_ID + index * RANGE_SIZE``,
  above what ``useradd`` hands out (``SUB_UID_MAX`` is 600100000 on Debian), so it never meets
  an operator's own ``/etc/subuid`` entries, and it is the same on every start;
* dockerd 20.10 takes the range from ``/etc/subuid`` and ``/etc/subgid`` under an account name
  that must exist in ``/etc/passwd`` (``account_name``: ``rdh-ns<net_id>``, a system account
  without a home or a shell); ``ensure_account`` creates both with ``useradd``/``usermod`` and
  refuses ranges that disagree or overlap another name's (``subid_problems``);
* the container's uid ``u`` is host uid ``range.start + u``: files the environment creates in
  the workspace are owned by that host uid on disk and by ``u`` inside, as the user sees them.

Restores need one more thing (``CRIU_RESTORE_PRELUDE``, in the CRIU wrappers of both
supervisors): CRIU restores the processes as the namespace's root, an unprivileged host uid, and
they open the images relative to containerd's copy of them, a 0700 directory of host root.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pwd
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hubcontrol.errors import DaemonError
from hubcontrol.netids import MAX_USERS, index_of

log = logging.getLogger(__name__)

FIRST_ID = 1 << 30  # above useradd's SUB_UID_MAX (600100000), below 2**32 - 1 for every index
RANGE_SIZE = 65536  # uids 0-65535 inside, what images use (nobody is 65534)
ACCOUNT_PREFIX = "rdh-ns"
ACCOUNT_COMMENT = "rediacc hub user namespace"  # marks the accounts the hub made (GECOS)
SUBUID = Path("/etc/subuid")
SUBGID = Path("/etc/subgid")
# useradd/usermod/userdel refuse to run while another holds /etc/passwd's lock ("cannot lock"):
# the hub's own calls (two users starting at once, gc beside a hub) take turns
LOCK = Path("/run/rediacc/userns.lock")
_thread_lock = threading.Lock()


@contextlib.contextmanager
def _accounts_lock(path: Path = LOCK) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with _thread_lock:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


@dataclass(frozen=True)
class IdRange:
    """Host ids ``start`` .. ``start + count - 1``: a user namespace's uids (and gids) 0.."""

    start: int
    count: int = RANGE_SIZE

    @property
    def end(self) -> int:
        """The last host id of the range."""
        return self.start + self.count - 1

    def host_id(self, inner: int) -> int:
        """The host id of ``inner`` (a uid or gid inside the namespace)."""
        if not 0 <= inner < self.count:
            raise ValueError(f"id {inner} is outside the namespace's 0-{self.count - 1}")
        return self.start + inner

    def overlaps(self, other: IdRange) -> bool:
        return self.start <= other.end and other.start <= self.end

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"


def id_range(net_id: int) -> IdRange:
    """The host ids of the user with network ID ``net_id`` (the same on every start)."""
    index = index_of(net_id)
    if index >= MAX_USERS:
        raise ValueError(f"network ID {net_id} is past the {MAX_USERS} users ranges exist for")
    return IdRange(FIRST_ID + index * RANGE_SIZE)


def account_name(net_id: int) -> str:
    """The account dockerd's ``--userns-remap`` names for this user (its ``/etc/subuid`` key)."""
    return f"{ACCOUNT_PREFIX}{net_id}"


def parse_subids(text: str) -> list[tuple[str, IdRange]]:
    """``/etc/subuid`` or ``/etc/subgid``: ``name:start:count`` lines, in file order.

    Lines that are not of that form are skipped, as shadow's own tools skip them."""
    out = []
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            continue
        out.append((parts[0], IdRange(int(parts[1]), int(parts[2]))))
    return out


def subid_problems(text: str, name: str, want: IdRange, file: str) -> tuple[bool, list[str]]:
    """Whether ``file`` (its ``text``) already gives ``name`` exactly ``want``, and what is wrong.

    Wrong: ``name`` holding any other range (dockerd would map all of them), or another name
    holding ids of ``want`` (two users' containers would share host ids). The hub never edits
    such entries itself: they are the operator's (or another tool's)."""
    entries = parse_subids(text)
    ours = [r for n, r in entries if n == name]
    problems = [
        f"{file}: {name} has {r}, not the hub's {want}; remove that line" for r in ours if r != want
    ]
    problems += [
        f"{file}: {n} has {r}, which overlaps {name}'s {want}; give {n} other ids"
        for n, r in entries
        if n != name and r.overlaps(want)
    ]
    return want in ours, problems


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise DaemonError(
            "The hub could not prepare your Docker daemon's user namespace.",
            f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}",
        )


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def ensure_account(net_id: int) -> str:
    """Make the account and id ranges of ``net_id`` exist; returns the account name.

    Idempotent. Raises ``DaemonError`` naming the entry to fix when ``/etc/subuid`` or
    ``/etc/subgid`` disagree with the hub (``subid_problems``): a daemon is never started on
    ids another user or tool also has."""
    with _accounts_lock():
        return _ensure_account(net_id)


def _ensure_account(net_id: int) -> str:
    name, want = account_name(net_id), id_range(net_id)
    missing, problems = [], []
    for path, option in ((SUBUID, "--add-subuids"), (SUBGID, "--add-subgids")):
        present, found = subid_problems(_read(path), name, want, str(path))
        problems += found
        if not present:
            missing += [option, str(want)]
    if problems:  # before anything is made: a refused start leaves the host as it was
        raise DaemonError(
            "The hub could not prepare your Docker daemon's user namespace.",
            "--userns-remap: " + "; ".join(problems),
        )
    if not _exists(name):
        _run([
            "useradd", "--system", "--user-group", "--no-create-home",
            "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
            "--comment", ACCOUNT_COMMENT, name,
        ])  # fmt: skip
    elif not _made_by_hub(name):  # an operator's, or another tool's
        raise DaemonError(
            "The hub could not prepare your Docker daemon's user namespace.",
            f"--userns-remap: the account {name} exists but the hub did not make it (its "
            f"comment is not {ACCOUNT_COMMENT!r}); rename that account, then start again",
        )
    if missing:
        _run(["usermod", *missing, name])
    return name


def remove_account(net_id: int) -> bool:
    """Remove what ``ensure_account`` made (its ranges, the account and its group), when the
    user's data goes (``Hub.destroy(remove_data=True)``, ``hub gc``). True when there was one."""
    if not _exists(account_name(net_id)):
        return False  # the common case without --userns-remap: no lock, no tool run
    with _accounts_lock():
        return _remove_account(net_id)


def _made_by_hub(name: str) -> bool:
    """Whether the account ``name`` is one ``ensure_account`` made (its comment says so): the
    hub adopts and removes only those, never an account someone else happened to name so."""
    try:
        return pwd.getpwnam(name).pw_gecos == ACCOUNT_COMMENT
    except KeyError:
        return False


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _remove_account(net_id: int) -> bool:
    name, want = account_name(net_id), id_range(net_id)
    if not _exists(name):
        return False
    if not _made_by_hub(name):
        log.warning("--userns-remap: the account %s was not made by the hub; left alone", name)
        return False
    drop = []
    for path, option in ((SUBUID, "--del-subuids"), (SUBGID, "--del-subgids")):
        if subid_problems(_read(path), name, want, str(path))[0]:
            drop += [option, str(want)]
    if drop:
        _run(["usermod", *drop, name])
    _run(["userdel", name])
    return True


# A shell line for the CRIU wrapper (hubcontrol.supervisor.criu_wrapper_text), after
# criupages.IMAGE_PATH: for a restore, `$img` is containerd's copy of the images (`--image-path
# <TMPDIR>/ctrd-checkpoint<N>` in runc's argv, a directory, never a link, made with mode 0700 by
# host root). CRIU restores a remapped container's processes as the namespace's
# root (host uid range.start), and they open images relative to that directory: without search
# permission on it every restore fails with "Unable to open tty-info.img: Permission denied"
# (measured; docs/checkpoint.md). Only such a directory is touched, and only its x bits: its
# parent, the daemon's TMPDIR, stays root's 0700, so no one else can reach it.
CRIU_RESTORE_PRELUDE = 'if [ -n "$img" ]; then chmod 0711 "$img"; fi\n'


def cgroup_yard_race(error: str) -> bool:
    """Whether a container start failed only because CRIU was restoring or dumping something
    else on the host at that moment (docs/checkpoint.md, "cgroup v1 hosts").

    On a cgroup v1 host runc mounts every v1 hierarchy it finds in the mount table into the
    container, the first mount of each; a hierarchy the host itself does not mount (hugetlb,
    perf_event and net_cls here) is found only in CRIU's temporary cgroup yard
    (``.criu.cgyard.*``, below that daemon's root-only directories) while a CRIU runs. Host
    root can look there, a remapped container's root cannot: "error mounting "cgroup" ...
    .criu.cgyard...: permission denied". The yard goes when that CRIU ends: a retry works."""
    return "error mounting" in error and ".criu.cgyard." in error and "permission denied" in error
