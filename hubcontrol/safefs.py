"""Files root handles on a user's behalf, opened so that no link a user could plant is followed.

The hub runs as root and keeps per-user trees beside each other under ``<workspace-dir>``: the
user's workspace (which the user's environment writes) and the data-root dir (which only root
writes). A path walk by root through a component someone else can replace may be redirected by a
symlink anywhere on the host. The rules (docs/security.md, "Paths root touches"):

* every directory the hub creates for a user is made and checked with ``ensure_dir``: each
  component below a trusted base is opened with ``O_NOFOLLOW``, made if missing, and a
  directory that must be root's is given back to root with the mode the hub wants;
* every file the hub writes there is written by ``write_atomic`` (a temp file made with
  ``O_EXCL|O_NOFOLLOW`` in the same directory, then renamed over the target, which replaces a
  planted link rather than following it), made once by ``write_new`` (the same temp file,
  hard-linked into place only if nothing is there: the first writer wins) or opened by
  ``open_file`` (``O_NOFOLLOW``, regular files only, so a FIFO cannot block the hub either);
* trees are removed with ``remove_tree``, which never follows a link at the top or inside.

The trusted base (``<workspace-dir>``, the state dir, ``/run/rediacc``) is the operator's, so its
own path is resolved normally. Everything below it is walked one component at a time, relative
to the directory file descriptor of the previous one: a component swapped for a link between two
steps makes the walk fail with ``ELOOP``/``ENOTDIR``, never succeed somewhere else.

This is also the one home of the temp-file-then-rename write (issue: one home per primitive).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePathError(OSError):
    """Raised when a path root would handle is a link, not a directory/regular file, or has an
    owner the hub did not expect."""


def _components(rel: str | os.PathLike[str]) -> list[str]:
    parts = PurePosixPath(rel).parts
    if parts and parts[0] == "/":
        raise ValueError(f"{rel}: expected a path relative to its base")
    if any(p in ("..", ".") for p in parts):
        raise ValueError(f"{rel}: '..' and '.' are not allowed")
    return list(parts)


def split(path: str | os.PathLike[str], base: str | os.PathLike[str]) -> list[str]:
    """The components of ``path`` below ``base`` (ValueError if ``path`` is not below it)."""
    return _components(PurePosixPath(path).relative_to(PurePosixPath(base)))


def _check_dir(fd: int, where: str, uid: int | None) -> os.stat_result:
    st = os.fstat(fd)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(errno.ENOTDIR, "not a directory", where)
    if uid is not None and st.st_uid != uid:
        raise UnsafePathError(errno.EPERM, f"owned by uid {st.st_uid}, expected {uid}", where)
    return st


def _open_step(dir_fd: int, name: str, where: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePathError(
                e.errno, "a link or not a directory; never followed", where
            ) from None
        raise


@contextlib.contextmanager
def open_dir(
    base: str | os.PathLike[str],
    rel: str | os.PathLike[str] = "",
    *,
    create: bool = False,
    mode: int = 0o700,
    owner: int | None = None,
) -> Iterator[int]:
    """A directory file descriptor for ``base/rel`` reached without following any link below
    ``base``. ``create`` makes missing components with ``mode``; ``owner`` (a uid) is required
    of every component below ``base`` (``UnsafePathError`` otherwise)."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        where = Path(base)
        for name in _components(rel):
            where = where / name
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, mode, dir_fd=fd)
            nxt = _open_step(fd, name, str(where))
            os.close(fd)
            fd = nxt
            if owner is not None:
                _check_dir(fd, str(where), owner)
        yield fd
    finally:
        os.close(fd)


def ensure_dir(
    base: str | os.PathLike[str],
    rel: str | os.PathLike[str],
    *,
    mode: int = 0o700,
    uid: int = 0,
    gid: int = 0,
    set_mode: bool = True,
) -> None:
    """Make ``base/rel`` and its missing parents (each with ``mode``), without following links,
    and give the last component to ``uid:gid`` with ``mode`` (``set_mode=False`` keeps the mode
    of an existing directory, e.g. one dockerd manages). Parents that exist are left as they
    are, but a link among them raises ``UnsafePathError``."""
    with open_dir(base, rel, create=True, mode=mode) as fd:
        st = os.fstat(fd)
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.fchown(fd, uid, gid)
        if set_mode and stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)


