"""Start a real policy socket (``python -m hubcontrol.socketproxy``, its own process, as in
production) in front of a scratch dockerd, with a temporary workspace."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hubcontrol import socketproxy

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class PolicySocket:
    socket: Path
    workspace: Path
    bind_root: Path
    proc: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def env(self) -> dict[str, str]:
        """Environment for the real docker CLI talking through the policy socket."""
        return dict(
            os.environ,
            DOCKER_HOST=self.url,
            DOCKER_BUILDKIT="0",
            DOCKER_CONFIG=str(self.workspace.parent / "cli"),
        )


@contextlib.contextmanager
def policy_socket(daemon, *, user_networks: tuple[str, ...] = ()):
    tmp = Path(tempfile.mkdtemp(prefix="hubpolicy-", dir="/tmp"))
    workspace = tmp / "ws" / "alice"
    workspace.mkdir(parents=True)
    (workspace / ".checkpoint").mkdir()
    listen = Path(f"{daemon.socket.parent}p/env/docker.sock")
    args = socketproxy.ProxyArgs(
        listen=str(listen),
        upstream=str(daemon.socket),
        workspace=str(workspace),
        user_networks=user_networks,
        idle_timeout=5,
    )
    log = tmp / "proxy.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            socketproxy.command(args), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 15
        while not listen.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"policy socket did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield PolicySocket(
            listen, workspace, Path(socketproxy.default_bind_root(listen)), proc, log
        )
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # The proxy unmounts its bind root on exit; make sure, then never rmtree through a mount.
        socketproxy.unmount_bind_root(socketproxy.default_bind_root(listen))
        shutil.rmtree(listen.parent.parent, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
