"""Start a real policy socket in front of a scratch dockerd, with a temporary workspace, the way
the hub does: ``policysockets.start`` runs ``python -m hubcontrol.policysocket`` as its own detached
process, ``policysockets.stop`` ends it; its bind pins (which outlive it, as in the hub) are
removed here, before anything is deleted."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hubcontrol import policysockets
from hubcontrol.policysocket import bindroot, pins


@dataclass
class PolicySocket:
    socket: Path
    workspace: Path
    args: policysockets.ProxyArgs
    pid: int
    log: Path

    def audit_records(self) -> list[dict]:
        from hubcontrol.auditlog import AuditLog, read_records

        return list(read_records(AuditLog(self.args.audit_dir).path(self.args.audit_user)))

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def env(self) -> dict[str, str]:
        """Environment for the real docker CLI talking through the policy socket."""
        return dict(
            os.environ,
            DOCKER_HOST=self.url,
            DOCKER_BUILDKIT="0",
            DOCKER_CONFIG=str(self.workspace.parent.parent / "cli"),
        )


@contextlib.contextmanager
def policy_socket(daemon, *, user_networks: tuple[str, ...] = (), publish_ip: str | None = None):
    tmp = Path(tempfile.mkdtemp(prefix="hubpolicy-", dir="/tmp"))
    workspace = tmp / "ws" / "alice"
    workspace.mkdir(parents=True)
    (workspace / ".checkpoint").mkdir()
    exec_root = Path(f"{daemon.socket.parent}p")
    args = policysockets.ProxyArgs(
        listen=str(exec_root / "env" / "docker.sock"),
        upstream=str(daemon.socket),
        workspace=str(workspace),
        user_networks=user_networks,
        publish_ip=publish_ip,
        idle_timeout=5,
        pidfile=str(tmp / "policy.pid"),
        audit_dir=str(tmp / "audit"),
        audit_user="-alice",  # a username may start with "-": it must not read as a flag
        net_id=32768,
    )
    log = tmp / "policy.log"
    try:
        pid = policysockets.start(args, log_path=log)
        yield PolicySocket(Path(args.listen), workspace, args, pid, log)
    finally:
        policysockets.stop(args)
        # pins are bind mounts of workspace directories: never rmtree through one
        pins.BindPins(str(workspace), pins.default_binds_dir(args.listen)).clear()
        bindroot.unmount_bind_root(bindroot.default_bind_root(args.listen))
        shutil.rmtree(exec_root, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
