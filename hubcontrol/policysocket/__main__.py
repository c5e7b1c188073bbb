"""``python -m hubcontrol.policysocket``: one user's policy socket, as its own process.

The hub starts it (``hubcontrol.policysockets``) with every setting as a ``--flag=value``; this
module turns them into a ``ProxyConfig``, serves until SIGTERM or SIGINT, drops idle connections
on SIGUSR1, and ends by itself once its socket file is gone or replaced.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio
from anyio.abc import TaskStatus

from hubcontrol import dockerpolicy as policy
from hubcontrol.policysocket.pins import default_binds_dir
from hubcontrol.policysocket.server import PolicySocket, ProxyConfig

log = logging.getLogger("hubcontrol.policysocket")

PROG = "python -m hubcontrol.policysocket"


def config_from_argv(argv: Sequence[str]) -> tuple[ProxyConfig, str | None]:
    p = argparse.ArgumentParser(prog=PROG, description="One user's docker-socket policy.")
    p.add_argument("--listen", required=True, help="policy socket path to create")
    p.add_argument("--upstream", required=True, help="the user's dockerd socket")
    p.add_argument(
        "--workspace", default="", help="host path of the user's workspace (none: ephemeral)"
    )
    p.add_argument("--container-workspace", default="/workspace")
    p.add_argument("--binds-dir", help="where bind sources are pinned (default: beside env/)")
    p.add_argument(
        "--user-network",
        action="append",
        default=[],
        help="CIDR the user's own networks may use (repeatable)",
    )
    p.add_argument(
        "--allow-registry",
        action="append",
        default=[],
        help="registry host[:port] allowed even on a local address (repeatable)",
    )
    p.add_argument("--publish-ip", help='address the daemon binds published ports to (its "ip")')
    p.add_argument("--idle-timeout", type=float, default=30.0)
    p.add_argument("--pidfile", help="write the process ID here while serving")
    p.add_argument("--audit-dir", help="also write refusals to <audit-dir>/<user>.log")
    p.add_argument("--audit-user", help="the username audit records name")
    p.add_argument("--net-id", type=int, help="the user's network ID, for audit records")
    a = p.parse_args(argv)
    listen = Path(a.listen)
    ctx = policy.PolicyContext(
        workspace=os.path.abspath(a.workspace) if a.workspace else "",
        container_workspace=a.container_workspace,
        policy_socket=str(listen),
        user_networks=tuple(a.user_network),
        allowed_registries=frozenset(a.allow_registry),
        publish_ip=a.publish_ip,
    )
    config = ProxyConfig(
        listen=listen,
        upstream=Path(a.upstream),
        context=ctx,
        idle_timeout=a.idle_timeout,
        audit_dir=Path(a.audit_dir) if a.audit_dir else None,
        audit_user=a.audit_user,
        net_id=a.net_id,
        binds_dir=Path(a.binds_dir or default_binds_dir(listen)),
    )
    return config, a.pidfile


async def _run(config: ProxyConfig, pidfile: str | None) -> None:
    server = PolicySocket(config)
    # The handlers go in before the process says it serves (its pidfile, the ready pipe): the
    # hub may stop it the moment it finds it, and a SIGTERM before them would end it without
    # its cleanup (its view's mounts, its pidfile). Signals that arrive early wait in the
    # receiver.
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as sigs:
        async with anyio.create_task_group() as tg:
            await tg.start(_serve_then_stop, server, tg.cancel_scope)
            if pidfile:
                await anyio.Path(pidfile).write_text(f"{os.getpid()}\n")
            _tell_ready()
            try:
                async for signum in sigs:
                    if signum == signal.SIGUSR1:
                        log.info("dropped %d idle connections", server.drop_idle())
                        continue
                    tg.cancel_scope.cancel()
                    return
            finally:
                if pidfile:
                    with anyio.CancelScope(shield=True):  # the task group is being cancelled
                        await anyio.to_thread.run_sync(_remove_own_pidfile, pidfile)


def _tell_ready() -> None:
    """Write one byte to the pipe the hub handed over (``hubcontrol.policysockets``,
    ``READY_FD_ENV``; the name is repeated here, as this package imports nothing of the hub's
    side) and close it: the hub's start waits on it instead of polling for the socket."""
    value = os.environ.pop("HUB_POLICY_SOCKET_READY_FD", "")
    if not value.isdigit():
        return
    fd = int(value)
    with contextlib.suppress(OSError):
        if stat.S_ISFIFO(os.fstat(fd).st_mode):  # never another descriptor of this process
            with contextlib.suppress(OSError):
                os.write(fd, b"R")
            os.close(fd)


def _remove_own_pidfile(pidfile: str) -> None:
    """Remove ``pidfile`` if it names this process: a policy socket that replaced this one has
    written its own."""
    with contextlib.suppress(OSError, ValueError):
        if int(Path(pidfile).read_text()) == os.getpid():
            os.unlink(pidfile)


async def _serve_then_stop(
    server: PolicySocket, scope: anyio.CancelScope, *, task_status: TaskStatus[PolicySocket]
) -> None:
    """Serve; when serving ends on its own (the socket file went away), end the process."""
    await server.serve(task_status=task_status)
    scope.cancel()


def main(argv: Sequence[str] | None = None) -> None:
    log_format = "%(asctime)s %(name)s %(levelname)s %(message)s"
    logging.basicConfig(level=logging.INFO, format=log_format)
    from hubcontrol.text import install_log_formatter  # small; only when served

    install_log_formatter(log_format)  # refusal reasons quote what the user sent
    config, pidfile = config_from_argv(sys.argv[1:] if argv is None else argv)
    anyio.run(_run, config, pidfile)


if __name__ == "__main__":
    main()
