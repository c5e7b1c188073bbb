"""A scratch dockerd for tests of components that only need *a* daemon (audit, policy, checkpoint).

The product's own per-user daemons are started by ``hubcontrol``'s supervisor; this fixture is the
minimal equivalent for tests that must not depend on it. Facts it relies on are in BRIEF.md:
own data/exec roots, socket, pidfile and config file per daemon; a pre-created bridge; experimental
mode and tini-static as init so CRIU restores work; CRIU found through PATH.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from hubcontrol import mounts
from tests.support.procs import stop

CRIU_BIN = "/opt/rediacc/criu/bin"


@dataclass
class ScratchDaemon:
    root: Path
    socket: Path
    bridge: str
    proc: subprocess.Popen
    cmd: list[str] | None = None
    env: dict[str, str] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def restart(self) -> None:
        """Stop the daemon and start it again on the same roots (containers with restart
        policies are started by the daemon itself, as after a host's daemon restart)."""
        stop(self.proc, 30)
        with open(self.root / "dockerd.log", "ab") as log:
            self.proc = subprocess.Popen(
                self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        _wait_ready(self.proc, self.socket, self.root)

    def client(self):
        import docker

        return docker.DockerClient(base_url=self.url, version="auto", timeout=60)


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def _unmount_under(path: Path) -> None:
    for m in mounts.mounts_under(path):
        subprocess.run(["umount", "-l", m], capture_output=True)


def _answers_ping(sock: Path) -> bool:
    """Whether a daemon answers ``GET /_ping`` on ``sock``. A plain socket, closed on every
    path: httpx's client leaves the socket of a refused Unix connection for the collector, and
    its ResourceWarning then fails whichever test is running."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        try:
            s.connect(str(sock))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
        except OSError:
            return False
    return (
        answer.startswith(b"HTTP/1.")
        and b" 200 " in answer.split(b"\r\n", 1)[0]
        and answer.endswith(b"OK")
    )


def _wait_ready(proc: subprocess.Popen, sock: Path, root: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"dockerd exited: {(root / 'dockerd.log').read_text()[-2000:]}")
        if _answers_ping(sock):
            return
        if time.monotonic() > deadline:
            raise RuntimeError("dockerd did not answer /_ping within 30 s")
        time.sleep(0.05)


def start_containerd(
    config: Path, root: Path, state: Path, address: Path, log, env: dict | None = None
) -> subprocess.Popen:
    """A containerd with its root, state and socket where given (its configuration written to
    ``config``), output to the open file ``log``, in a session of its own; returns once it
    listens, RuntimeError with its log if it exits or does not listen within 20 s."""
    config.write_text(
        f'version = 2\nroot = "{root}"\nstate = "{state}"\n'
        f'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n[grpc]\n  address = "{address}"\n'
    )
    proc = subprocess.Popen(
        ["containerd", "--config", str(config)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not address.is_socket():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc, 10)
            raise RuntimeError(f"containerd did not start: {Path(log.name).read_text()[-2000:]}")
        time.sleep(0.02)
    return proc


def own_containerd(root: Path, exec_root: Path, env: dict, log) -> subprocess.Popen:
    """A containerd of a scratch daemon's own, listening at ``<exec_root>/containerd.sock``.

    Beside a system containerd (a developer's host with docker.io) dockerd would hand its
    containers to that one, which runs runc with its own PATH: no CRIU wrapper, so every
    checkpoint fails. The hub gives its per-user daemons their own for that reason
    (``hubcontrol.supervisor.private_containerd``); the scratch daemons of checkpoint tests do the
    same. CI has no system containerd: there dockerd starts its own, as before."""
    exec_root.mkdir(parents=True, exist_ok=True)
    return start_containerd(
        root / "containerd.toml", root / "containerd", exec_root / "containerd",
        exec_root / "containerd.sock", log, env,
    )  # fmt: skip


@contextlib.contextmanager
def scratch_dockerd(index: int, *, iptables: bool = False):
    """Start a dockerd with bridge ``hubt<index>`` on 10.250.<index>.1/24; yield a ScratchDaemon."""
    root = Path(tempfile.mkdtemp(prefix=f"hubt{index}-", dir="/tmp"))
    exec_root = Path(f"/run/hubt{index}")
    sock = exec_root / "docker.sock"
    bridge = f"hubt{index}"
    subprocess.run(["ip", "link", "del", bridge], capture_output=True)
    _run("ip", "link", "add", bridge, "type", "bridge")
    _run("ip", "addr", "add", f"10.250.{index}.1/24", "dev", bridge)
    _run("ip", "link", "set", bridge, "up")
    (root / "tmp").mkdir()
    config = root / "daemon.json"
    config.write_text(json.dumps({}))
    env = dict(os.environ, TMPDIR=str(root / "tmp"), PATH=f"{CRIU_BIN}:{os.environ['PATH']}")
    cmd = [
        "dockerd",
        "--data-root",
        str(root / "data"),
        "--exec-root",
        str(exec_root),
        "-H",
        f"unix://{sock}",
        "--pidfile",
        str(root / "docker.pid"),
        "--config-file",
        str(config),
        "--bridge",
        bridge,
        "--experimental",
        "--init-path",
        "/usr/bin/tini-static",
        f"--iptables={'true' if iptables else 'false'}",
        "--ip-masq=false" if not iptables else "--ip-masq=true",
    ]
    log = open(root / "dockerd.log", "wb")
    containerd = None
    if os.path.exists("/run/containerd/containerd.sock"):
        # beside a system containerd (a developer's host with docker.io) dockerd would hand its
        # containers to that one, whose PATH has no CRIU: give it its own, as the hub does
        containerd = own_containerd(root, exec_root, env, log)
        cmd += ["--containerd", str(exec_root / "containerd.sock")]
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    daemon = ScratchDaemon(root=root, socket=sock, bridge=bridge, proc=proc, cmd=cmd, env=env)
    try:
        _wait_ready(proc, sock, root)
        yield daemon
    finally:
        proc = daemon.proc  # restart() replaces it
        if proc.poll() is None:
            with contextlib.suppress(Exception):
                c = ScratchDaemon(root, sock, bridge, proc).client()
                for ctr in c.containers.list(all=True):
                    ctr.remove(force=True)
            stop(proc, 30)
        if containerd is not None:
            stop(containerd, 10)
        log.close()
        _unmount_under(exec_root)
        _unmount_under(root)
        shutil.rmtree(exec_root, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
