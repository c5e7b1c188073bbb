"""GC on real data-roots: a real dockerd running on one, a crashed one's leftover mounts, a
configured-but-stopped daemon, and BTRFS subvolumes on a loop-mounted filesystem.

dockerd is started here directly with the per-user layout (``<ws>/<u>-docker/.rediacc/docker``)
rather than through the supervisor, so this test depends only on GC and a real daemon. It uses
scratch index 46: bridge ``hubt46``, exec-root ``/run/hubt46``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from hubcontrol import gc, mounts
from hubcontrol.gc import Action, HostProbe
from hubcontrol.supervisor import DaemonSpec
from hubcontrol.supervisor.systemd import SystemdSupervisor

pytestmark = pytest.mark.docker

INDEX = 46
BRIDGE = f"hubt{INDEX}"
DAY = 86400.0


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def age(root: Path, days: float) -> None:
    stamp = time.time() - days * DAY
    for rel in gc.USE_STAMPS:
        p = root / rel
        if p.exists():
            os.utime(p, (stamp, stamp))


def make_data_root(ws: Path, user: str, net_id: int) -> Path:
    root = ws / f"{user}-docker"
    (root / ".rediacc/docker/data").mkdir(parents=True, exist_ok=True)
    (root / ".networkid").write_text(f"{net_id}\n")
    (ws / user).mkdir(exist_ok=True)
    (ws / user / "work.txt").write_text("the user's work")
    return root


def _ping(sock: Path) -> bool:
    """GET /_ping over the unix socket (plain sockets: nothing left open when it is refused)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        try:
            s.connect(str(sock))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
            return s.recv(4096).split(b"\r\n", 1)[0].endswith(b"200 OK")
        except OSError:
            return False


@contextlib.contextmanager
def dockerd_on(root: Path, exec_root: Path):
    """A real dockerd whose data-root is ``root``'s; yields the Popen (its own process group)."""
    daemon = root / ".rediacc/docker"
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
    _sh("ip", "link", "add", BRIDGE, "type", "bridge")
    _sh("ip", "addr", "add", f"10.250.{INDEX}.1/24", "dev", BRIDGE)
    _sh("ip", "link", "set", BRIDGE, "up")
    (daemon / "daemon.json").write_text("{}")
    sock = exec_root / "docker.sock"
    cmd = [
        "dockerd", "--data-root", str(daemon / "data"), "--exec-root", str(exec_root),
        "-H", f"unix://{sock}", "--pidfile", str(daemon / "docker.pid"),
        "--config-file", str(daemon / "daemon.json"), "--bridge", BRIDGE,
        "--iptables=false", "--ip-masq=false",
    ]  # fmt: skip
    if os.path.exists("/run/containerd/containerd.sock"):
        cmd += ["--containerd-namespace", BRIDGE, "--containerd-plugins-namespace", f"{BRIDGE}p"]
    log = open(daemon / "dockerd.log", "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (daemon / "dockerd.log").read_text()[-2000:]
            if _ping(sock):
                break
            assert time.monotonic() < deadline, "dockerd did not answer /_ping within 30 s"
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)


def _unmount_all(path: Path) -> None:
    for m in mounts.mounts_under(path):
        subprocess.run(["umount", "-l", m], capture_output=True)


@pytest.fixture
def host(tmp_path: Path):
    """Workspace dir, a probe pointing at test-only exec/claims/unit dirs; cleans every mount."""
    ws = tmp_path / "ws"
    ws.mkdir()
    exec_base = Path(f"/run/hubt{INDEX}")
    units = tmp_path / "units"
    units.mkdir()
    probe = HostProbe(
        exec_base=exec_base,
        claims_dir=tmp_path / "netids",
        unit_dirs=(units,),
        host_cleanup=False,
        sys_net=tmp_path / "sysnet",  # made-up network IDs: never another test's bridges
        runtime_unit_dirs=(units,),  # stands for /run/systemd/system
        systemctl=None,
    )
    try:
        yield ws, probe
    finally:
        _unmount_all(exec_base)
        _unmount_all(tmp_path)
        shutil.rmtree(exec_base, ignore_errors=True)


