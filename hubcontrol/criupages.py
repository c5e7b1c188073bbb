"""A checkpoint's memory kept out of dockerd's restore path, and handed to CRIU beside it.

docker 20.10 restores a checkpoint by streaming its whole directory as a tar into containerd's
content store over gRPC (one round trip per 32 KiB), after which containerd unpacks it into its
TMPDIR (``ctrd-checkpoint*``) and runc runs CRIU on that copy. That round trip cost about 13 ms
per MB here (docs/performance.md, "Resume"): 1.9 s of a JupyterLab resume, whose server and
kernel dump to about 150 MB, nearly all of it the memory pages.

So after a dump the hub moves every large image (the memory pages, a tmpfs's contents) from
``.checkpoint/<id>/`` to the sibling ``.checkpoint/<id>.pages/`` (a rename in one directory,
``set_aside``) and leaves a marker, ``hub-pages``, naming the checkpoint. Before the restore it
hard-links them (a reflink or copy where the two are on different filesystems or subvolumes)
into ``<daemon TMPDIR>/hub-pages-<id>/`` (``stage``). dockerd then ships only the small images;
the CRIU wrapper on dockerd's PATH (``RESTORE_PRELUDE``) finds the marker in containerd's copy
and moves the staged files into it before the real CRIU starts. Restores made without a
daemon TMPDIR, or by a wrapper that predates this, get the files moved back first (``put_back``).

Trust: every path here is reached without following links (the checkpoint dir through
``storage.checkpoint_dir``, the TMPDIR a root-only directory of the data-root dir), and the
wrapper takes nothing from the images but a checkpoint name of ``[A-Za-z0-9-]``, joined to the
parent of containerd's copy: the same daemon's TMPDIR, which no user reaches. A checkpoint only
ever gets back its own files. A missing or half-moved set fails CRIU's restore, which the hub
counts and answers with a fresh start; the workspace is never touched.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from hubcontrol import storage

MARKER = "hub-pages"  # in the images dir: the checkpoint's name, when its large images are aside
ASIDE_SUFFIX = ".pages"  # .checkpoint/<id>.pages/
STAGE_PREFIX = "hub-pages-"  # <TMPDIR>/hub-pages-<id>/, what the wrapper moves into the copy
ASIDE_MIN_BYTES = 64 << 10  # smaller images travel with dockerd's tar (no gain in moving them)
KEEP = frozenset({MARKER, "hub-fingerprint.json"})  # the hub's own files stay with the images
_NAME = re.compile(r"[A-Za-z0-9-]{1,64}")
_FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# Runs in the CRIU wrapper before the real CRIU (both supervisors' wrappers): for a restore, runc
# names containerd's copy of the images on its command line (``--image-path
# <TMPDIR>/ctrd-checkpoint<N>``); a copy that carries the marker gets the staged files moved in.
# ``$img`` is set by IMAGE_PATH, which the wrappers run first.
IMAGE_PATH = (
    "img=\n"
    'if [ "$1" = swrk ]; then\n'
    "  img=$(tr '\\0' '\\n' < /proc/$PPID/cmdline | sed -n '/^--image-path$/{n;p;q}')\n"
    '  case "${img##*/}" in ctrd-checkpoint*) [ -d "$img" ] && [ ! -L "$img" ] || img= ;;\n'
    "  *) img= ;; esac\n"
    "fi\n"
)
RESTORE_PRELUDE = (
    f'if [ -n "$img" ] && [ -f "$img/{MARKER}" ] && [ ! -L "$img/{MARKER}" ]; then\n'
    f'  n=$(head -c 64 "$img/{MARKER}")\n'
    '  case "$n" in ""|*[!A-Za-z0-9-]*) ;; *)\n'
    f'    s="${{img%/*}}/{STAGE_PREFIX}$n"\n'
    '    if [ -d "$s" ] && [ ! -L "$s" ]; then\n'
    '      for f in "$s"/*; do [ -f "$f" ] && [ ! -L "$f" ] && mv -f "$f" "$img/"; done\n'
    '      rmdir "$s" 2>/dev/null\n'
    "    fi ;;\n"
    "  esac\n"
    "fi\n"
)


def aside_name(checkpoint_id: str) -> str:
    return checkpoint_id + ASIDE_SUFFIX


def stage_name(checkpoint_id: str) -> str:
    return STAGE_PREFIX + checkpoint_id


def _check_name(checkpoint_id: str) -> None:
    if not _NAME.fullmatch(checkpoint_id):
        raise ValueError(f"checkpoint name {checkpoint_id!r} is not [A-Za-z0-9-]{{1,64}}")


@contextlib.contextmanager
def _open(name: str | Path, dir_fd: int | None = None) -> Iterator[int]:
    """A directory's fd; the last component is never a followed link."""
    fd = os.open(name, _DIR, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


def _regular_files(dir_fd: int) -> list[tuple[str, int]]:
    """(name, size) of the regular files directly in ``dir_fd`` (links and the rest skipped)."""
    out: list[tuple[str, int]] = []
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode):
                out.append((entry.name, st.st_size))
    return out


