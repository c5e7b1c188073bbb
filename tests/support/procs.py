"""Ending a process a test started: SIGTERM, then SIGKILL when it does not exit in time."""

from __future__ import annotations

import signal
import subprocess


def stop(proc: subprocess.Popen, timeout: float) -> None:
    """Ask ``proc`` to exit (SIGTERM), wait up to ``timeout`` seconds, then kill it; reaps it
    either way. Nothing to do when it already exited."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
