"""Per-user directories: the workspace and the data-root dir, a BTRFS subvolume where possible.

On BTRFS (the seed's setup) ``<workspace-dir>/<u>-docker`` is its own subvolume, so it can be
snapshotted, given a quota and deleted as a unit by ``hub gc``; elsewhere it is a plain directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hubcontrol.errors import HubError


@dataclass(frozen=True)
class UserPaths:
    """Every host path of one user (docs/architecture.md, "Names and paths")."""

    workspace_dir: Path
    user: str  # the safe name

    @property
    def workspace(self) -> Path:
        return self.workspace_dir / self.user

    @property
    def checkpoints(self) -> Path:
        return self.workspace / ".checkpoint"

    @property
    def data_root_dir(self) -> Path:
        return self.workspace_dir / f"{self.user}-docker"

    @property
    def daemon_dir(self) -> Path:
        return self.data_root_dir / ".rediacc" / "docker"

    @property
    def data_root(self) -> Path:
        return self.daemon_dir / "data"

    @property
    def daemon_config(self) -> Path:
        return self.daemon_dir / "daemon.json"

    @property
    def pidfile(self) -> Path:
        return self.daemon_dir / "docker.pid"

    @property
    def tmpdir(self) -> Path:
        return self.daemon_dir / "tmp"

    @property
    def log(self) -> Path:
        return self.daemon_dir / "dockerd.log"


def filesystem_type(path: Path) -> str:
    """The filesystem type of the nearest existing ancestor of ``path`` (e.g. ``btrfs``)."""
    path = Path(path)
    while not path.exists():
        path = path.parent
    proc = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True)
    return proc.stdout.strip()


def is_subvolume(path: Path) -> bool:
    """True for a BTRFS subvolume root (inode 256 on a btrfs filesystem)."""
    try:
        return os.stat(path).st_ino == 256 and filesystem_type(path) == "btrfs"
    except OSError:
        return False


def ensure_data_root_dir(path: Path) -> bool:
    """Create the data-root dir (a subvolume on BTRFS). Returns True when it is a subvolume."""
    path = Path(path)
    if path.exists():
        return is_subvolume(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if filesystem_type(path.parent) == "btrfs":
        proc = subprocess.run(
            ["btrfs", "subvolume", "create", str(path)], capture_output=True, text=True
        )
        if proc.returncode == 0:
            return True
        if path.exists():  # lost a race with a concurrent creator
            return is_subvolume(path)
        raise HubError(
            "The hub could not create your storage.",
            f"btrfs subvolume create {path}: {proc.stderr.strip()}",
        )
    path.mkdir(mode=0o711, exist_ok=True)
    return False


def unmount_under(path: Path) -> None:
    """Lazily unmount everything mounted at or below ``path``, deepest first."""
    prefix = str(Path(path))
    try:
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
    except OSError:
        return
    inside = [p for p in points if p == prefix or p.startswith(prefix + "/")]
    for point in sorted(set(inside), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def remove_path(path: Path) -> None:
    """Remove a file, symlink or directory tree (best effort, no mounts followed)."""
    if path.is_dir() and not path.is_symlink():
        unmount_under(path)
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def remove_tree(path: Path) -> None:
    """Remove a data-root dir or workspace: subvolumes with ``btrfs subvolume delete``."""
    path = Path(path)
    if not path.exists():
        return
    unmount_under(path)
    subvolume = is_subvolume(path)
    # rmdir removes empty subvolumes too (kernel >= 4.18), including the ones dockerd's btrfs
    # storage driver nests inside; the top one is deleted explicitly so its space is reclaimed.
    if subvolume:
        for child in path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        subprocess.run(["btrfs", "subvolume", "delete", str(path)], capture_output=True)
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():
        raise HubError(
            "The hub could not remove your data.", f"could not remove {path}: still present"
        )
