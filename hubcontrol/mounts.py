"""Mount primitives the hub needs on paths users control, through the syscalls (ctypes).

``mount(8)`` takes paths, and a path is walked again by the kernel when it is used: a user who
swaps a directory for a symlink in between redirects root. These helpers take file descriptors
instead. ``open_beneath`` resolves a relative path below a directory with ``openat2`` and
``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV``: the kernel
refuses any symlink, ``..`` out of the directory, or mount crossing on the way, atomically.
``bind_fd`` then bind-mounts exactly the object that descriptor holds (the source
``/proc/self/fd/N`` is a magic link to the open file itself, not a name to walk again).

This module imports nothing from the control plane: the policy socket process uses it
(docs/security.md, "Bind mounts").
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import re
from dataclasses import dataclass

# openat2(2) has the same number on every architecture since the syscall tables were unified
# (5.1); only alpha differs, where the hub does not run.
SYS_OPENAT2 = 437
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_STRICT = RESOLVE_NO_XDEV | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOSYMFOLLOW = 0x100
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8
ST_NOSYMFOLLOW = 0x2000  # statvfs f_flag (os.ST_NOSYMFOLLOW is missing before Python 3.13)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _check(result: int, what: str, path: str | None = None) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)
    return result


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """``openat2(2)``; a new descriptor (close it), or OSError (ELOOP for a symlink refused by
    RESOLVE_NO_SYMLINKS, EXDEV for ``..`` out of RESOLVE_BENEATH or a mount crossing)."""
    if platform.machine() == "alpha":  # pragma: no cover - not a platform the hub runs on
        raise OSError(errno.ENOSYS, "openat2 has another syscall number on alpha")
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    for _ in range(8):
        fd = _libc.syscall(
            ctypes.c_long(SYS_OPENAT2),
            ctypes.c_int(dirfd),
            ctypes.c_char_p(os.fsencode(path)),
            ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        # EAGAIN: a scoped lookup raced a rename or mount somewhere on the host; retry
        if fd >= 0 or ctypes.get_errno() != errno.EAGAIN:
            break
    return _check(fd, "openat2", path)


def open_beneath(root_fd: int, rel: str, *, create_dirs: bool = False) -> int:
    """An ``O_PATH`` descriptor of ``rel`` below the directory ``root_fd``, opened without
    following any symlink, leaving the directory or crossing a mount (``RESOLVE_STRICT``).

    With ``create_dirs``, missing directories on the way are created (root-owned, 0755, as the
    daemon creates a missing ``-v`` source), one component at a time below the descriptor of
    the last one, so no name is ever walked twice.

    No ``O_NOFOLLOW``: with it, ``O_PATH`` would open a trailing symlink itself; without it,
    ``RESOLVE_NO_SYMLINKS`` refuses that one too (ELOOP)."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise OSError(errno.EXDEV, "not a path strictly below the directory", rel)
    if not create_dirs:
        return openat2(root_fd, "/".join(parts), os.O_PATH, RESOLVE_STRICT)
    fd = os.dup(root_fd)
    try:
        for part in parts:
            try:
                nxt = openat2(fd, part, os.O_PATH, RESOLVE_STRICT)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):  # a concurrent creator
                    os.mkdir(part, 0o755, dir_fd=fd)
                nxt = openat2(fd, part, os.O_PATH, RESOLVE_STRICT)
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    r = _libc.mount(
        os.fsencode(source) if source is not None else None,
        os.fsencode(target),
        os.fsencode(fstype) if fstype is not None else None,
        flags,
        ctypes.c_char_p(data.encode()) if data else None,
    )
    _check(r, f"mount {source} on {target}", target)


def bind_fd(fd: int, target: str, *, readonly: bool = False) -> None:
    """Bind-mount the object ``fd`` holds (not a path) onto ``target``, non-recursively, then
    make that mount ``nosuid,nodev`` (and ``ro`` when asked) without ``nosymfollow``: symlinks
    inside resolve as usual, within whatever mount namespace later uses them. The other flags
    of the mount the object lives on (``noexec``, ``ro``) are kept."""
    mount(f"/proc/self/fd/{fd}", target, None, MS_BIND)
    try:
        current = os.statvfs(target).f_flag
        flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV
        if current & os.ST_NOEXEC:
            flags |= MS_NOEXEC
        if readonly or current & os.ST_RDONLY:
            flags |= MS_RDONLY
        mount(None, target, None, flags)
    except BaseException:
        umount(target)
        raise


def umount(target: str) -> None:
    """Detach the mount at ``target`` (lazily; never following a symlink there)."""
    r = _libc.umount2(os.fsencode(target), MNT_DETACH | UMOUNT_NOFOLLOW)
    _check(r, f"umount {target}", target)


