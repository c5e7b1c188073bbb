"""What ``/proc`` says about a process: whether it lives, and what it runs.

The one place the hub answers these questions, so the daemon supervisor, the policy sockets'
management and GC agree on them. A process is **alive** while ``/proc/<pid>`` exists and its
state is neither ``Z`` (a zombie: exited, not yet reaped) nor ``X`` (dead, being removed): a
zombie holds no socket, no mount and no memory, and waiting for it to go would wait for a parent
that may never reap it.

Command lines are decoded with ``os.fsdecode`` (surrogate escapes), so an argument that is not
UTF-8 still compares equal to the same bytes given to ``subprocess``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

DEAD_STATES = frozenset({"Z", "X"})


def state(pid: int) -> str | None:
    """The state letter of ``pid`` (``R``, ``S``, ``D``, ``Z``, ...), or None when there is no
    such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # the command name (field 2) is in parentheses and may itself hold ") "
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def alive(pid: int, *, reap: bool = False) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie). With ``reap``, a zombie that
    is a child of ours is reaped on the way (a no-op for anyone else's)."""
    letter = state(pid)
    if letter in DEAD_STATES and reap:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
    return letter is not None and letter not in DEAD_STATES


def cmdline(pid: int) -> list[str]:
    """The argv of ``pid``; empty when it is gone, a zombie or a kernel thread."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    # one NUL ends each argument, so an empty last argument is kept
    return [os.fsdecode(arg) for arg in raw.removesuffix(b"\0").split(b"\0")] if raw else []


def pids() -> Iterator[int]:
    """Every process ID ``/proc`` shows now (a process may be gone by the time it is read)."""
    with os.scandir("/proc") as entries:
        for entry in entries:
            if entry.name.isdecimal():
                yield int(entry.name)


def net_namespaces_in_use() -> set[int]:
    """The inode of every network namespace a process's thread is in, or a process holds open
    (``net:[<inode>]`` among its descriptors); a namespace only bind-mounted somewhere is not."""
    found: set[int] = set()
    for pid in pids():
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    found.add(os.stat(f"/proc/{pid}/task/{tid}/ns/net").st_ino)
        found |= fd_inodes(pid, "net")
    return found


def fd_inodes(pid: int, kind: str) -> set[int]:
    """The inodes of ``pid``'s open descriptors of one kernel kind (``socket``, ``net``, ...:
    those whose link reads ``<kind>:[<inode>]``); empty when it is gone or not readable."""
    prefix = f"{kind}:["
    found = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith(prefix):
                    found.add(int(target[len(prefix) : -1]))
    return found
