"""Per-user directories: the workspace and the data-root dir, a BTRFS subvolume where possible.

On BTRFS (the seed's setup) ``<workspace-dir>/<u>-docker`` is its own subvolume, so it can be
snapshotted, given a quota and deleted as a unit by ``hub gc``; elsewhere it is a plain directory.

Ownership (docs/security.md, "Paths root touches"):

* ``<workspace-dir>`` is root's, mode 0700: no other host account reaches any workspace or
  data-root through it (a setuid file a root template leaves in a workspace is out of reach).
  Under ``--userns-remap`` it is 0711 instead: dockerd and the containers' root filesystems need
  each user's remapped root to pass through it to the data-root (dockerd refuses to start
  otherwise). Nothing in it can then be listed, workspace tops lose their "other" bits, and
  ``.rediacc`` and ``.rediacc/docker`` are root's with the user's namespace group, mode 0710,
  so one user's ids reach no other user's tree (``remap_modes``).
* ``<workspace-dir>/<u>`` (the workspace) is the only directory a user's environment writes; its
  top is given to the container user when the environment is created.
* ``<workspace-dir>/<u>-docker`` and everything the hub keeps in it are root's: no environment
  mounts it and the socket policy never binds it, so root's writes there cannot be redirected.
  ``prepare_user_tree`` makes and checks the chain without following links, once per start.
* ``<workspace-dir>/<u>/.checkpoint`` is root's, mode 0700, opened without following links
  (``checkpoint_dir``); it sits in the user's tree only because the seed puts it there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hubcontrol import mounts, names, safefs
from hubcontrol.errors import HubError, StorageError

CHECKPOINT_DIR = ".checkpoint"  # <workspace-dir>/<u>/.checkpoint/ (the seed's place)
WORKSPACE_DIR_MODE = 0o700
WORKSPACE_DIR_MODE_REMAP = 0o711  # --userns-remap: traversable, never listable
DATA_ROOT_DIR_MODE = 0o711
# (path below the data-root dir, mode, whether an existing dir gets the mode back)
_DAEMON_DIRS = (
    (".rediacc", 0o700, True),
    (".rediacc/docker", 0o700, True),
    (".rediacc/docker/data", 0o710, False),  # dockerd manages the data-root's own mode
    (".rediacc/docker/tmp", 0o700, True),
)


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
        return self.workspace / CHECKPOINT_DIR

    @property
    def data_root_dir(self) -> Path:
        return self.workspace_dir / f"{self.user}{names.DATA_ROOT_SUFFIX}"

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


def secure_workspace_dir(workspace_dir: Path, *, traversable: bool | None = False) -> None:
    """Make ``<workspace-dir>`` (and missing parents) and keep it root's with mode 0700, or 0711
    when ``traversable`` (``--userns-remap``); None keeps whichever of the two it has (callers
    that do not know the hub's choice, such as seeds, must not undo it)."""
    workspace_dir = Path(workspace_dir)
    workspace_dir.mkdir(parents=True, exist_ok=True, mode=WORKSPACE_DIR_MODE)
    st = os.stat(workspace_dir)
    if st.st_uid != 0:
        raise StorageError(
            "The hub's storage is misconfigured; please tell your administrator.",
            f"{workspace_dir} (--workspace-dir) is owned by uid {st.st_uid}; it must be root's: "
            f"chown root:root {workspace_dir}",
        )
    mode = st.st_mode & 0o7777
    if traversable is None:
        want = (
            mode if mode in (WORKSPACE_DIR_MODE, WORKSPACE_DIR_MODE_REMAP) else WORKSPACE_DIR_MODE
        )
    else:
        want = WORKSPACE_DIR_MODE_REMAP if traversable else WORKSPACE_DIR_MODE
    if mode != want:
        os.chmod(workspace_dir, want)


def remap_modes(userns_root: int | None) -> tuple[int, int]:
    """(gid, mode) of ``.rediacc`` and ``.rediacc/docker``: root's group and 0700 normally;
    under ``--userns-remap`` the group of the user's namespace root (host id ``userns_root``)
    with 0710, which dockerd requires of every directory above its data-root."""
    return (0, 0o700) if userns_root is None else (userns_root, 0o710)


def set_daemon_dirs_group(paths: UserPaths, userns_root: int | None) -> None:
    """Give ``.rediacc`` and ``.rediacc/docker`` the group and mode of ``remap_modes``."""
    gid, mode = remap_modes(userns_root)
    for rel in (".rediacc", ".rediacc/docker"):
        safefs.ensure_dir(
            paths.workspace_dir, Path(paths.data_root_dir.name, rel), mode=mode, gid=gid
        )


def overlap_problems(paths: UserPaths, records_dir: Path | None = None) -> list[str]:
    """What on disk shows that this user's tree overlaps another account's (empty: none).

    Older hubs took ``alice-docker`` as its own safe name, so that user's workspace was
    ``<ws>/alice-docker``: alice's data-root dir. Signs of it, any one enough: the data-root dir
    is a link, not a directory, not root's (workspaces are given to the container user), or
    holds a ``.checkpoint``; an entry the hub would derive from it (``alice-docker-docker``)
    exists; a user record of that name exists; the workspace holds a data-root's files."""
    problems = []
    if not names.is_safe_name(paths.user):
        problems.append(f"{paths.user!r} is not a safe name under the current naming rule")
    root = paths.data_root_dir
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(root)
        if stat.S_ISLNK(st.st_mode):
            problems.append(f"{root} is a symlink (to {os.readlink(root)}); data-roots never are")
        elif not stat.S_ISDIR(st.st_mode):
            problems.append(f"{root} is not a directory")
        else:
            if st.st_uid != 0:
                problems.append(
                    f"{root} is owned by uid {st.st_uid}, not root: it has been a user's workspace"
                )
            if os.path.lexists(root / CHECKPOINT_DIR):
                problems.append(f"{root} holds {CHECKPOINT_DIR}: it has been a user's workspace")
    for derived in names.derived_names(root.name):
        if os.path.lexists(paths.workspace_dir / derived):
            problems.append(
                f"{paths.workspace_dir / derived} exists: {root.name!r} has been a username, and "
                f"{root} that user's workspace"
            )
    if records_dir is not None and os.path.lexists(Path(records_dir) / f"{root.name}.json"):
        problems.append(f"a user record {Path(records_dir) / f'{root.name}.json'} exists")
    workspace = paths.workspace
    if safefs.is_link(workspace):
        problems.append(f"{workspace} is a symlink; workspaces never are")
    else:
        for inner in (".rediacc", ".networkid"):
            if os.path.lexists(workspace / inner):
                problems.append(f"{workspace} holds {inner}: it has been a data-root dir")
    return problems


def check_no_overlap(paths: UserPaths, records_dir: Path | None = None) -> None:
    """Raise ``StorageError`` naming what the operator should do when ``overlap_problems``."""
    problems = overlap_problems(paths, records_dir)
    if not problems:
        return
    other = paths.data_root_dir.name
    raise StorageError(
        "Your environment cannot start until an administrator checks your storage; nothing "
        f"was changed. (For the administrator: storage overlap for {paths.user}.)",
        f"storage of {paths.user} overlaps another account's tree, the hub will not start it:\n"
        + "".join(f"  - {p}\n" for p in problems)
        + f"An older hub let a user named {other!r} use {paths.data_root_dir} as their "
        f"workspace. The hub does not guess whose files are whose. To resolve: stop the hub, "
        f"move that user's files out of {paths.data_root_dir} (they are now user "
        f"{safe_or_none(other)!r}, workspace {paths.workspace_dir}/{safe_or_none(other)}), "
        f"remove {paths.workspace_dir}/{other}-docker and its user record, "
        f"`chown root:root {paths.data_root_dir}` and remove {CHECKPOINT_DIR} from it; or "
        f"remove {paths.data_root_dir} entirely (its daemon's images and containers are lost, "
        'the workspace is not). See docs/operations.md, "Names older hubs allowed".',
    )


def safe_or_none(username: str) -> str | None:
    with contextlib.suppress(HubError):
        return names.safe_name(username)
    return None


def prepare_user_tree(
    paths: UserPaths,
    *,
    workspace: bool = True,
    records_dir: Path | None = None,
    remap: bool = False,
    userns_root: int | None = None,
) -> bool:
    """Make or check everything of one user under ``<workspace-dir>`` before a start, without
    following a link anywhere below ``<workspace-dir>``; refuse an overlap with another
    account's tree (``StorageError``). Returns True when the data-root dir is a subvolume.

    ``remap``: the hub runs with ``--userns-remap`` (``<workspace-dir>`` 0711, a new workspace
    0750); ``userns_root``: this user's namespace root, when already known (else
    ``set_daemon_dirs_group`` follows once the network ID is)."""
    check_no_overlap(paths, records_dir)
    secure_workspace_dir(paths.workspace_dir, traversable=remap)
    subvolume = ensure_data_root_dir(paths.data_root_dir)
    try:
        safefs.ensure_dir(
            paths.workspace_dir, paths.data_root_dir.name, mode=DATA_ROOT_DIR_MODE, set_mode=False
        )
        gid, remapped = remap_modes(userns_root)
        for rel, mode, set_mode in _DAEMON_DIRS:
            shared = rel in (".rediacc", ".rediacc/docker")
            safefs.ensure_dir(
                paths.workspace_dir,
                Path(paths.data_root_dir.name, rel),
                mode=remapped if shared else mode,
                gid=gid if shared else 0,
                set_mode=set_mode,
            )
        if workspace:
            top = 0o750 if remap else 0o755
            with safefs.open_dir(paths.workspace_dir, paths.user, create=True, mode=top):
                pass
    except OSError as e:
        raise StorageError("The hub could not prepare your storage.", f"{paths.user}: {e}") from e
    return subvolume


@contextlib.contextmanager
def checkpoint_dir(paths_or_dir: UserPaths | Path, *, create: bool = True) -> Iterator[int | None]:
    """The fd of ``<workspace-dir>/<u>/.checkpoint``, reached from ``<workspace-dir>`` without
    following links, and root's with mode 0700. A link or non-directory planted at that name is
    removed (logged by the caller's error if that fails); a directory the user made is given
    back to root. ``create=False`` yields None when it does not exist."""
    directory = paths_or_dir.checkpoints if isinstance(paths_or_dir, UserPaths) else paths_or_dir
    directory = Path(directory)
    base, user = directory.parent.parent, directory.parent.name
    with safefs.open_dir(base, user) as workspace_fd:
        try:
            st = os.stat(CHECKPOINT_DIR, dir_fd=workspace_fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            os.unlink(CHECKPOINT_DIR, dir_fd=workspace_fd)  # planted: a link is never followed
            st = None
        if st is None:
            if not create:
                yield None
                return
            with contextlib.suppress(FileExistsError):
                os.mkdir(CHECKPOINT_DIR, 0o700, dir_fd=workspace_fd)
        fd = os.open(
            CHECKPOINT_DIR,
            os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
            dir_fd=workspace_fd,
        )
    try:
        st = os.fstat(fd)
        if (st.st_uid, st.st_gid) != (0, 0):
            os.fchown(fd, 0, 0)
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
        yield fd
    finally:
        os.close(fd)


def ensure_data_root_dir(path: Path) -> bool:
    """Create the data-root dir (a subvolume on BTRFS). Returns True when it is a subvolume.

    A link or non-directory at ``path`` raises ``StorageError``: data-roots are never links."""
    path = Path(path)
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise StorageError(
                "The hub could not prepare your storage.",
                f"{path} exists and is {'a symlink' if stat.S_ISLNK(st.st_mode) else 'not a directory'}"
                "; data-roots are never links: remove it after checking what it is",
            )
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
    path.mkdir(mode=DATA_ROOT_DIR_MODE, exist_ok=True)
    return False


def unmount_under(path: Path) -> None:
    """Lazily unmount everything mounted at or below ``path``, deepest first."""
    try:
        inside = mounts.mounts_under(path)
    except OSError:
        return
    for point in inside:
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
    """Remove a data-root dir or workspace: subvolumes with ``btrfs subvolume delete``.

    A link at ``path`` is removed as a link, never followed; links inside are never followed
    (``safefs.remove_tree``)."""
    path = Path(path)
    if safefs.is_link(path):
        path.unlink()
        return
    if not path.exists():
        return
    unmount_under(path)
    # a data-root cloned from a seed is a subvolume of its own: deleted as one, not file by file
    data = path / ".rediacc" / "docker" / "data"
    if not safefs.is_link(path / ".rediacc") and is_subvolume(data):
        subprocess.run(["btrfs", "subvolume", "delete", str(data)], capture_output=True)
    subvolume = is_subvolume(path)
    # rmdir removes empty subvolumes too (kernel >= 4.18), including the ones dockerd's btrfs
    # storage driver nests inside; the top one is deleted explicitly so its space is reclaimed.
    if subvolume:
        with safefs.open_dir(path.parent, path.name) as fd:
            for child in os.listdir(fd):
                with contextlib.suppress(OSError):
                    if stat.S_ISDIR(os.stat(child, dir_fd=fd, follow_symlinks=False).st_mode):
                        shutil.rmtree(child, dir_fd=fd)
                    else:
                        os.unlink(child, dir_fd=fd)
        subprocess.run(["btrfs", "subvolume", "delete", str(path)], capture_output=True)
    with contextlib.suppress(OSError):
        safefs.remove_tree(path, ignore_errors=True)
    if os.path.lexists(path):
        raise HubError(
            "The hub could not remove your data.", f"could not remove {path}: still present"
        )
