"""What a test's hubs may leave on the host, found (``leftovers``) and, for mounts a killed run
left behind, cleaned (``sweep_stale_daemon_mounts``).

A hub's per-user state outside the test's tmp dir is keyed by network ID (hubcontrol.netids):
the host-wide claim ``/var/lib/rediacc/netids/<id>`` (holding the data-root path), the bridges
``rdh<id>`` and ``rdh<id>e``, iptables and ip6tables rules commented ``rdh:<id>`` and the
cgroups ``rediacc.slice/hub-<user>-<id>``. Inside the tmp dir: the daemon's mounts (dockerd
bind-mounts its data-root onto itself and mounts an overlay per running container) and the
dockerd processes themselves.

    python -m tests.support.leaks --sweep     unmount what dead test daemons left (scripts/test.sh)
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from hubcontrol import gc, mounts
from hubcontrol.netids import DEFAULT_REGISTRY, RUN_DIR, read_marker

CGROUP_ROOT = Path("/sys/fs/cgroup")
# Where test runs put their tmp dirs: pytest's default basetemp and scripts/test.sh's --basetemp.
TEST_BASES = ("/tmp/pytest-of-*", "/tmp/hub-tests.*")
DAEMON_DATA = ".rediacc/docker/data"  # under a <user>-docker data-root (hubcontrol.storage)


def _under(path: str, root: Path) -> bool:
    root_s = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == root_s or real.startswith(root_s + "/")


def claims_under(root: Path, registry: Path = DEFAULT_REGISTRY) -> dict[int, str]:
    """net_id -> data-root of every host-wide claim whose data-root lies under ``root``."""
    found = {}
    for entry in registry.glob("[0-9]*"):
        owner = gc.claim_owner(registry, int(entry.name)) if entry.name.isdecimal() else None
        if owner and _under(owner, root):
            found[int(entry.name)] = owner
    return found


def net_ids_under(root: Path) -> set[int]:
    """Network IDs recorded in the data-roots (``*-docker/.networkid``) below ``root``."""
    ids = set()
    for marker in root.glob("**/*-docker/.networkid"):
        net_id = read_marker(marker.parent)
        if net_id is not None:
            ids.add(net_id)
    return ids


def _rules(net_id: int) -> list[str]:
    tag = f"rdh:{net_id}"
    found = []
    for exe in ("iptables", "ip6tables"):
        for table in ("filter", "nat"):
            try:
                out = subprocess.run(
                    [exe, "-w", "10", "-t", table, "-S"], capture_output=True, text=True
                ).stdout
            except FileNotFoundError:
                continue
            found += [f"{exe} -t {table} {line}" for line in out.splitlines() if tag in line]
    return found


def _cgroups(net_id: int) -> list[str]:
    pattern = f"hub-*-{net_id}"
    return sorted(
        glob.glob(str(CGROUP_ROOT / "rediacc.slice" / pattern))
        + glob.glob(str(CGROUP_ROOT / "*" / "rediacc.slice" / pattern))
    )


def net_id_leftovers(net_id: int) -> list[str]:
    """Bridges, rules and cgroups of ``net_id`` still on the host (one line each)."""
    found = []
    for bridge in (f"rdh{net_id}", f"rdh{net_id}e"):
        if Path("/sys/class/net", bridge).exists():
            found.append(f"bridge {bridge}")
    exec_root = RUN_DIR / str(net_id)
    if exec_root.exists():
        found.append(f"exec-root {exec_root}")
        found += [f"mount {m}" for m in mounts.mounts_under(exec_root)]
    found += [f"rule {r}" for r in _rules(net_id)]
    found += [f"cgroup {c}" for c in _cgroups(net_id)]
    return found


def _dockerds_under(root: Path) -> list[str]:
    return [
        f"dockerd pid {pid} (--data-root {data})"
        for pid, data in gc.live_dockerds().items()
        if _under(data, root)
    ]


def leftovers(root: Path, net_ids: Iterable[int] = ()) -> list[str]:
    """Everything of a test's hubs still on the host: claims pointing under ``root``, bridges,
    rules and cgroups of those network IDs (and of ``net_ids`` and the IDs recorded under
    ``root``), mounts under ``root`` and dockerds whose data-root is under ``root``."""
    claims = claims_under(root)
    found = [f"network-ID claim {DEFAULT_REGISTRY}/{i} -> {o}" for i, o in sorted(claims.items())]
    ids = set(net_ids) | set(claims) | (net_ids_under(root) if root.exists() else set())
    for net_id in sorted(ids):
        found += net_id_leftovers(net_id)
    found += [f"mount {m}" for m in mounts.mounts_under(Path(os.path.realpath(root)))]
    found += _dockerds_under(root)
    return found


def stale_daemon_mounts(bases: Iterable[str] = TEST_BASES) -> list[tuple[Path, list[str]]]:
    """(data-root, its mounts) for every per-user daemon data directory below a test base dir
    that is still mounted although no dockerd uses it (a run killed before its cleanup).

    A daemon that runs (a live dockerd with that --data-root, or an answering socket) is never
    touched, whichever test run it belongs to; a stopped daemon's data directory is not mounted
    (LocalSupervisor.stop unmounts it), so what is found here has no owner left.
    """
    probe = gc.HostProbe()
    seen: dict[Path, list[str]] = {}
    roots = {os.path.realpath(b) for pattern in bases for b in glob.glob(pattern)}
    for root in sorted(roots):
        for point in mounts.mounts_under(Path(root)):
            head, sep, rest = point.partition("/" + DAEMON_DATA)
            if sep and head.endswith("-docker") and (not rest or rest.startswith("/")):
                seen.setdefault(Path(head), []).append(point)
    stale = []
    for data_root, points in sorted(seen.items()):
        if probe.running(data_root, read_marker(data_root)) is None:
            stale.append((data_root, sorted(set(points), key=len, reverse=True)))
    return stale


def sweep_stale_daemon_mounts(bases: Iterable[str] = TEST_BASES) -> list[str]:
    """Unmount what ``stale_daemon_mounts`` finds (hubcontrol.gc.unmount_all, deepest first);
    returns the data directories it unmounted."""
    done = []
    for data_root, _points in stale_daemon_mounts(bases):
        gc.unmount_all(data_root / DAEMON_DATA)
        done.append(str(data_root / DAEMON_DATA))
    return done


def main(argv: list[str]) -> int:
    if argv != ["--sweep"]:
        print("usage: python -m tests.support.leaks --sweep", file=sys.stderr)
        return 2
    for path in sweep_stale_daemon_mounts():
        print(f"unmounted {path}: its dockerd is gone (a killed test run left it mounted)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
