"""Pinned bind sources: what the daemon is told to bind instead of a path in the workspace.

The daemon resolves a bind source when a container *starts*, which can be long after the policy
checked it at create, and again at every later start (``docker start``, restart policies, a
daemon restart). A user can swap a checked directory for a symlink to ``/`` in between. So the
policy socket never hands the daemon a path the user can change. For each allowed bind it:

1. opens the checked path below the workspace with ``openat2`` and ``RESOLVE_BENEATH |
   RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`` (``mounts.open_beneath``): the
   kernel refuses a symlink anywhere on the way, so the descriptor holds the very directory (or
   file) that was checked, or the open fails;
2. bind-mounts that descriptor (``/proc/self/fd/N``, no path walked again) on a fresh point
   ``<binds>/.mnt/<id>.<gen>``, ``nosuid,nodev`` (and ``ro`` when the bind asked for it), without
   ``nosymfollow``: symlinks *inside* the directory then work in the container, where they
   resolve within the container's own mount namespace;
3. publishes it as the symlink ``<binds>/<id>`` -> ``.mnt/<id>.<gen>``, by ``rename(2)``: a pin is
   either the checked object or absent, never an empty directory in between;
4. rewrites the bind to ``--mount type=bind,source=<binds>/<id>``: for a ``Mounts`` bind the
   daemon never creates a missing source (for ``Binds`` it would, silently binding an empty
   directory), so a pin that is gone makes the container's start fail.

``<binds>`` is ``<exec-root>/binds``, root-owned and 0700 inside the 0700 exec-root: no user can
reach or bind it. The container's ``rediacc.binds`` label records each pin's path inside the
workspace and whether it is read-only, so a pin can be made again with a fresh check (after a
reboot emptied ``/run``, or on a ``docker start`` through the policy socket).

Pins outlive the policy socket on purpose: a daemon restart starts containers with restart
policies before the hub starts the policy socket again, and those must find their pins.
Unreferenced pins are removed by ``gc`` (the policy socket runs it after container create, remove and
prune, and when it starts).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import secrets
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hubcontrol import mounts
from hubcontrol.dockerpolicy import BINDS_LABEL as LABEL  # id -> {"path": relpath, "ro": bool}
from hubcontrol.storage import CHECKPOINT_DIR

log = logging.getLogger(__name__)

MOUNTS = ".mnt"
_ID = re.compile(r"^[0-9a-f]{32}$")


def default_binds_dir(listen: str | Path) -> str:
    """``<exec-root>/binds`` for a socket at ``<exec-root>/env/docker.sock``: beside the env
    directory, never inside it (the environment mounts that directory), in the exec-root that
    is root-only."""
    return str(Path(listen).parent.parent / "binds")


def check_relpath(rel: str) -> str:
    """``rel`` as a path strictly inside the workspace and outside its checkpoint directory, or
    ValueError. Structural only; ``open_beneath`` then refuses symlinks and ``..`` on the way."""
    parts = [p for p in str(rel).split("/") if p not in ("", ".")]
    if (
        not parts
        or str(rel).startswith("/")
        or ".." in parts
        or parts[0] == CHECKPOINT_DIR
        or "\0" in str(rel)
    ):
        raise ValueError(f"{rel!r} is not a path inside the workspace")
    return "/".join(parts)


def parse_label(value: object) -> dict[str, tuple[str, bool]]:
    """``{id: (relpath, readonly)}`` from a ``rediacc.binds`` label; malformed entries are left
    out (an image may carry a forged label: it only ever names paths that are checked again)."""
    try:
        data = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        return {}
    out: dict[str, tuple[str, bool]] = {}
    for pid, entry in (data or {}).items() if isinstance(data, dict) else ():
        if _ID.match(pid) and isinstance(entry, dict) and isinstance(entry.get("path"), str):
            out[pid] = (entry["path"], entry.get("ro") is True)
    return out


def wanted(
    containers: Iterable[Mapping[str, Any]], directory: str
) -> dict[str, tuple[str, bool] | None]:
    """Every pin id that a container (as ``GET /containers/json?all=1`` lists it) binds from
    ``directory``, with its ``(relpath, readonly)`` from that container's own label, or None when
    no container's label describes it (``--volumes-from`` copies a bind, not the label)."""
    out: dict[str, tuple[str, bool] | None] = {}
    for c in containers:
        labels = c.get("Labels") or {}
        described = parse_label(labels.get(LABEL))
        for m in c.get("Mounts") or []:
            pid = pin_id(m.get("Source") or "", directory)
            if pid is not None and out.get(pid) is None:
                out[pid] = described.get(pid)
    return out


def pin_id(source: str, directory: str) -> str | None:
    """The pin id of a bind source in ``directory``, or None when it is not a pin."""
    head, _, name = source.rpartition("/")
    return name if head == directory.rstrip("/") and _ID.match(name) else None