MOUNTINFO = "/proc/self/mountinfo"
# The kernel writes space, tab, newline and backslash in mountinfo paths as \040, \011, \012 and
# \134 (fs/proc_namespace.c, mangle()), so a line splits on spaces and each field decodes alone.
_OCTAL = re.compile(rb"\\([0-7]{3})")


@dataclass(frozen=True)
class MountInfo:
    """One line of ``/proc/<pid>/mountinfo`` (proc(5)), its paths decoded."""

    mount_id: int
    parent_id: int
    device: str  # major:minor
    root: str  # the directory of the filesystem mounted here (a bind mount's source)
    mount_point: str
    options: frozenset[str]  # per-mount: rw, nosuid, nodev, nosymfollow, ...
    optional: tuple[str, ...]  # propagation: shared:N, master:N, propagate_from:N, unbindable
    fstype: str
    source: str
    super_options: frozenset[str]  # per-superblock


def decode_mountinfo_path(field: bytes) -> str:
    """A mountinfo path field as a ``str`` path: octal escapes undone, bytes that are not UTF-8
    kept as ``os.fsdecode`` keeps them (so the path round-trips to the syscalls)."""
    return os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m[1], 8)]), field))


def parse_mountinfo_line(line: bytes | str) -> MountInfo:
    """Parse one mountinfo line; ValueError names the line when it is not one."""
    raw = os.fsencode(line) if isinstance(line, str) else line
    fields = raw.split()
    try:
        separator = fields.index(b"-", 6)  # optional fields end at a lone "-"
        fstype, source, super_options = fields[separator + 1 : separator + 4]
        return MountInfo(
            mount_id=int(fields[0]),
            parent_id=int(fields[1]),
            device=fields[2].decode(),
            root=decode_mountinfo_path(fields[3]),
            mount_point=decode_mountinfo_path(fields[4]),
            options=frozenset(fields[5].decode().split(",")),
            optional=tuple(f.decode() for f in fields[6:separator]),
            fstype=decode_mountinfo_path(fstype),
            source=decode_mountinfo_path(source),
            super_options=frozenset(super_options.decode().split(",")),
        )
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"not a /proc/self/mountinfo line: {line!r}") from e


def mountinfo(path: str = MOUNTINFO) -> list[MountInfo]:
    """Every mount of this process's namespace, in mount order (later entries are on top)."""
    with open(path, "rb") as f:
        return [parse_mountinfo_line(line) for line in f if line.strip()]


def mounts_under(path: str | os.PathLike[str]) -> list[str]:
    """Mount points at or below ``path``, each once, deepest first (the order to unmount them)."""
    prefix = os.fspath(path).rstrip("/")
    found = {
        m.mount_point
        for m in mountinfo()
        if m.mount_point == prefix or m.mount_point.startswith(prefix + "/")
    }
    return sorted(found, key=lambda m: (m.count("/"), m), reverse=True)


def mount_options(path: str) -> set[str] | None:
    """The per-mount options of the topmost mount at ``path``; None when nothing is mounted."""
    options = None
    for m in mountinfo():
        if m.mount_point == path:
            options = set(m.options)
    return options


def make_inert(path: str) -> None:
    """Make the directory ``path`` a mount of itself with ``nosuid,nodev`` (idempotent): setuid
    bits and device nodes below it then give nothing, to host accounts reading it there and to
    every bind mount made from it (binds copy the mount's flags). Symlinks keep working.

    The directory is opened with ``O_NOFOLLOW`` and mounted by descriptor: ``path`` must be the
    caller's (a root-owned parent), and if its last component is a symlink nothing is mounted."""
    opts = mount_options(os.path.realpath(path))  # mountinfo shows canonical paths
    if opts is not None and {"nosuid", "nodev"} <= opts and "nosymfollow" not in opts:
        return
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        mount(f"/proc/self/fd/{fd}", path, None, MS_BIND)
        flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV
        current = os.statvfs(path).f_flag
        if current & os.ST_NOEXEC:
            flags |= MS_NOEXEC
        if current & os.ST_RDONLY:
            flags |= MS_RDONLY
        mount(None, path, None, flags)
    finally:
        os.close(fd)


def release_inert(path: str) -> bool:
    """Undo ``make_inert`` once nothing runs on the workspace (the environment and the user's
    daemon are stopped): detach the mount at ``path`` if it is a mount of that very directory
    (its root within the filesystem is ``path``'s own), never anything else mounted there.
    The next start makes it inert again before anything runs. True when one was detached."""
    real = os.path.realpath(path)
    found = [(m.options, m.root) for m in mountinfo() if m.mount_point == real]
    if not found:
        return False
    opts, root = found[-1]
    if not ({"nosuid", "nodev"} <= opts):
        return False  # not ours: the hub's self-mount always carries both
    st_mount = os.stat(real)
    parent = os.stat(os.path.dirname(real))
    if st_mount.st_dev != parent.st_dev and not real.endswith(root):
        return False
    umount(real)
    return True
