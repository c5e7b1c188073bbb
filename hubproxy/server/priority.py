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
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("hubproxy")

AHEAD = 5  # nice steps: -5 against 0 is ~3x the weight (each step is ~1.25x)
NICE_MIN = -20


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
