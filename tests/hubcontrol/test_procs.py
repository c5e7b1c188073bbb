"""``hubcontrol.procs``: the one answer to "is this process alive, and what does it run", on real
processes (a running child, a zombie, one that is gone)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from hubcontrol import procs


def _wait_state(pid: int, letter: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while procs.state(pid) != letter:
        assert time.monotonic() < deadline, f"{pid} never reached state {letter}"
        time.sleep(0.01)


def test_a_running_process_is_alive_and_shows_its_argv_byte_for_byte():
    odd = os.fsdecode(b"caf\xe9-not-utf8")  # what subprocess passes as the same bytes
    argv = [sys.executable, "-c", "import time; time.sleep(60)", odd, ""]
    child = subprocess.Popen(argv)
    try:
        deadline = time.monotonic() + 10
        while procs.cmdline(child.pid) != argv:  # the exec is under way for a moment
            assert time.monotonic() < deadline, procs.cmdline(child.pid)
            time.sleep(0.01)
        assert procs.alive(child.pid) and procs.state(child.pid) in ("R", "S", "D")
        assert child.pid in set(procs.pids())
    finally:
        child.kill()
        child.wait()


def test_a_zombie_is_dead_and_is_reaped_only_when_asked():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    _wait_state(child.pid, "Z")
    assert not procs.alive(child.pid)  # exited: holds no socket, mount or memory
    assert procs.cmdline(child.pid) == []
    assert procs.state(child.pid) == "Z"  # not reaped behind the caller's back
    assert not procs.alive(child.pid, reap=True)
    assert procs.state(child.pid) is None  # reaped: gone from /proc
    child.returncode = 0  # we reaped it; Popen must not wait for it again


def test_a_stopped_process_is_alive():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.kill(child.pid, signal.SIGSTOP)
        _wait_state(child.pid, "T")
        assert procs.alive(child.pid)  # frozen (a paused container's process) is not dead
    finally:
        child.kill()
        child.wait()


def test_a_process_that_is_gone():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert procs.state(child.pid) is None and not procs.alive(child.pid)
    assert procs.cmdline(child.pid) == [] and child.pid not in set(procs.pids())
