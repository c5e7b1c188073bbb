"""What one user costs the host, and how it grows with users: ``.venv/bin/python -m bench.density``.

Root, docker, the environment image from scripts/build-image.sh (or ``--image``). A real
``Hub`` (local supervisor, per-user dockerd, policy sockets) logs in ``--users`` users at once
(the control plane's ``ensure_running``, not a browser), then measures, per user:

- **daemon tree PSS**: every process in the user's ``daemon`` cgroup (dockerd, containerd, the
  shims), from ``/proc/<pid>/smaps_rollup``; the environment's own processes are excluded;
- **policy socket PSS**: the user's policy-socket process, with its share of the spawner it was
  forked from (the spawner's PSS divided by the users: ``hubcontrol.policysockets.Spawner``;
  ``HUB_POLICY_SOCKET_FORK=0`` executes each instead) (run from an installed package or a
  checkout whose modules are byte-compiled: ``python -m compileall hubcontrol``; without the
  ``.pyc`` files every process compiles its modules at start and keeps about 3 MiB more);
- **idle CPU**: the daemon tree's and policy socket's CPU time over ``--idle`` seconds with
  every environment idle; their PSS is taken again after it (running, then idle);
- **disk**: bytes under the user's data-root dir (``du``, hard links once);
- **start**: each user's ``ensure_running`` wall time, all started at once (p50/p95).

Baseline, measured in the same run: a bare ``dockerd`` with the same flags and no container
(``supervisor.local``), so the ratio says what the hub adds over the floor any per-user daemon
pays. PSS counts shared pages fractionally, so the sum over users is what they really cost.
Prints a markdown table (docs/performance.md, docs/scaling.md) to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hubcontrol.config import HubConfig, Template
from hubcontrol.embed import embedded
from hubcontrol.names import safe_name
from hubcontrol.supervisor.local import Cgroups, group_name

CLK_TCK = os.sysconf("SC_CLK_TCK")


def pss_kib(pid: int) -> int:
    """Proportional set size of ``pid`` in KiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return 0


def daemon_pids(user: str, net_id: int) -> set[int]:
    cgroups = Cgroups()
    found: set[int] = set()
    for base in cgroups.dirs(group_name(user, net_id), "daemon"):
        for procs in base.rglob("cgroup.procs") if base.exists() else ():
            with contextlib.suppress(OSError, ValueError):
                found.update(int(p) for p in procs.read_text().split())
    return found


def spawner_share(users: int) -> int:
    """KiB: the PSS of the process the policy sockets are forked from (``policysockets.SPAWNER``,
    the local supervisor's way), split evenly between the users; 0 when they are executed."""
    from hubcontrol import policysockets

    pid = policysockets.SPAWNER.pid()
    return pss_kib(pid) // users if pid else 0