def set_aside(checkpoint_dir: Path, checkpoint_id: str) -> int:
    """Move the large images of ``.checkpoint/<id>/`` to ``.checkpoint/<id>.pages/`` and mark
    the images; returns the bytes moved. The marker is written first, so a crash between any
    two renames leaves a restorable set (the staging takes whatever is aside)."""
    _check_name(checkpoint_id)
    moved = 0
    with storage.checkpoint_dir(checkpoint_dir, create=False) as top:
        if top is None:
            raise FileNotFoundError(errno.ENOENT, "no checkpoint directory", str(checkpoint_dir))
        with _open(checkpoint_id, top) as images:
            large = [
                (name, size)
                for name, size in _regular_files(images)
                if size >= ASIDE_MIN_BYTES and name not in KEEP
            ]
            if not large:
                return 0
            aside = aside_name(checkpoint_id)
            with contextlib.suppress(FileExistsError):
                os.mkdir(aside, 0o700, dir_fd=top)
            with _open(aside, top) as pages:
                _write_marker(images, checkpoint_id)
                for name, size in large:
                    os.rename(name, name, src_dir_fd=images, dst_dir_fd=pages)
                    moved += size
    return moved


def _write_marker(images: int, checkpoint_id: str) -> None:
    tmp = f".{MARKER}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp, dir_fd=images)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=images)
    try:
        os.write(fd, checkpoint_id.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, MARKER, src_dir_fd=images, dst_dir_fd=images)


def _marked(top: int, checkpoint_id: str) -> bool:
    try:
        with _open(checkpoint_id, top) as images:
            os.stat(MARKER, dir_fd=images, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def is_aside(checkpoint_dir: Path, checkpoint_id: str) -> bool:
    """Whether the images of ``checkpoint_id`` carry the marker (their large files are aside)."""
    with storage.checkpoint_dir(checkpoint_dir, create=False) as top:
        return top is not None and _marked(top, checkpoint_id)


def stage(checkpoint_dir: Path, checkpoint_id: str, tmpdir: Path) -> int:
    """Put the aside images of ``checkpoint_id`` in ``<tmpdir>/hub-pages-<id>/`` for the CRIU
    wrapper: hard links where the two share a filesystem, else reflinks, else copies. Returns
    the bytes staged (0 when nothing is aside)."""
    _check_name(checkpoint_id)
    staged = 0
    with storage.checkpoint_dir(checkpoint_dir, create=False) as top:
        if top is None or not _marked(top, checkpoint_id):
            return 0
        with _open(tmpdir) as tmp:  # the data-root dir's, root's all the way (storage)
            name = stage_name(checkpoint_id)
            shutil.rmtree(name, dir_fd=tmp, ignore_errors=True)  # a crashed restore's
            os.mkdir(name, 0o700, dir_fd=tmp)
            with _open(aside_name(checkpoint_id), top) as pages, _open(name, tmp) as dest:
                for file, size in _regular_files(pages):
                    _link_or_copy(file, pages, dest)
                    staged += size
    return staged


def _link_or_copy(name: str, src_dir: int, dst_dir: int) -> None:
    try:
        os.link(name, name, src_dir_fd=src_dir, dst_dir_fd=dst_dir, follow_symlinks=False)
        return
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_dir)
    try:
        st = os.fstat(src)
        dst = os.open(
            name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            stat.S_IMODE(st.st_mode),
            dir_fd=dst_dir,
        )
        try:
            try:
                fcntl.ioctl(dst, _FICLONE, src)  # BTRFS across subvolumes, XFS: no bytes copied
            except OSError:
                _copy(src, dst, st.st_size)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _copy(src: int, dst: int, size: int) -> None:
    offset = 0
    while offset < size:
        n = os.sendfile(dst, src, offset, size - offset)  # copy_file_range: EXDEV across fs
        if n == 0:
            break
        offset += n


def put_back(checkpoint_dir: Path, checkpoint_id: str) -> None:
    """Move the aside images back into ``.checkpoint/<id>/`` and drop the marker: for a restore
    that goes through dockerd's tar as it always did (no daemon TMPDIR to stage in)."""
    _check_name(checkpoint_id)
    with storage.checkpoint_dir(checkpoint_dir, create=False) as top:
        if top is None:
            return
        with _open(checkpoint_id, top) as images:
            with (
                contextlib.suppress(FileNotFoundError),
                _open(aside_name(checkpoint_id), top) as pages,
            ):
                for file, _size in _regular_files(pages):
                    os.rename(file, file, src_dir_fd=pages, dst_dir_fd=images)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(MARKER, dir_fd=images)


def clean_stages(tmpdir: Path) -> int:
    """Remove staged sets a restore did not take (``hub-pages-*`` in a daemon's TMPDIR)."""
    removed = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(tmpdir) as entries:
        for entry in entries:
            if entry.name.startswith(STAGE_PREFIX) and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
    return removed
