"""A system containerd at ``/run/containerd/containerd.sock``, as a real host has one.

Every host with Debian's docker.io or Docker CE runs containerd.service, and a dockerd started
there finds that socket and uses it instead of starting its own containerd. The hub must keep
each user's containerd their own on such a host (``hubcontrol.supervisor.private_containerd``),
so the tests that matter run once with and once without one.

``running()`` starts a real containerd (Debian's package, installed with docker.io by
scripts/setup-host.sh) listening at the system path, with its root and state in a temporary
directory, and on exit stops it and removes its sockets: nothing else of it stays on the host.
When a system containerd already runs (a host that has one), it is used as it is.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hubcontrol.supervisor import SYSTEM_CONTAINERD
from tests.support.dockerd import start_containerd
from tests.support.procs import stop


@contextlib.contextmanager
def running(socket: Path = SYSTEM_CONTAINERD) -> Iterator[Path]:
    if socket.exists():
        yield socket
        return
    tmp = Path(tempfile.mkdtemp(prefix="sysctrd-"))
    socket.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
    log = (tmp / "containerd.log").open("wb")
    proc = None
    try:
        proc = start_containerd(tmp / "config.toml", tmp / "root", tmp / "state", socket, log)
        yield socket
    finally:
        if proc is not None:
            stop(proc, 10)
        log.close()
        for leftover in (socket, socket.with_name(socket.name + ".ttrpc")):
            leftover.unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