class BindPins:
    """The pins of one user's workspace under ``directory`` (``<exec-root>/binds``).

    Blocking, but only a handful of syscalls each: the policy socket calls them in its event
    loop, which keeps every pin and its bookkeeping in one thread."""

    def __init__(self, workspace: str, directory: str) -> None:
        self.workspace = os.path.realpath(workspace)  # the operator's path, up to <ws>/<user>
        self.directory = directory.rstrip("/")
        self.made: list[str] = []  # pins made since the caller last took them (take_made)

    @property
    def mounts_dir(self) -> str:
        return f"{self.directory}/{MOUNTS}"

    def path(self, pid: str) -> str:
        return f"{self.directory}/{pid}"

    def prepare(self) -> None:
        """Create ``directory`` and its mount dir as root-owned 0700 directories; refuse to use
        one that is anything else (a symlink, another owner)."""
        os.makedirs(os.path.dirname(self.directory), 0o700, exist_ok=True)  # the exec-root
        for d in (self.directory, self.mounts_dir):
            with contextlib.suppress(FileExistsError):
                os.mkdir(d, 0o700)
            st = os.lstat(d)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                raise OSError(errno.EPERM, "not a directory of ours; remove it", d)
            os.chmod(d, 0o700)

    def pin(self, rel: str, readonly: bool, create: bool = False) -> str:
        """Pin ``rel`` (inside the workspace) as a new pin; return the source to hand the
        daemon. ``create`` makes missing directories as ``docker run -v`` would. Raises OSError
        (ELOOP: a symlink on the way; EXDEV: out of the workspace; ENOENT) or ValueError."""
        pid = secrets.token_hex(16)
        self._attach(pid, rel, readonly, create)
        self.made.append(pid)
        return self.path(pid)

    def take_made(self) -> list[str]:
        made, self.made = self.made, []
        return made

    def repin(self, pid: str, rel: str, readonly: bool) -> None:
        """Pin ``rel`` again under the existing id ``pid``, with a fresh check; the old mount is
        replaced atomically. On failure the pin is removed (its containers then fail to start,
        "bind source path does not exist") and the error raised."""
        try:
            self._attach(pid, rel, readonly, create=False)
        except (OSError, ValueError):
            self.remove(pid)
            raise

    def _attach(self, pid: str, rel: str, readonly: bool, create: bool) -> None:
        if not _ID.match(pid):
            raise ValueError(f"{pid!r} is not a pin id")
        rel = check_relpath(rel)
        root = os.open(self.workspace, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fd = mounts.open_beneath(root, rel, create_dirs=create)
        finally:
            os.close(root)
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISLNK(mode):  # openat2 refuses these already; never bind a link itself
                raise OSError(errno.ELOOP, "a symlink", rel)
            gen = f"{pid}.{secrets.token_hex(4)}"
            point = f"{self.mounts_dir}/{gen}"
            if stat.S_ISDIR(mode):
                os.mkdir(point, 0o700)
            else:  # a file (or socket) is bound onto an empty file
                os.close(os.open(point, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600))
            try:
                mounts.bind_fd(fd, point, readonly=readonly)
            except BaseException:
                _remove_point(point)
                raise
        finally:
            os.close(fd)
        link = f"{self.directory}/.{gen}.new"
        os.symlink(f"{MOUNTS}/{gen}", link)
        os.rename(link, self.path(pid))  # atomic: the old pin or the new one, never neither
        self._drop_mounts(pid, keep=gen)

    def remove(self, pid: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(pid))
        self._drop_mounts(pid)

    def _drop_mounts(self, pid: str, keep: str | None = None) -> None:
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.mounts_dir):
                if name.startswith(pid + ".") and name != keep:
                    _remove_point(f"{self.mounts_dir}/{name}")

    def ids(self) -> set[str]:
        """The pins present (published) now."""
        try:
            return {n for n in os.listdir(self.directory) if _ID.match(n)}
        except FileNotFoundError:
            return set()

    def attached(self, pid: str) -> bool:
        """Whether pin ``pid`` is published and its mount is in place."""
        try:
            target = os.readlink(self.path(pid))
        except OSError:
            return False
        return mounts.mount_options(f"{self.directory}/{target}") is not None

    def clear(self) -> None:
        """Remove every pin and the directory (the user's daemon and containers are gone)."""
        for pid in self.ids():
            self.remove(pid)
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.mounts_dir):
                _remove_point(f"{self.mounts_dir}/{name}")
        for d in (self.mounts_dir, self.directory):
            with contextlib.suppress(FileNotFoundError):
                for name in os.listdir(d):
                    if name.endswith(".new"):
                        os.unlink(f"{d}/{name}")
                os.rmdir(d)


def _remove_point(point: str) -> None:
    """Unmount everything stacked at ``point``, then remove it (never what was mounted there)."""
    for _ in range(16):
        try:
            mounts.umount(point)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ENOENT):
                break
            raise
    try:
        os.rmdir(point)
    except NotADirectoryError:
        os.unlink(point)
    except FileNotFoundError:
        pass