def entry_for(plan: gc.GCPlan, path: Path) -> gc.GCEntry:
    return next(e for e in plan.entries if e.path == path)


def test_running_then_crashed_then_collected(host):
    ws, probe = host
    net_id = 32768 + 64 * 7
    root = make_data_root(ws, "carol", net_id)
    exec_root = probe.exec_base / str(net_id)
    exec_root.mkdir(parents=True)
    probe.claims_dir.mkdir()
    (probe.claims_dir / str(net_id)).write_text(f"{root}\n")
    with dockerd_on(root, exec_root) as proc:
        age(root, 90)
        plan = gc.plan_gc(ws, max_age=30 * DAY, probe=probe)
        carol = entry_for(plan, root)
        assert carol.action is Action.KEEP
        assert f"dockerd pid {proc.pid}" in carol.reason
        # even a plan made while it was idle is re-checked before removal
        stale = gc.GCPlan(
            plan.workspace_dir, plan.max_age, (dataclasses.replace(carol, action=Action.REMOVE),)
        )
        done = gc.apply_gc(stale, probe=probe)
        assert done.entries[0].outcome.startswith("skipped: daemon running")
        assert root.exists()

        # crash: the whole process group dies at once, as in an OOM kill of its cgroup
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # What a crashed daemon leaves mounted (BRIEF): the data-root self-bind (measured here: the
    # SIGKILL above leaves it) and, once it ran containers, netns/default; make sure of both.
    data = root / ".rediacc/docker/data"
    if not mounts.mounts_under(data):
        _sh("mount", "--bind", str(data), str(data))
    (exec_root / "netns").mkdir(exist_ok=True)
    (exec_root / "netns/default").touch()
    if not mounts.mounts_under(exec_root / "netns"):
        _sh("mount", "--bind", "/proc/self/ns/net", str(exec_root / "netns/default"))
    assert mounts.mounts_under(root) and mounts.mounts_under(exec_root)
    age(root, 90)

    plan = gc.plan_gc(ws, max_age=30 * DAY, probe=probe)
    carol = entry_for(plan, root)
    assert carol.action is Action.REMOVE, carol.reason
    done = gc.apply_gc(plan, probe=probe)
    assert entry_for(done, root).outcome.startswith("removed"), entry_for(done, root).outcome
    assert "claim released" in entry_for(done, root).outcome
    assert not root.exists() and not exec_root.exists()
    assert not mounts.mounts_under(ws) and not mounts.mounts_under(probe.exec_base)
    assert not (probe.claims_dir / str(net_id)).exists()
    assert (ws / "carol/work.txt").read_text() == "the user's work"


def test_runtime_units_of_a_stopped_daemon_do_not_keep_its_data_root(host, tmp_path):
    """The systemd supervisor's runtime units (its marker first) start nothing on their own:
    they are not "configured", and GC removes them with the data-root (a daemon that died
    without the hub's stop leaves them). An operator's unit or an enablement link is."""
    ws, probe = host
    units = probe.unit_dirs[0]
    root = make_data_root(ws, "dave", 32768)
    exec_root = probe.exec_base / "32768"
    exec_root.mkdir(parents=True)
    with dockerd_on(root, exec_root):
        pass  # ran once, stopped cleanly
    spec = DaemonSpec(
        user="dave",
        net_id=32768,
        data_root=root / ".rediacc/docker/data",
        daemon_dir=root / ".rediacc/docker",
        run_dir=tmp_path / "run",
    )
    SystemdSupervisor(unit_dir=units, systemctl="false", wrapper_dir=tmp_path / "bin").write_units(
        spec
    )
    unit = units / "rediacc-hub-dockerd-dave-32768.service"
    assert unit.exists()
    age(root, 400)
    # enabled (a wants link): configured, kept
    (units / "multi-user.target.wants").mkdir()
    (units / "multi-user.target.wants" / unit.name).symlink_to(unit)
    dave = entry_for(gc.plan_gc(ws, max_age=30 * DAY, probe=probe), root)
    assert dave.action is Action.KEEP and "configured" in dave.reason, dave.reason
    shutil.rmtree(units / "multi-user.target.wants")
    # a unit file the hub did not write (an operator's, or an older hub's): configured, kept
    legacy = units / "rediacc-hub-dockerd-dave.service"
    legacy.write_text("[Service]\nExecStart=/usr/bin/dockerd\n")
    dave = entry_for(gc.plan_gc(ws, max_age=30 * DAY, probe=probe), root)
    assert dave.action is Action.KEEP and str(legacy) in dave.reason, dave.reason
    legacy.unlink()
    # only the hub's own runtime units: removed, and the units with it
    plan = gc.plan_gc(ws, max_age=30 * DAY, probe=probe)
    assert entry_for(plan, root).action is Action.REMOVE, entry_for(plan, root).reason
    outcome = entry_for(gc.apply_gc(plan, probe=probe), root).outcome
    assert outcome.startswith("removed") and "unit" in outcome, outcome
    assert not root.exists() and list(units.iterdir()) == []