def _parent(
    path: Path, base: str | os.PathLike[str] | None
) -> tuple[str | os.PathLike[str], list[str]]:
    if base is None:
        # only the last directory is opened without following: for paths whose parents are
        # all root's (checked once with ensure_dir/open_dir)
        return path.parent.parent, [path.parent.name] if path.parent.name else []
    return base, split(path.parent, base)


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes | str,
    *,
    mode: int = 0o644,
    base: str | os.PathLike[str] | None = None,
    fsync: bool = False,
) -> None:
    """Replace ``path`` with ``data``: a temp file beside it (``O_EXCL|O_NOFOLLOW``, born with
    ``mode``), renamed over it. A link planted at ``path`` is replaced, never followed. With
    ``base``, every directory between ``base`` and ``path`` is walked without following links."""
    path = Path(path)
    with _written_beside(path, data, mode, base, fsync) as (dir_fd, tmp):
        os.replace(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def write_new(
    path: str | os.PathLike[str],
    data: bytes | str,
    *,
    mode: int = 0o600,
    base: str | os.PathLike[str] | None = None,
) -> bool:
    """Create ``path`` with ``data`` unless something is there already (a file, or a link,
    which is not followed); returns whether this call created it. The temp file is hard-linked
    into place, so a reader never sees the file empty, and of several processes making the same
    file at once (two hubs generating a secret) exactly one wins and the others read its."""
    path = Path(path)
    with _written_beside(path, data, mode, base, False) as (dir_fd, tmp):
        try:
            os.link(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:
            return False
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
    return True


@contextlib.contextmanager
def _written_beside(
    path: Path,
    data: bytes | str,
    mode: int,
    base: str | os.PathLike[str] | None,
    fsync: bool,
) -> Iterator[tuple[int, str]]:
    """A temp file holding ``data`` in ``path``'s directory (opened without following links),
    born with ``mode``; yields the directory's descriptor and the temp name, for the caller to
    put in place. The temp file is removed if the caller fails."""
    raw = data.encode() if isinstance(data, str) else data
    top, rel = _parent(path, base)
    with open_dir(top, PurePosixPath(*rel) if rel else "") as dir_fd:
        tmp = f".{path.name}.{secrets.token_hex(4)}.tmp"
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dir_fd,
        )
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), mode)
                f.write(raw)
                if fsync:
                    f.flush()
                    os.fsync(f.fileno())
            yield dir_fd, tmp
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise


def open_file(
    path: str | os.PathLike[str],
    flags: int = os.O_RDONLY,
    mode: int = 0o600,
    *,
    base: str | os.PathLike[str] | None = None,
) -> int:
    """An fd of the regular file ``path`` opened with ``O_NOFOLLOW`` (and, with ``base``, reached
    without following links below it). A link, FIFO, socket or device raises
    ``UnsafePathError``; ``O_NONBLOCK`` is used for the open only, so a FIFO cannot block."""
    path = Path(path)
    top, rel = _parent(path, base)
    with open_dir(top, PurePosixPath(*rel) if rel else "") as dir_fd:
        try:
            fd = os.open(
                path.name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=dir_fd
            )
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UnsafePathError(e.errno, "a link; never followed", str(path)) from None
            if e.errno == errno.ENXIO:  # a FIFO with no reader
                raise UnsafePathError(e.errno, "not a regular file", str(path)) from None
            raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePathError(errno.EINVAL, "not a regular file", str(path))
    os.set_blocking(fd, True)
    return fd


def open_own_file(path: str | os.PathLike[str], flags: int, mode: int = 0o600) -> int:
    """``open_file`` for a file only the hub makes (a log): a link, FIFO or socket found at
    ``path`` is not the hub's, so it is removed (never followed) and the file made afresh."""
    try:
        return open_file(path, flags | os.O_CREAT, mode)
    except UnsafePathError:
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            raise
        os.unlink(path)
        return open_file(path, flags | os.O_CREAT | os.O_EXCL, mode)


def read_text(
    path: str | os.PathLike[str],
    *,
    base: str | os.PathLike[str] | None = None,
    limit: int = 1 << 20,
) -> str:
    """The text of the regular file ``path`` (at most ``limit`` bytes), never through a link."""
    fd = open_file(path, base=base)
    with os.fdopen(fd, "rb") as f:
        return f.read(limit).decode("utf-8", errors="replace")


def remove_tree(path: str | os.PathLike[str], *, ignore_errors: bool = False) -> None:
    """Remove the directory tree (or file) at ``path`` without following links: a link at
    ``path`` itself is unlinked, not followed; links inside are removed as links (``shutil``'s
    fd-based rmtree, which resists symlink swaps on Linux)."""
    path = Path(path)
    with open_dir(path.parent) as dir_fd:
        try:
            st = os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path.name, dir_fd=dir_fd, ignore_errors=ignore_errors)
        else:
            os.unlink(path.name, dir_fd=dir_fd)


def is_link(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` itself is a symlink (its parents are followed)."""
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def keep_aside(path: str | os.PathLike[str]) -> Path | None:
    """Rename the unreadable state file ``path`` to ``<path>.corrupt-<unix time>`` beside it,
    so the operator can look at what was wrong, and the next write starts a fresh file instead
    of overwriting the evidence. Returns the new path, or None when the rename failed (the file
    then stays where it is)."""
    import time

    path = Path(path)
    aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    try:
        os.rename(path, aside)
    except OSError:
        return None
    return aside
