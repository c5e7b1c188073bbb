"""A BTRFS filesystem of the test's own (a loop file), and a large image built on the host daemon.

BTRFS on a loop file works on this machine kind (BRIEF.md): ``truncate``, ``mkfs.btrfs``,
``mount -o loop``. Everything is undone on exit: unmounted, the loop device detached, the file
removed; the image removed from the host daemon.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker

from hubcontrol import mounts


def _run(*argv: str) -> str:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True).stdout


@contextlib.contextmanager
def btrfs_loop(directory: Path, size: str = "8G") -> Iterator[Path]:
    """A fresh BTRFS filesystem mounted at ``<directory>/mnt``, backed by a sparse loop file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    image = directory / "btrfs.img"
    mount = directory / "mnt"
    mount.mkdir(exist_ok=True)
    _run("truncate", "-s", size, str(image))
    _run("mkfs.btrfs", "-q", str(image))
    device = _run("losetup", "--find", "--show", str(image)).strip()
    try:
        _run("mount", device, str(mount))
        try:
            yield mount
        finally:
            # daemons of the test are gone by now; anything a crash left mounted goes lazily
            for point in mounts.mounts_under(mount):
                if point != str(mount):
                    subprocess.run(["umount", "-l", point], capture_output=True)
            subprocess.run(["umount", str(mount)], capture_output=True)
            if os.path.ismount(mount):
                subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True)
        image.unlink(missing_ok=True)


def exclusive_bytes(path: Path) -> int:
    """Bytes under ``path`` that no other subvolume or file shares (``btrfs filesystem du``)."""
    out = _run("btrfs", "filesystem", "du", "-s", "--raw", str(path)).splitlines()
    return int(out[-1].split()[1])


@contextlib.contextmanager
def large_image(
    client: docker.DockerClient, base: str, megabytes: int, repository: str = "hub-test/large"
) -> Iterator[str]:
    """``base`` plus one layer of ``megabytes`` MiB of random data, built with ``docker build``
    on ``client``'s daemon under a tag unique to this run; removed on exit."""
    tag = f"t{os.getpid()}-{uuid.uuid4().hex[:6]}"
    ref = f"{repository}:{tag}"
    dockerfile = f"FROM {base}\nRUN head -c {megabytes << 20} /dev/urandom > /large.bin && echo {tag} > /tag\n"
    build(client, dockerfile, ref)
    try:
        yield ref
    finally:
        with contextlib.suppress(docker.errors.DockerException):
            client.images.remove(ref, force=True)


def build(client: docker.DockerClient, dockerfile: str, ref: str) -> str:
    """``docker build -t ref`` of a context holding only ``dockerfile``; returns the image ID."""
    for line in client.api.build(
        fileobj=io.BytesIO(dockerfile.encode()), tag=ref, rm=True, forcerm=True, decode=True
    ):
        if "error" in line:
            raise RuntimeError(f"docker build of {ref}: {json.dumps(line)}")
    return client.images.get(ref).id