def test_a_daemon_start_makes_an_old_data_root_young(host):
    ws, probe = host
    root = make_data_root(ws, "gina", 32768)
    exec_root = probe.exec_base / "32768"
    exec_root.mkdir(parents=True)
    age(root, 400)
    (root / ".rediacc/docker/data/tmp").mkdir()
    os.utime(root / ".rediacc/docker/data", (0, 0))
    assert entry_for(gc.plan_gc(ws, max_age=30 * DAY, probe=probe), root).action is Action.REMOVE
    with dockerd_on(root, exec_root):
        pass
    os.utime(root / ".networkid", (0, 0))
    os.utime(root / ".rediacc/docker/dockerd.log", (0, 0))  # even with its log elsewhere
    gina = entry_for(gc.plan_gc(ws, max_age=30 * DAY, probe=probe), root)
    assert gina.action is Action.KEEP and "used" in gina.reason, gina.reason


@pytest.fixture
def btrfs_ws():
    """A workspace dir on a loop-mounted BTRFS filesystem (the seed's setup)."""
    if not shutil.which("mkfs.btrfs"):
        pytest.fail("btrfs-progs missing: run scripts/setup-host.sh")
    base = Path(tempfile.mkdtemp(prefix="hubgc-btrfs-", dir="/tmp"))
    image = base / "fs.img"
    mnt = base / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(160 << 20)
    _sh("mkfs.btrfs", "-q", str(image))
    _sh("mount", "-o", "loop", str(image), str(mnt))
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_btrfs_subvolumes_are_deleted_as_subvolumes(btrfs_ws: Path, tmp_path: Path):
    ws = btrfs_ws
    root = ws / "erin-docker"
    _sh("btrfs", "subvolume", "create", str(root))
    (root / ".rediacc/docker/data/btrfs/subvolumes").mkdir(parents=True)
    # docker's btrfs storage driver makes a subvolume per layer, nested in the data-root
    layer = root / ".rediacc/docker/data/btrfs/subvolumes/abc123"
    _sh("btrfs", "subvolume", "create", str(layer))
    (layer / "bin").mkdir()
    (layer / "bin/sh").write_bytes(b"\x7fELF" + b"\0" * 8192)
    (root / ".networkid").write_text("32768\n")
    (root / ".rediacc/docker/dockerd.log").write_text("")
    (ws / "erin").mkdir()
    age(root, 40)
    probe = HostProbe(
        exec_base=tmp_path / "run",
        claims_dir=tmp_path / "netids",
        unit_dirs=(),
        host_cleanup=False,
        sys_net=tmp_path / "sysnet",
    )
    plan = gc.plan_gc(ws, max_age=30 * DAY, probe=probe)
    erin = entry_for(plan, root)
    assert erin.action is Action.REMOVE and erin.size >= 8192
    done = gc.apply_gc(plan, probe=probe)
    assert entry_for(done, root).outcome == "removed (deleted BTRFS subvolume)"
    assert not root.exists() and (ws / "erin").is_dir()
    listed = subprocess.run(
        ["btrfs", "subvolume", "list", str(ws)], capture_output=True, text=True
    ).stdout
    assert "erin-docker" not in listed


