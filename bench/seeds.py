"""A new user's first login with seed data-roots, 2 GB image next to 2 MB, and what 20 new users
cost on disk: ``.venv/bin/python -m bench.seeds``.

Root, docker, btrfs-progs. The run makes its own BTRFS filesystem (a sparse loop file, removed
afterwards), a 2 MB image (busybox, tests/support/images.py) and, with ``docker build`` on the host
daemon, a 2 GB one (the 2 MB image plus ``--large-mb`` of random data), and runs a real ``Hub``
(local supervisor, per-user dockerd, policy sockets) with both as templates, its workspace dir on
the BTRFS filesystem. Seeds are built at hub start, as an operator's hub has them by the first
login; the run waits for them and says how long they took. Then, side by side:

- **first login to first byte**: a user who never logged in (no data-root) calls
  ``ensure_running(route)`` and reads the first byte of an HTTP answer from the route's port;
  users alternate between the two templates, ``--users`` each. The OAuth round trip and the
  proxy are not in it: they cost the same whatever the image;
- **disk of new users**: ``--disk-users`` new users of the 2 GB image; the exclusive bytes of
  each data-root (``btrfs filesystem du``) and the filesystem's used bytes before and after;
- **the fallback** (unless ``--no-fallback``): the same first login on the ordinary filesystem
  (no snapshots, no reflinks: the image is loaded, ``save | load``), ``--fallback-users`` each.

Prints markdown tables (docs/performance.md) to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker

from hubcontrol import seeds, storage
from hubcontrol.config import HubConfig, Template
from hubcontrol.embed import SyncHub, embedded
from tests.support.btrfs import btrfs_loop, exclusive_bytes, large_image
from tests.support.hubcore import COMMAND, HOST_SOCKET, ROUTES, host_test_image

ROUTE = "code"


def say(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def first_byte(ip: str, port: int) -> None:
    with socket.create_connection((ip, port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        if not s.recv(1):
            raise RuntimeError(f"{ip}:{port} closed without answering")


def first_login(hub: SyncHub, user: str, template: str) -> float:
    started = time.monotonic()
    env = hub.ensure_running(user, template, route=ROUTE)
    first_byte(env.service_ip, ROUTES[ROUTE])
    return time.monotonic() - started


def config_for(base: Path, workspace: Path, small: str, large: str) -> HubConfig:
    common = {"command": COMMAND, "docker": "per-user"}
    return HubConfig(
        routes=ROUTES,
        templates={
            "small": Template(name="small", image=small, **common),
            "large": Template(name="large", image=large, **common),
        },
        docker_socket=HOST_SOCKET,
        workspace_dir=workspace,
        state_dir=base / "state",
        audit_dir=base / "audit",
        supervisor="local",
    )


def fs_used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def logins(hub: SyncHub, prefix: str, count: int) -> dict[str, list[float]]:
    """``count`` first logins per template, alternating; the users are destroyed afterwards."""
    times: dict[str, list[float]] = {"small": [], "large": []}
    users = []
    try:
        for i in range(count):
            for name in ("small", "large"):
                user = f"{prefix}{name}{i}"
                users.append(user)
                took = first_login(hub, user, name)
                times[name].append(took)
                say(f"  {user}: {took:.2f} s")
    finally:
        for user in users:
            with contextlib.suppress(Exception):
                hub.destroy(user, remove_data=True)
    return times


def wait_for_seeds(config: HubConfig, host: docker.DockerClient, timeout: float) -> float:
    paths = seeds.SeedPaths(Path(config.workspace_dir))
    want = [seeds.hex_id(host.images.get(t.image).id) for t in config.templates.values()]
    started = time.monotonic()
    while not all(paths.seed(h).is_dir() for h in want):
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"seeds not built within {timeout:.0f} s")
        time.sleep(0.2)
    return time.monotonic() - started


def row(label: str, times: dict[str, list[float]]) -> str:
    small, large = statistics.median(times["small"]), statistics.median(times["large"])
    return (
        f"| {label} | {small:.2f} s | {large:.2f} s | {large / small:.2f} | "
        f"{max(times['large']):.2f} s |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.seeds", description=__doc__)
    parser.add_argument("--large-mb", type=int, default=2048, help="MiB of the large image's layer")
    parser.add_argument("--users", type=int, default=5, help="first logins per template")
    parser.add_argument("--disk-users", type=int, default=20, help="new users for the disk measure")
    parser.add_argument("--fallback-users", type=int, default=2)
    parser.add_argument("--no-fallback", action="store_true")
    parser.add_argument("--btrfs-size", default="16G")
    args = parser.parse_args(argv)

    host = docker.DockerClient(base_url=f"unix://{HOST_SOCKET}", version="1.41", timeout=1800)
    tmp = Path(tempfile.mkdtemp(prefix="hub-seeds-", dir="/var/tmp"))
    try:
        with host_test_image() as small, btrfs_loop(tmp / "btrfs", args.btrfs_size) as mount:
            say(f"building the {args.large_mb} MiB image ...")
            with large_image(host, small, args.large_mb, "hub-bench/large") as large:
                size = host.images.get(large).attrs["Size"]
                config = config_for(tmp / "hub", mount / "workspaces", small, large)
                with embedded(config, ready_timeout=120) as hub:
                    say("seeds are built at hub start ...")
                    built = wait_for_seeds(config, host, timeout=1800)
                    say(f"  ready in {built:.1f} s")
                    say(f"first logins, {args.users} per template, alternating ...")
                    seeded = logins(hub, "seeded", args.users)
                    say(f"{args.disk_users} new users of the large image ...")
                    before = fs_used(mount)
                    users = [f"disk{i:02d}" for i in range(args.disk_users)]
                    try:
                        exclusive = []
                        for user in users:
                            env = hub.ensure_running(user, "large", route=ROUTE)
                            root = storage.UserPaths(config.workspace_dir, env.name).data_root_dir
                            exclusive.append(exclusive_bytes(root))
                        used = fs_used(mount) - before
                    finally:
                        for user in users:
                            with contextlib.suppress(Exception):
                                hub.destroy(user, remove_data=True)
                fallback = None
                if not args.no_fallback:
                    config = config_for(tmp / "plain", tmp / "plain" / "ws", small, large)
                    with embedded(config, ready_timeout=120) as hub:
                        say(f"fallback on {storage.filesystem_type(tmp)}, "
                            f"{args.fallback_users} per template ...")  # fmt: skip
                        fallback = logins(hub, "plain", args.fallback_users)
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(tmp)], check=False)
        host.close()

    large_gb = size / 1e9
    print(f"First login to first byte, a 2 MB image next to a {large_gb:.1f} GB one, one hub, "
          f"one run (`python -m bench.seeds --large-mb {args.large_mb} --users {args.users}`); "
          f"seeds built at hub start in {built:.1f} s:\n")  # fmt: skip
    print("| path | 2 MB image, median | large image, median | ratio | large, max |")
    print("| --- | --- | --- | --- | --- |")
    print(row("seeded (BTRFS snapshot of the template's seed)", seeded))
    if fallback is not None:
        print(row(f"fallback (`save \\| load`, {storage.filesystem_type(tmp)})", fallback))
    total = args.disk_users * size
    print(f"\nDisk of {args.disk_users} new users of the {large_gb:.1f} GB image:\n")
    print("| measure | value | share of users x image |")
    print("| --- | --- | --- |")
    print(f"| exclusive bytes of all their data-roots | {sum(exclusive) / 1e6:.1f} MB | "
          f"{100 * sum(exclusive) / total:.2f}% |")  # fmt: skip
    print(f"| filesystem used bytes, growth | {used / 1e6:.1f} MB | {100 * used / total:.2f}% |")
    print(f"| exclusive bytes per user, median | {statistics.median(exclusive) / 1e3:.0f} kB | |")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
