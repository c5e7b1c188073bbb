"""The proxy's event-loop thread runs ahead of the hub's own background work on the CPU.

One ``hub start`` process holds the request path (this thread: every page, probe, login and
WebSocket of every user) and the control plane (its threads: starts, docker calls, the stats
sampler, and the ``iptables``, ``btrfs`` and ``mount`` processes they run). When fifty users log
in at once the control plane's threads want the CPU too, and the scheduler gave the loop thread
an equal share: it waited for a core about half of the time (``/proc/<pid>/task/<tid>/schedstat``),
and every request waited with it (docs/performance.md, "The proxy's thread first").

So the loop thread gets a nice value ``AHEAD`` steps lower than it had (``-5`` for a hub
started at 0: about three times the weight of each of the hub's other threads). Only this
thread: with ``SCHED_RESET_ON_FORK`` the kernel starts every thread and process it creates at
0 instead of its negative value, so nothing the hub starts from it (proxy workers; a user's
daemon or environment never is) inherits the priority. Against other
groups (the users' ``rediacc.slice``, other services) the cgroups' weights decide, as before.

Setting a lower nice value needs ``CAP_SYS_NICE``, which ``hub start`` has as root; without it
the thread stays as it was.

**The hub against other sessions** (``session_first``). Where the kernel groups processes by
session for the CPU (autogroups: a host whose PID 1 is not systemd, as the quick start's), the
hub's whole group got the same share as any other session's: a shell's, a build's, a load
generator's. The first seconds of 50 logins and a thousand reconnecting WebSockets need more
than a core of the proxy's thread, and it waited for one. So ``hub start``, when it leads its own
session (``setsid``, as the quick start starts it), moves its session's group ``AHEAD`` steps
ahead (``/proc/self/autogroup``): about three times another session's weight, as the unit
``hub install`` writes gives the service (``CPUWeight=300``). The session holds the hub's
threads, its workers and the short tools it runs (``iptables``, ``btrfs``, ``mount``); users'
daemons, policy sockets and environments each run in sessions and groups of their own and keep
their weights (``rediacc.slice``: ``--users-cpu-weight``). Under systemd, or in any CPU cgroup
but the root one, the kernel ignores the autogroup and the unit's weight decides.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("hubproxy")

AHEAD = 5  # nice steps: -5 against 0 is ~3x the weight (each step is ~1.25x)
NICE_MIN = -20
AUTOGROUP = Path("/proc/self/autogroup")  # "/autogroup-<n> nice <value>" (sched_autogroup)


def thread_nice(tid: int) -> int:
    """The nice value of one thread (Linux keeps it per thread)."""
    return os.getpriority(os.PRIO_PROCESS, tid)


@contextmanager
def loop_thread_first(ahead: int = AHEAD) -> Iterator[bool]:
    """Run the calling thread ``ahead`` nice steps before the process's other threads while the
    block runs; yields whether it could. Its nice value and scheduling flags are put back after."""
    tid = threading.get_native_id()
    before = thread_nice(tid)
    policy = os.sched_getscheduler(tid)
    favoured = False
    try:
        # The nice value first: without CAP_SYS_NICE it fails and nothing has changed (the flag,
        # once set, could not be taken back without it). This thread makes no thread or process
        # between the two calls, so none can start at the lower value.
        os.setpriority(os.PRIO_PROCESS, tid, max(NICE_MIN, before - ahead))
        os.sched_setscheduler(tid, policy | os.SCHED_RESET_ON_FORK, os.sched_param(0))
        favoured = True
    except OSError as e:  # no CAP_SYS_NICE, or a policy this does not know: leave it as it was
        log.debug("hub: the proxy thread keeps its CPU priority (%s)", e)
        _restore(tid, before, policy)
    try:
        yield favoured
    finally:
        if favoured:
            _restore(tid, before, policy)


def _restore(tid: int, nice: int, policy: int) -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, tid, nice)
        if os.sched_getscheduler(tid) != policy:
            os.sched_setscheduler(tid, policy, os.sched_param(0))
    except OSError as e:
        log.debug("hub: could not put the proxy thread's CPU priority back (%s)", e)


def autogroup_nice(path: Path = AUTOGROUP) -> int | None:
    """The nice value of this process's session group, or None without autogroups."""
    try:
        return int(path.read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        return None


def session_first(ahead: int = AHEAD, path: Path = AUTOGROUP) -> bool:
    """Put this process's session group ``ahead`` nice steps ahead of other sessions (which
    start at 0), when the process leads its session (else a shell and whatever else runs in it
    would move too); a group already further ahead stays so. Returns whether the group is ahead;
    without autogroups or ``CAP_SYS_NICE`` nothing changes."""
    if os.getsid(0) != os.getpid():
        log.info("hub: not the leader of its own session: its CPU group stays as it is")
        return False
    nice = autogroup_nice(path)
    if nice is None:
        return False
    if nice <= -ahead:
        return True
    try:
        path.write_text(str(max(NICE_MIN, -ahead)))
    except OSError as e:  # no CAP_SYS_NICE
        log.debug("hub: the hub's session keeps its CPU weight (%s)", e)
        return False
    return True