def test_json_shape_is_stable(host):
    ws, probe = host
    make_data_root(ws, "fay", 32768)
    entry = gc.plan_gc(ws, max_age=0, probe=probe).entries[0]
    data = entry.to_json()
    assert set(data) == {
        "kind",
        "path",
        "user",
        "net_id",
        "age_seconds",
        "size_bytes",
        "action",
        "reason",
        "outcome",
    }
    json.dumps(data)


def test_removal_deletes_the_dead_daemons_bridges_and_cgroups(host):
    ws, probe = host
    probe.host_cleanup = True
    net_id = 32768 + 64 * 4010  # far above what a hub on this machine hands out
    root = make_data_root(ws, "hank", net_id)
    bridges = [f"rdh{net_id}", f"rdh{net_id}e"]
    cgroup = Path("/sys/fs/cgroup/rediacc.slice/hub-hank")
    try:
        for bridge in bridges:
            _sh("ip", "link", "add", bridge, "type", "bridge")
        v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
        if v2:
            (cgroup / "daemon").mkdir(parents=True)
        age(root, 60)
        done = gc.apply_gc(gc.plan_gc(ws, max_age=30 * DAY, probe=probe), probe=probe)
        outcome = entry_for(done, root).outcome
        assert outcome.startswith("removed"), outcome
        for bridge in bridges:
            assert f"bridge {bridge} deleted" in outcome
            assert (
                subprocess.run(["ip", "link", "show", bridge], capture_output=True).returncode != 0
            )
        if v2:
            assert "cgroups removed" in outcome and not cgroup.exists()
    finally:
        for bridge in bridges:
            subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        for d in (cgroup / "daemon", cgroup):
            with contextlib.suppress(OSError):
                d.rmdir()


