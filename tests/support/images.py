"""Tiny local images for tests: no registry is reachable here, so images are made from host files."""

from __future__ import annotations

import io
import os
import tarfile

BUSYBOX = "/usr/bin/busybox"
TINI = "/usr/bin/tini-static"
APPLETS = [
    "sh",
    "ls",
    "cat",
    "echo",
    "sleep",
    "nc",
    "wget",
    "id",
    "ps",
    "touch",
    "mkdir",
    "rm",
    "env",
    "true",
    "false",
    "httpd",
    "seq",
    "stat",
    "date",
    "grep",
    "head",
    "kill",
    "test",
    "whoami",
    "hostname",
    "ip",
    "ping",
    "top",
    "tail",
    "wc",
    "mount",
    "df",
    "chmod",
    "chown",
]


def busybox_rootfs_tar() -> bytes:
    """A rootfs tar with busybox-static, its applets, tini, a passwd with root and `vscode` (1000)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add_dir(path: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(path)
            info.type = tarfile.DIRTYPE
            info.mode = mode
            tar.addfile(info)

        def add_file(path: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))

        for d in (
            "bin",
            "sbin",
            "etc",
            "tmp",
            "proc",
            "sys",
            "dev",
            "root",
            "home",
            "home/vscode",
            "workspace",
            "var",
            "var/run",
            "usr",
            "usr/bin",
        ):
            add_dir(d, 0o1777 if d == "tmp" else 0o755)
        with open(BUSYBOX, "rb") as f:
            add_file("bin/busybox", f.read(), 0o755)
        if os.path.exists(TINI):
            with open(TINI, "rb") as f:
                add_file("sbin/tini", f.read(), 0o755)
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type = tarfile.SYMTYPE
            info.linkname = "busybox"
            tar.addfile(info)
        add_file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nvscode:x:1000:1000:vscode:/home/vscode:/bin/sh\n",
        )
        add_file("etc/group", b"root:x:0:\nvscode:x:1000:\n")
    return buf.getvalue()


def import_busybox(client, repository: str = "hub-test/busybox", tag: str = "latest") -> str:
    """Import the busybox rootfs into the daemon behind docker-py ``client``; returns the image ref."""
    ref = f"{repository}:{tag}"
    client.api.import_image_from_data(busybox_rootfs_tar(), repository=repository, tag=tag)
    return ref
