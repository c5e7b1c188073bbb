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
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from hubcontrol.supervisor import SYSTEM_CONTAINERD
from tests.support.procs import stop


@contextlib.contextmanager
def running(socket: Path = SYSTEM_CONTAINERD) -> Iterator[Path]:
    if socket.exists():
        yield socket
        return
    tmp = Path(tempfile.mkdtemp(prefix="sysctrd-"))
    config = tmp / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{tmp / "root"}"\n'
        f'state = "{tmp / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{socket}"\n'
    )
    socket.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
    log = (tmp / "containerd.log").open("wb")
    proc = subprocess.Popen(
        ["containerd", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 20
        while not socket.is_socket():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the test's system containerd did not start: {(tmp / 'containerd.log').read_text()}"
                )
            time.sleep(0.02)
        yield socket
    finally:
        stop(proc, 10)
        log.close()
        for leftover in (socket, socket.with_name(socket.name + ".ttrpc")):
            leftover.unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