def test_sizes_count_self_binds_but_not_foreign_mounts(tmp_path: Path):
    root = tmp_path / "x-docker"
    data = root / ".rediacc/docker/data"
    (data / "overlay2/abc/merged").mkdir(parents=True)
    (data / "layer").write_bytes(b"x" * 1_000_000)
    before = gc.disk_usage(root)
    try:
        _sh("mount", "--bind", str(data), str(data))  # what a crashed dockerd leaves
        _sh("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(data / "overlay2/abc/merged"))
        (data / "overlay2/abc/merged/big").write_bytes(b"y" * 2_000_000)
        # the 2 MB on tmpfs are not counted; the mount point's own directory block may differ
        assert before - 8192 <= gc.disk_usage(root) <= before
    finally:
        _unmount_all(root)


def test_claims_whose_data_root_is_gone_are_released_unless_the_id_is_in_use(host, tmp_path):
    """A data-root dir removed by hand (with its workspace) left its network-ID claim, bridges
    and rules taken for good; GC releases them, but never while something still uses the ID."""
    ws, probe = host
    claims = probe.claims_dir
    claims.mkdir()
    gone, busy, elsewhere, alive = 40000, 40064, 40128, 40192
    (claims / str(gone)).write_text(f"{ws / 'gone-docker'}\n")
    (claims / str(busy)).write_text(f"{ws / 'busy-docker'}\n")
    (claims / str(elsewhere)).write_text(f"{tmp_path / 'other' / 'x-docker'}\n")
    (ws / "alive-docker").mkdir()
    (claims / str(alive)).write_text(f"{ws / 'alive-docker'}\n")
    (probe.sys_net / f"rdh{busy}e" / "brif" / "veth0").mkdir(parents=True)

    plan = gc.plan_gc(ws, max_age=0, probe=probe)
    claims_seen = {e.net_id: e for e in plan.entries if e.kind is gc.Kind.CLAIM}
    assert set(claims_seen) == {gone, busy}
    assert claims_seen[gone].action is Action.REMOVE
    assert claims_seen[busy].action is Action.KEEP and "veth0" in claims_seen[busy].reason

    done = gc.apply_gc(plan, probe=probe)
    outcome = next(e for e in done.entries if e.net_id == gone).outcome
    assert outcome.startswith("removed (claim released"), outcome
    assert not (claims / str(gone)).exists()
    for kept in (busy, elsewhere, alive):
        assert (claims / str(kept)).exists()


def _netns_with_veth(exec_root: Path, name: str, veth: str, bridge: str) -> subprocess.Popen:
    """A process alone in a new network namespace, the namespace bind-mounted at
    ``<exec_root>/netns/<name>`` (as dockerd keeps a container's), and a veth pair between it
    and ``bridge``: what a container of a per-user daemon is, network-wise."""
    proc = subprocess.Popen(["unshare", "--net", "sleep", "600"])
    deadline = time.monotonic() + 10
    while os.readlink(f"/proc/{proc.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
        assert time.monotonic() < deadline, "unshare did not make a namespace"
        time.sleep(0.02)
    (exec_root / "netns").mkdir(parents=True, exist_ok=True)
    (exec_root / "netns" / name).touch()
    _sh("mount", "--bind", f"/proc/{proc.pid}/ns/net", str(exec_root / "netns" / name))
    _sh("ip", "link", "add", f"{veth}0", "type", "veth", "peer", "name", f"{veth}1")
    _sh("ip", "link", "set", f"{veth}1", "netns", str(proc.pid))
    _sh("ip", "link", "set", f"{veth}0", "master", bridge)
    return proc


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


def test_an_interface_into_a_namespace_nothing_is_in_does_not_keep_a_data_root(host):
    """A dockerd killed while a container ran leaves the container's network namespace
    bind-mounted in its exec-root, with no process in it, and the pair's host end on the user's
    bridge. That interface is no sign of use: GC removes the data-root, and unmounting the
    exec-root frees the namespace and the pair. An interface into a namespace a process is in
    still keeps everything."""
    ws, probe = host
    probe.host_cleanup = True
    probe.sys_net = Path("/sys/class/net")
    net_id = 32768 + 64 * 4011  # far above what a hub on this machine hands out
    root = make_data_root(ws, "ivy", net_id)
    age(root, 60)
    bridge = f"rdh{net_id}e"
    exec_root = probe.exec_base / str(net_id)
    procs: list[subprocess.Popen] = []
    try:
        _sh("ip", "link", "add", bridge, "type", "bridge")
        procs.append(_netns_with_veth(exec_root, "dead", "vhtd", bridge))
        procs.append(_netns_with_veth(exec_root, "live", "vhtl", bridge))
        procs[0].kill()
        procs[0].wait()  # its namespace now lives on only as the mount

        plan = gc.plan_gc(ws, max_age=30 * DAY, probe=probe)
        kept = entry_for(plan, root)
        assert kept.action is Action.KEEP and "interface vhtl0 on bridge" in kept.reason

        procs[1].kill()
        procs[1].wait()
        probe.refresh()
        plan = gc.plan_gc(ws, max_age=30 * DAY, probe=probe)
        assert entry_for(plan, root).action is Action.REMOVE, entry_for(plan, root).reason
        outcome = entry_for(gc.apply_gc(plan, probe=probe), root).outcome
        assert outcome.startswith("removed") and f"bridge {bridge} deleted" in outcome, outcome
        assert not root.exists() and not exec_root.exists()
        assert (ws / "ivy" / "work.txt").read_text() == "the user's work"  # the workspace stays
        deadline = time.monotonic() + 10  # the kernel frees a namespace in the background
        while _link_exists("vhtd0") or _link_exists("vhtl0"):
            assert time.monotonic() < deadline, "the veth pairs outlived their namespaces"
            time.sleep(0.1)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        _unmount_all(exec_root)
        for link in ("vhtd0", "vhtl0", bridge):
            subprocess.run(["ip", "link", "del", link], capture_output=True)