def policy_pid(exec_root: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int((exec_root / "policy.pid").read_text().split()[0])
    return None


def by_process(pids: set[int]) -> dict[str, int]:
    """PSS (KiB) of ``pids`` summed by command name (dockerd, containerd, the shims)."""
    found: dict[str, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            found[name] = found.get(name, 0) + pss_kib(pid)
    return found


def disk_bytes(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True)
    with contextlib.suppress(ValueError, IndexError):
        return int(out.stdout.split()[0])
    return 0


def bare_daemon_pss(tmp: Path) -> int:
    """PSS (KiB) of a bare per-user dockerd tree with no container: the floor."""
    from hubcontrol import network
    from hubcontrol.netids import NetIdRegistry
    from hubcontrol.supervisor import DaemonSpec
    from hubcontrol.supervisor.local import LocalSupervisor

    registry = NetIdRegistry()
    root = tmp / "bare-docker"
    net_id = registry.allocate(root)
    net = network.user_network(net_id, "10.208.0.0/12")
    daemon_dir = root / ".rediacc/docker"
    spec = DaemonSpec(user="bare", net_id=net_id, data_root=daemon_dir / "data",
                      daemon_dir=daemon_dir, network_config=network.daemon_network_config(net))  # fmt: skip
    supervisor = LocalSupervisor()
    try:
        network.ensure_bridge(net.bridge, net.bridge_address)
        supervisor.start(spec)
        time.sleep(2)
        return sum(pss_kib(p) for p in daemon_pids("bare", net_id))
    finally:
        supervisor.stop(spec)
        network.delete_link(net.bridge)
        subprocess.run(["rm", "-rf", str(spec.exec_root), str(root)], check=False)
        registry.release(net_id, root)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.density", description=__doc__)
    parser.add_argument("--users", type=int, default=8, help="users logging in at once")
    parser.add_argument("--image", default="rediacc-hub/env:latest")
    parser.add_argument("--command", default="exec sleep infinity",
                        help="the template command (idle environments)")  # fmt: skip
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idle CPU sampling")
    args = parser.parse_args(argv)

    say = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="hub-density-") as tmp_name:
        tmp = Path(tmp_name)
        say("baseline: a bare per-user dockerd ...")
        floor = bare_daemon_pss(tmp)
        template = Template(name="default", image=args.image, command=args.command,
                            docker="per-user", user="root")  # fmt: skip
        config = HubConfig(routes={}, templates={"default": template},
                           docker_socket="/var/run/docker.sock", workspace_dir=tmp / "ws",
                           state_dir=tmp / "state", audit_dir=tmp / "audit", supervisor="local")  # fmt: skip
        users = [f"density{i:02d}" for i in range(args.users)]
        hub_pss_before = pss_kib(os.getpid())
        with embedded(config, ready_timeout=120) as hub:
            try:
                say(f"{args.users} users log in at once ...")

                def start(user: str) -> float:
                    t0 = time.monotonic()
                    hub.ensure_running(user)
                    return time.monotonic() - t0

                with ThreadPoolExecutor(max_workers=args.users) as pool:
                    starts = list(pool.map(start, users))
                time.sleep(3)
                rows = []
                share = spawner_share(len(users))
                for user in users:
                    spec = hub.hub.daemon_spec(safe_name(user))
                    dpids = daemon_pids(spec.user, spec.net_id)
                    ppid = policy_pid(spec.exec_root)
                    rows.append({
                        "user": user,
                        "daemon_pss": sum(pss_kib(p) for p in dpids),
                        "policy_pss": (pss_kib(ppid) + share) if ppid else 0,
                        "spawner_share": share,
                        "by_process": by_process(dpids),
                        "pids": dpids | ({ppid} if ppid else set()),
                        "disk": disk_bytes(config.workspace_dir / f"{spec.user}-docker"),
                    })  # fmt: skip
                say(f"idle CPU over {args.idle:.0f} s ...")
                before = {r["user"]: sum(cpu_ticks(p) for p in r["pids"]) for r in rows}
                time.sleep(args.idle)
                for r in rows:
                    ticks = sum(cpu_ticks(p) for p in r["pids"]) - before[r["user"]]
                    r["idle_cpu"] = ticks / CLK_TCK / args.idle
                    spec = hub.hub.daemon_spec(safe_name(r["user"]))
                    dpids = daemon_pids(spec.user, spec.net_id)
                    ppid = policy_pid(spec.exec_root)
                    r["idle_daemon_pss"] = sum(pss_kib(p) for p in dpids)
                    r["idle_policy_pss"] = (
                        (pss_kib(ppid) + spawner_share(len(users))) if ppid else 0
                    )
                hub_pss = pss_kib(os.getpid()) - hub_pss_before
            finally:
                for user in users:
                    with contextlib.suppress(Exception):
                        hub.destroy(user, remove_data=True)

    mib = lambda kib: kib / 1024  # noqa: E731
    daemon = [mib(r["daemon_pss"]) for r in rows]
    policy = [mib(r["policy_pss"]) for r in rows]
    per_user = [d + p for d, p in zip(daemon, policy, strict=True)]
    print(f"Per-user cost, {args.users} users of `{args.image}` started at once "
          f"(`python -m bench.density --users {args.users}`):\n")  # fmt: skip
    print("| measure | median | max |")
    print("| --- | --- | --- |")
    print(f"| daemon tree PSS (dockerd, containerd, shims) | {statistics.median(daemon):.1f} MiB | {max(daemon):.1f} MiB |")  # fmt: skip
    names = sorted({n for r in rows for n in r["by_process"]})
    for name in names:
        each = [mib(r["by_process"].get(name, 0)) for r in rows]
        print(f"| ... of which {name} | {statistics.median(each):.1f} MiB | {max(each):.1f} MiB |")
    print(f"| policy socket PSS | {statistics.median(policy):.1f} MiB | {max(policy):.1f} MiB |")
    shares = [mib(r["spawner_share"]) for r in rows]
    print(f"| ... of which its share of the spawner it was forked from (its PSS / users) | {statistics.median(shares):.1f} MiB | {max(shares):.1f} MiB |")  # fmt: skip
    print(f"| everything one running user adds (environment excluded) | {statistics.median(per_user):.1f} MiB | {max(per_user):.1f} MiB |")  # fmt: skip
    idle_user = [mib(r["idle_daemon_pss"] + r["idle_policy_pss"]) for r in rows]
    idle_policy = [mib(r["idle_policy_pss"]) for r in rows]
    print(f"| the same after {args.idle:.0f} s idle: daemon tree + policy socket | {statistics.median(idle_user):.1f} MiB | {max(idle_user):.1f} MiB |")  # fmt: skip
    print(f"| ... of which the policy socket | {statistics.median(idle_policy):.1f} MiB | {max(idle_policy):.1f} MiB |")  # fmt: skip
    idle = [r["idle_cpu"] * 100 for r in rows]
    print(f"| idle CPU of daemon tree + policy socket | {statistics.median(idle):.2f}% of a core | {max(idle):.2f}% |")  # fmt: skip
    disk = [r["disk"] / 1e6 for r in rows]
    print(f"| data-root disk | {statistics.median(disk):.0f} MB | {max(disk):.0f} MB |")
    print(f"| start, all at once | p50 {pct(starts, 0.5):.1f} s | p95 {pct(starts, 0.95):.1f} s |")
    print(f"\nBaseline in the same run: a bare per-user dockerd tree, no container: "
          f"{mib(floor):.1f} MiB PSS; a running user costs "
          f"{statistics.median(per_user) / max(mib(floor), 0.1):.2f}x that. The hub process "
          f"grew {mib(hub_pss):.1f} MiB for {args.users} users.")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
