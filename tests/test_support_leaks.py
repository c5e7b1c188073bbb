"""tests/support/leaks.py: the leak detector the e2e and quickstart tests assert with, and the
sweep that unmounts what a killed test run's dockerds left mounted (scripts/test.sh runs it).

Real bind and tmpfs mounts under the test's tmp dir; the "live dockerd" is a shell whose command
line reads ``dockerd --data-root <dir>`` (how hubcontrol.gc finds daemons), since a real per-user
dockerd is not what is under test here.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from hubcontrol import mounts
from tests.support import leaks

IN_CI = os.environ.get("CI", "").lower() == "true"
needs_root = pytest.mark.skipif(os.geteuid() != 0 and not IN_CI, reason="mounting needs root")


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def _data_dir(workspaces: Path, user: str) -> Path:
    data = workspaces / f"{user}-docker" / leaks.DAEMON_DATA
    data.mkdir(parents=True)
    _mount("--bind", str(data), str(data))  # as dockerd does with its --data-root
    return data


@needs_root
def test_sweep_unmounts_only_what_a_dead_daemon_left(tmp_path: Path) -> None:
    ws = tmp_path / "workspaces"
    dead = _data_dir(ws, "carol")
    merged = dead / "overlay2" / "abc" / "merged"  # a container's root, mounted inside it
    merged.mkdir(parents=True)
    _mount("-t", "tmpfs", "tmpfs", str(merged))
    live = _data_dir(ws, "dave")
    other = tmp_path / "not-a-daemon"
    other.mkdir()
    _mount("--bind", str(other), str(other))
    daemon = subprocess.Popen(
        ["dockerd", "-c", "sleep 60; true", "sh", "--data-root", str(live)], executable="/bin/sh"
    )
    try:
        # until the exec, /proc shows the forking Python's command line
        deadline = time.monotonic() + 5
        while not Path(f"/proc/{daemon.pid}/cmdline").read_bytes().startswith(b"dockerd\0"):
            assert time.monotonic() < deadline, "the stand-in dockerd did not start"
            time.sleep(0.01)
        found = leaks.leftovers(tmp_path)
        assert f"mount {merged}" in found and f"mount {dead}" in found
        assert f"dockerd pid {daemon.pid} (--data-root {live})" in found

        stale = leaks.stale_daemon_mounts([str(tmp_path)])
        assert stale == [(ws / "carol-docker", [str(merged), str(dead)])]
        assert leaks.sweep_stale_daemon_mounts([str(tmp_path)]) == [str(dead)]
        assert mounts.mounts_under(dead) == []
        assert mounts.mounts_under(live) == [str(live)]  # its dockerd runs: never touched
        assert mounts.mounts_under(other) == [str(other)]  # not a daemon's data directory
        assert leaks.sweep_stale_daemon_mounts([str(tmp_path)]) == []
    finally:
        daemon.kill()
        daemon.wait()
        for point in mounts.mounts_under(tmp_path):
            subprocess.run(["umount", "-l", point], capture_output=True)
    assert mounts.mounts_under(tmp_path) == []


def test_sweep_looks_only_under_the_given_bases(tmp_path: Path) -> None:
    assert leaks.stale_daemon_mounts([str(tmp_path / "no-such-base-*")]) == []
