"""The proxy's loop thread runs ahead of the hub's other threads, and passes that on to nothing
it starts (hubproxy/server/priority.py). Real threads and processes; needs root (CAP_SYS_NICE),
as ``hub start`` has."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hubproxy.server.priority import AHEAD, autogroup_nice, loop_thread_first, thread_nice

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a lower nice value needs root")


def _in_a_thread(fn):
    """Run ``fn`` in a thread of its own (the test's own thread keeps its priority whatever
    happens) and return what it returned, or raise what it raised."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the test's thread
            box["error"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    if "error" in box:
        raise box["error"]
    return box["value"]


def _other_threads_nice(tid: int) -> set[int]:
    """The nice values of this process's other threads (one that ends meanwhile is skipped)."""
    found = set()
    for t in os.listdir("/proc/self/task"):
        if int(t) != tid:
            try:
                found.add(thread_nice(int(t)))
            except ProcessLookupError:
                pass
    return found


def test_the_loop_thread_runs_ahead_while_it_serves_and_as_before_after() -> None:
    def body() -> tuple[int, int, bool, int, int]:
        tid = threading.get_native_id()
        before = thread_nice(tid)
        with loop_thread_first() as favoured:
            during = thread_nice(tid)
            others = _other_threads_nice(tid)
        assert others == {before}, "only the loop's own thread changes"
        return before, during, favoured, thread_nice(tid), os.sched_getscheduler(tid)

    before, during, favoured, after, policy = _in_a_thread(body)
    assert favoured
    assert during == max(-20, before - AHEAD)
    assert after == before
    assert not policy & os.SCHED_RESET_ON_FORK


def test_threads_and_processes_it_starts_do_not_inherit_the_priority() -> None:
    """The hub's proxy workers are started from this thread; a user's daemon or environment never
    is, and if one were it would still start at the ordinary priority."""

    def body() -> tuple[int, int, int]:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 0)  # as `hub start` runs
        with loop_thread_first() as favoured:
            assert favoured
            seen: dict = {}
            t = threading.Thread(
                target=lambda: seen.update(nice=thread_nice(threading.get_native_id()))
            )
            t.start()
            t.join()
            child = subprocess.Popen(["sleep", "5"])
            try:
                child_nice = thread_nice(child.pid)  # its only thread
            finally:
                child.kill()
                child.wait()
            return thread_nice(threading.get_native_id()), seen["nice"], child_nice

    loop_nice, thread_started, process_started = _in_a_thread(body)
    assert loop_nice == -AHEAD
    assert thread_started == 0
    assert process_started == 0


def test_without_the_capability_the_thread_stays_as_it_was() -> None:
    """A hub without CAP_SYS_NICE (a unit that drops it) serves as before: the thread keeps its
    priority, and nothing fails."""
    code = (
        "import os, threading\n"
        "from hubproxy.server.priority import loop_thread_first, thread_nice\n"
        "tid = threading.get_native_id()\n"
        "with loop_thread_first() as favoured:\n"
        "    print(favoured, thread_nice(tid), os.sched_getscheduler(tid) & os.SCHED_RESET_ON_FORK)\n"
        "print(thread_nice(tid))\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        ["setpriv", "--bounding-set=-sys_nice", "--inh-caps=-sys_nice", sys.executable, "-c", code],
        capture_output=True, text=True, cwd=root, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "0", "0", "0"]


SESSION_CODE = (
    "import subprocess\n"
    "from hubproxy.server.priority import autogroup_nice, session_first\n"
    "done = session_first() and session_first()  # twice: still 5 steps, not 10\n"
    # empty in the kernel's root group: a session never made since boot (PID 1's)
    "own = open('/proc/self/autogroup').read().split() or ['root']\n"
    # a process the hub starts in a session of its own, as every user's daemon and policy socket
    "other = subprocess.run(['setsid', '--wait', 'cat', '/proc/self/autogroup'],\n"
    "                       capture_output=True, text=True).stdout.split()\n"
    "print(done, autogroup_nice(), other[-1], own[0] != other[0])\n"
)


def _session_code(*prefix: str) -> list[str]:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [*prefix, sys.executable, "-c", SESSION_CODE], capture_output=True, text=True, cwd=root,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="a kernel without autogroups")
def test_a_hub_that_leads_its_session_moves_its_group_ahead_of_other_sessions() -> None:
    """``hub start`` started with ``setsid`` (the quick start): its session's CPU group is 5 steps
    ahead; a session it starts (a user's daemon) is not. Started inside another session (a shell's),
    it leaves that session's group as it is, and without CAP_SYS_NICE nothing changes."""
    assert _session_code("setsid", "--wait") == ["True", str(-AHEAD), "0", "True"]
    # A session that has never been made since boot (PID 1's, which CI's runner may keep) is the
    # kernel's root group: its /proc/<pid>/autogroup reads empty, and its nice is None.
    mine = Path("/proc/self/autogroup").read_text()
    assert _session_code() == ["False", str(autogroup_nice()), "0", "True"]
    assert Path("/proc/self/autogroup").read_text() == mine  # the test's own session: untouched
    no_cap = ("setpriv", "--bounding-set=-sys_nice", "--inh-caps=-sys_nice", "setsid", "--wait")
    assert _session_code(*no_cap) == ["False", "0", "0", "True"]
