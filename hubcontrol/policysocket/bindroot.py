"""The no-symlink view of the workspace that containers created before pins bind through.

Earlier versions handed the daemon paths in ``<exec-root>/workspace``, a ``nosymfollow`` bind
mount of the workspace. Containers created then still name those paths, so the policy socket
mounts the view again while such a container exists (``PolicySocket.collect_pins``) and removes
it otherwise; the hub removes it when it stops the policy socket.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

from hubcontrol import mounts


def default_bind_root(listen: str | Path) -> str:
    """``<exec-root>/workspace`` for a socket at ``<exec-root>/env/docker.sock``: where earlier
    versions mounted a nosymfollow view of the workspace for binds (``mount_bind_root``)."""
    return str(Path(listen).parent.parent / "workspace")


def mount_bind_root(workspace: str, bind_root: str) -> None:
    """Make ``bind_root`` a view of ``workspace`` that never follows symlinks (idempotent).

    Only for containers created before bind sources were pinned: their binds name paths in this
    view (``<exec-root>/workspace``), and keep working, with symlinks failing as they did.

    A view already mounted there is kept only if it shows this very workspace: network IDs are
    reused, and a view left behind by an earlier user of this ID would hand that user's
    workspace to the next one."""
    os.makedirs(workspace, exist_ok=True)
    os.makedirs(bind_root, mode=0o700, exist_ok=True)
    while (options := mounts.mount_options(bind_root)) is not None:
        if _same_directory(bind_root, workspace) and options >= {"nosymfollow", "nosuid", "nodev"}:
            return
        if subprocess.run(["umount", bind_root], capture_output=True).returncode:
            subprocess.run(["umount", "-l", bind_root], capture_output=True, check=True)
    subprocess.run(["mount", "--bind", workspace, bind_root], check=True, capture_output=True)
    subprocess.run(
        ["mount", "-o", "remount,bind,nosymfollow,nosuid,nodev", bind_root],
        check=True,
        capture_output=True,
    )


def _same_directory(a: str, b: str) -> bool:
    sa, sb = os.stat(a), os.stat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def unmount_bind_root(bind_root: str) -> None:
    if mounts.mount_options(bind_root) is not None:
        subprocess.run(["umount", "-l", bind_root], capture_output=True)
    with contextlib.suppress(OSError):
        os.rmdir(bind_root)
