"""Daemon supervisors: command lines and unit files as text, and real dockerd via LocalSupervisor."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from hubcontrol import network, procs
from hubcontrol.errors import ConfigError
from hubcontrol.netids import NetIdRegistry
from hubcontrol.supervisor import (
    CRIU_BIN,
    CRIU_WRAPPER_DIR,
    DAEMON_MEMORY,
    DAEMON_PIDS,
    SYSTEM_CONTAINERD,
    DaemonSpec,
    Limits,
    choose,
    containerd_config_text,
    containerd_pid,
    criu_wrapper_text,
    daemon_config,
    dockerd_argv,
    dockerd_env,
    ping,
)
from hubcontrol.supervisor import systemd as sd
from hubcontrol.supervisor.local import Cgroups, LocalSupervisor, v1_shares
from tests.support import system_containerd

POOL = "10.208.0.0/12"


def make_spec(tmp: Path, net_id: int = 32768, user: str = "alice", **kw) -> DaemonSpec:
    net = network.user_network(net_id, POOL)
    daemon_dir = tmp / f"{user}-docker" / ".rediacc" / "docker"
    return DaemonSpec(
        user=user, net_id=net_id, data_root=daemon_dir / "data", daemon_dir=daemon_dir,
        network_config=network.daemon_network_config(net), **kw,
    )  # fmt: skip


@pytest.mark.parametrize(("value", "cpus"), [(None, None), ("", None), ("200%", 2.0), ("50%", 0.5)])
def test_cpu_quota(value, cpus):
    assert Limits(cpu=value).cpus == cpus


@pytest.mark.parametrize(
    ("value", "size"), [(None, None), ("8G", 8 << 30), ("512M", 512 << 20), ("infinity", None)]
)
def test_memory_max(value, size):
    assert Limits(memory=value).memory_bytes == size


@pytest.mark.parametrize(
    ("cpu", "memory"),
    [("2", None), ("-5%", None), ("infinity", None), (None, "lots"), (None, "8g")],
)
def test_bad_limits_name_the_label(cpu, memory):
    with pytest.raises(ConfigError) as info:
        Limits(cpu=cpu, memory=memory).cpus if cpu else Limits(memory=memory).memory_bytes
    assert "rediacc.hub.limits." in str(info.value)


def test_dockerd_gets_its_own_everything(tmp_path):
    spec = make_spec(tmp_path)
    argv = dockerd_argv(spec, containerd_socket=tmp_path / "none.sock")
    flags = dict(zip(argv[1::2], argv[2::2], strict=False))
    assert argv[0] == "dockerd"
    assert flags["--data-root"] == str(tmp_path / "alice-docker/.rediacc/docker/data")
    assert flags["--exec-root"] == "/run/rediacc/hub/32768"
    assert flags["--pidfile"].endswith("/.rediacc/docker/docker.pid")
    assert flags["--config-file"].endswith("/.rediacc/docker/daemon.json")
    hosts = [argv[i + 1] for i, a in enumerate(argv) if a == "-H"]
    assert hosts == [
        "unix:///run/rediacc/hub/32768/docker.sock",
        "unix:///run/rediacc/hub/32768/env/docker.sock",
    ]
    assert all(len(h) - len("unix://") < 104 for h in hosts)  # sun_path limit
    assert "--containerd" not in argv


def test_with_a_system_containerd_the_daemon_uses_the_users_own(tmp_path):
    sock = tmp_path / "containerd.sock"
    sock.touch()
    spec = make_spec(tmp_path)
    argv = dockerd_argv(spec, containerd_socket=sock)
    assert argv[argv.index("--containerd") + 1] == str(spec.containerd_socket)
    assert str(spec.containerd_socket).startswith(str(spec.exec_root))
    assert "--containerd-namespace" not in argv
    # the configuration dockerd gives a containerd it starts, at dockerd's own paths
    text = containerd_config_text(spec)
    assert f'root = "{spec.data_root}/containerd/daemon"' in text
    assert f'address = "{spec.containerd_socket}"' in text


def test_without_env_socket_the_policy_proxy_serves_it(tmp_path):
    argv = dockerd_argv(make_spec(tmp_path, env_socket=False), containerd_socket=tmp_path / "x")
    assert argv.count("-H") == 1


def test_daemon_config_and_environment(tmp_path):
    spec = make_spec(tmp_path)
    cfg = daemon_config(spec, cgroup_parent="/rediacc.slice/hub-alice/containers")
    assert cfg["experimental"] is True and cfg["init-path"] == "/usr/bin/tini-static"
    assert cfg["bridge"] == "rdh32768" and cfg["iptables"] is False
    assert cfg["cgroup-parent"] == "/rediacc.slice/hub-alice/containers"
    # BuildKit may not run a step in the host's network namespace nor privileged
    assert cfg["builder"] == {"Entitlements": {"network-host": False, "security-insecure": False}}
    env = dockerd_env(spec, base={"PATH": "/usr/bin:/bin"})
    assert env["PATH"].split(":")[0] == CRIU_BIN
    assert env["TMPDIR"] == str(spec.tmpdir)
    assert env["GOGC"] == "50"  # a smaller idle heap per user (bench/density.py)
    assert dockerd_env(spec, base={"PATH": "/bin", "GOGC": "100"})["GOGC"] == "100"  # an operator's


def test_systemd_units_as_text(tmp_path):
    spec = make_spec(tmp_path, user="jean-luc", limits=Limits(cpu="200%", memory="8G", pids=4096))
    service = sd.service_unit(spec, wrapper_dir=Path("/var/lib/rediacc/hub/bin"))
    # the network ID makes the names unique on the host (two hubs' "jean-luc" never share one)
    assert sd.service_name("jean-luc", 32768) == "rediacc-hub-dockerd-jean-luc-32768.service"
    assert service.splitlines()[0] == sd.MARKER  # how hub gc tells the hub's runtime units
    assert "Slice=rediacc.slice" in service
    assert "CPUQuota=200%" in service
    # the daemon's own allowance, not the containers' 8G: a container past its limit is killed
    # in the slice, never dockerd; dockerd past its allowance is killed in its own unit
    assert f"MemoryMax={DAEMON_MEMORY}\n" in service and "MemoryMax=8G" not in service
    assert f"TasksMax={DAEMON_PIDS}\n" in service
    assert "Restart=no" in service and "Delegate=yes" in service and "Type=notify" in service
    assert "OOMScoreAdjust=-500" in service
    exec_start = next(line for line in service.splitlines() if line.startswith("ExecStart="))
    assert exec_start.startswith('ExecStart=/bin/sh -c "')  # joins the unit's "daemon" group
    assert " sh dockerd --data-root " in exec_start
    assert "--exec-root /run/rediacc/hub/32768" in exec_start
    assert f"Environment=PATH=/var/lib/rediacc/hub/bin:{CRIU_BIN}:" in service
    assert sd.slice_name("jean-luc", 32768) == "rediacc-hub-jean\\x2dluc\\x2d32768.slice"
    slice_text = sd.slice_unit(spec)
    assert (
        "[Slice]" in slice_text and "MemoryMax=8G" in slice_text and "CPUQuota=200%" in slice_text
    )
    assert "TasksMax=4096" in slice_text
    # before the daemon runs (no unit to ask): where a host's systemd puts its "daemon" group
    assert sd.SystemdSupervisor(systemctl="false").daemon_cgroup(spec) == (
        "rediacc.slice/rediacc-hub-dockerd-jean-luc-32768.service/daemon"
    )
    cfg = sd.daemon_json(spec)
    assert cfg["cgroup-parent"] == "rediacc-hub-jean\\x2dluc\\x2d32768.slice"
    assert cfg["exec-opts"] == ["native.cgroupdriver=systemd"]


def test_systemd_exec_start_runs_as_systemd_splits_it(tmp_path):
    """The ExecStart line, split the way systemd splits it (systemd-analyze's own parser is not
    reachable without a running systemd; shlex in POSIX mode agrees for double-quoted words),
    runs the join script, which moves the shell into ``<group>/daemon`` and execs dockerd."""
    spec = make_spec(tmp_path / "my work")
    line = next(x for x in sd.service_unit(spec).splitlines() if x.startswith("ExecStart="))
    argv = shlex.split(line.removeprefix("ExecStart=").replace("$$", "$"))
    assert argv[:2] == ["/bin/sh", "-c"] and argv[3:5] == ["sh", "dockerd"]
    assert str(spec.data_root) in argv  # a path with a space stays one argument
    cgroup = tmp_path / "cg"
    (cgroup / "unit").mkdir(parents=True)
    (cgroup / "cgroup.procs").touch()
    (cgroup / "cgroup.controllers").touch()  # a pure v2 hierarchy
    script = (
        argv[2]
        .replace("/sys/fs/cgroup", str(cgroup))
        .replace("$(sed -n 's/^0:://p' /proc/self/cgroup)", "/unit")
    )
    out = subprocess.run(
        ["/bin/sh", "-c", script, "sh", "echo", "dockerd-would-run"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "dockerd-would-run"
    assert (cgroup / "unit/criu").is_dir()
    assert (cgroup / "unit/daemon/cgroup.procs").read_text().strip().isdigit()


def test_the_criu_wrapper_moves_criu_beside_the_daemon_group(tmp_path):
    text = criu_wrapper_text()
    cgroup = tmp_path / "cg"
    (cgroup / "u.service/criu").mkdir(parents=True)
    (cgroup / "cgroup.procs").touch()
    (cgroup / "cgroup.controllers").touch()  # a pure v2 hierarchy
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "criu").write_text('#!/bin/sh\necho real criu "$@"\n')
    (bindir / "criu").chmod(0o755)
    script = (
        text.replace("/sys/fs/cgroup", str(cgroup))
        .replace("$(sed -n 's/^0:://p' /proc/self/cgroup)", "/u.service/daemon")
        .replace(f"PATH={CRIU_BIN}:", f"PATH={bindir}:")
    )
    out = subprocess.run(
        ["/bin/sh", "-c", script, "criu", "dump", "-v"], capture_output=True, text=True
    )
    assert out.stdout.strip() == "real criu dump -v", out
    assert (cgroup / "u.service/criu/cgroup.procs").read_text().strip().isdigit()


def test_systemd_quotes_specifiers(tmp_path):
    spec = make_spec(tmp_path / "100%done")
    assert "100%%done" in sd.service_unit(spec)


def test_systemd_writes_units_once(tmp_path):
    supervisor = sd.SystemdSupervisor(
        unit_dir=tmp_path / "units", systemctl="false", wrapper_dir=tmp_path / "bin"
    )
    spec = make_spec(tmp_path, limits=Limits(cpu="100%"), run_dir=tmp_path / "run")
    assert supervisor.write_units(spec) is True
    assert supervisor.write_units(spec) is False
    assert (tmp_path / "units" / "rediacc-hub-dockerd-alice-32768.service").exists()
    assert (tmp_path / "units" / "rediacc-hub-alice\\x2d32768.slice").exists()
    assert os.access(tmp_path / "bin" / "criu", os.X_OK)
    assert json.loads(spec.config_file.read_text())["exec-opts"] == ["native.cgroupdriver=systemd"]


def test_systemd_stop_removes_the_units(tmp_path):
    """A stopped user leaves no unit file: ``hub gc`` and ``systemctl list-units`` see nothing
    of them (the systemd test, tests/systemd, checks it on a real systemd)."""
    supervisor = sd.SystemdSupervisor(
        unit_dir=tmp_path / "units", systemctl="true", wrapper_dir=tmp_path / "bin"
    )
    spec = make_spec(tmp_path, run_dir=tmp_path / "run")
    supervisor.write_units(spec)
    supervisor.stop(spec)
    assert list((tmp_path / "units").iterdir()) == []


def test_choose():
    # PID 1 here is not systemd (see BRIEF), so "auto" is the local supervisor.
    assert choose("local").name == "local"
    assert choose("systemd").name == "systemd"
    assert choose("auto").name == ("systemd" if Path("/run/systemd/system").is_dir() else "local")
    with pytest.raises(ConfigError):
        choose("docker")


@pytest.mark.parametrize(("weight", "shares"), [(100, 1024), (20, 205), (1, 10), (10000, 102400)])
def test_v1_shares_map_weights_as_systemd_does(weight, shares):
    assert v1_shares(weight) == shares


def _fake_cgroup_root(root: Path, v2: bool) -> Path:
    if v2:
        root.mkdir()
        (root / "cgroup.controllers").write_text("cpu memory pids\n")
    else:
        for c in ("cpu", "memory", "pids"):
            (root / c).mkdir(parents=True)
            (root / c / "cgroup.procs").write_text("")
    return root


@pytest.mark.parametrize("v2", [True, False], ids=["v2", "v1"])
def test_users_yield_the_cpu_to_the_host_by_the_slice_weight(tmp_path, v2):
    """``--users-cpu-weight``: rediacc.slice (every user's daemon and containers) gets the weight
    whenever a user's group is made; without one the slice is left as the operator set it."""
    root = _fake_cgroup_root(tmp_path / "cg", v2)
    weight_file = root / ("rediacc.slice/cpu.weight" if v2 else "cpu/rediacc.slice/cpu.shares")
    cgroups = Cgroups(root)
    cgroups.create("alice-32768")
    assert not weight_file.exists()  # no weight asked for: nothing written
    supervisor = LocalSupervisor(cgroups)
    supervisor.set_users_cpu_weight(20)
    cgroups.create("bob-32832")
    assert weight_file.read_text() == ("20" if v2 else "205")


def test_a_host_refusing_the_slice_weight_still_starts_users(tmp_path, caplog):
    root = _fake_cgroup_root(tmp_path / "cg", v2=True)
    (root / "rediacc.slice" / "cpu.weight").mkdir(parents=True)  # writing it fails
    cgroups = Cgroups(root)
    cgroups.slice_cpu_weight = 20
    cgroups.create("alice-32768")
    assert (root / "rediacc.slice/hub-alice-32768/daemon").is_dir()
    assert "could not give" in caplog.text and "CPU weight 20" in caplog.text


def test_systemd_gives_the_slice_its_weight_once(tmp_path):
    log = tmp_path / "systemctl.log"
    fake = tmp_path / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    fake.chmod(0o755)
    supervisor = sd.SystemdSupervisor(
        unit_dir=tmp_path / "units", systemctl=str(fake), wrapper_dir=tmp_path / "bin"
    )
    supervisor.set_users_cpu_weight(20)
    supervisor._apply_slice_weight()
    supervisor._apply_slice_weight()
    assert log.read_text().splitlines() == ["set-property --runtime rediacc.slice CPUWeight=20"]


# -- LocalSupervisor with real dockerd ------------------------------------------------------


@contextlib.contextmanager
def local_daemon(tmp_path: Path, limits: Limits, **spec_kw):
    registry = NetIdRegistry()
    root = tmp_path / "sup-docker"
    net_id = registry.allocate(root)
    net = network.user_network(net_id, POOL)
    network.ensure_bridge(net.bridge, net.bridge_address)
    spec = make_spec(tmp_path, net_id=net_id, user=f"sup{os.getpid()}", limits=limits, **spec_kw)
    supervisor = LocalSupervisor()
    try:
        yield supervisor, spec
    finally:
        supervisor.stop(spec)
        network.delete_link(net.bridge)
        subprocess.run(["rm", "-rf", str(spec.exec_root)])
        registry.release(net_id, root)


@pytest.fixture
def live_spec(tmp_path):
    with local_daemon(tmp_path, Limits(cpu="150%", memory="300M", pids=500)) as pair:
        yield pair


@pytest.fixture(params=["dockerd's containerd", "system containerd"])
def host_containerd(request):
    """The host without a system containerd (dockerd starts its own), and with one, as every
    host with docker.io or Docker CE has (the supervisor starts the user's own): the tests that
    take this run on both. Ask for it before the daemon's fixture, so the daemon stops first."""
    if request.param == "system containerd":
        with system_containerd.running():
            yield request.param
        return
    if SYSTEM_CONTAINERD.exists():
        pytest.skip("this host runs a system containerd: only the 'system containerd' case")
    yield request.param


def _shims(spec: DaemonSpec) -> list[int]:
    """The containerd shims of ``spec``'s containers (whichever containerd started them)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdecimal():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if argv[0].endswith(b"containerd-shim-runc-v2") and any(
                    str(spec.exec_root).encode() in a or str(spec.data_root).encode() in a
                    for a in argv
                ):
                    found.append(int(entry.name))
    return found


@pytest.mark.docker
def test_local_daemon_lifecycle_cgroups_and_adoption(host_containerd, live_spec):
    supervisor, spec = live_spec
    supervisor.set_users_cpu_weight(30)
    supervisor.start(spec)
    assert ping(spec.socket) and ping(spec.env_socket_path)
    # the users' slice yields the CPU to the host's services (--users-cpu-weight)
    weights = [Path("/sys/fs/cgroup/rediacc.slice/cpu.weight"),
               Path("/sys/fs/cgroup/cpu/rediacc.slice/cpu.shares")]  # fmt: skip
    assert [w.read_text().strip() for w in weights if w.exists()] in (["30"], ["307"])
    assert oct(spec.env_socket_path.stat().st_mode & 0o777) == "0o666"
    pid = supervisor.describe(spec)["pid"]
    assert pid and Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"dockerd")
    # dockerd and containerd sit in the daemon group, without a memory limit
    cgroups = Path(f"/proc/{pid}/cgroup").read_text()
    assert f"rediacc.slice/hub-{spec.user}-{spec.net_id}/daemon" in cgroups
    # ... in the v2 hierarchy too (on hybrid hosts as well), which the OUTPUT rules match
    v2 = supervisor.daemon_cgroup(spec)
    assert v2 == f"rediacc.slice/hub-{spec.user}-{spec.net_id}/daemon"
    assert f"0::/{v2}\n" in cgroups
    # its containerd: dockerd's own, or (beside a system containerd) the one started for it
    containerd = containerd_pid(spec)
    assert containerd and f"0::/{v2}\n" in Path(f"/proc/{containerd}/cgroup").read_text()
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    if host_containerd == "system containerd":
        assert argv[argv.index("--containerd") + 1] == str(spec.containerd_socket)
    else:
        assert "--containerd" not in argv
    children = [containerd]
    # dockerd and containerd run with the hub's smaller Go heap target
    for p in [pid, *children]:
        assert b"\0GOGC=50\0" in b"\0" + Path(f"/proc/{p}/environ").read_bytes()
    limits = supervisor.describe(spec)["limits"]
    assert limits.get("cpu.max", limits.get("cpu.cfs_quota_us", "")).startswith("150000")
    assert limits.get("memory.max", limits.get("memory.limit_in_bytes")) == str(300 << 20)
    assert limits.get("pids.max") == "500"
    # the daemon's own allowance, and the whole user's group bounded by the sum
    memory = limits.get("daemon.memory.max", limits.get("daemon.memory.limit_in_bytes"))
    assert memory == str(DAEMON_MEMORY)
    assert limits.get("daemon.pids.max") == str(DAEMON_PIDS)
    total = limits.get("total.memory.max", limits.get("total.memory.limit_in_bytes"))
    assert total == str((300 << 20) + DAEMON_MEMORY)
    assert limits.get("total.pids.max") == str(500 + DAEMON_PIDS)
    # the daemon is not our child: a new supervisor (a restarted hub) adopts it, start is a no-op
    # (a daemon an older hub started outside the v2 group is moved into it when adopted)
    root = network.cgroup2_root()
    for p in [pid, *children]:
        (root / "cgroup.procs").write_text(str(p))
    assert f"0::/{v2}\n" not in Path(f"/proc/{pid}/cgroup").read_text()
    fresh = LocalSupervisor()
    assert fresh.adopt(spec) and fresh.describe(spec)["pid"] == pid
    assert all(f"0::/{v2}\n" in Path(f"/proc/{p}/cgroup").read_text() for p in [pid, *children])
    fresh.start(spec)
    assert fresh.describe(spec)["pid"] == pid and containerd_pid(spec) == containerd
    fresh.stop(spec)
    assert not supervisor.is_running(spec) and not spec.socket.exists()
    assert not procs.alive(containerd)
    assert not list(Path("/sys/fs/cgroup").glob(f"**/rediacc.slice/hub-{spec.user}-{spec.net_id}"))


@pytest.mark.docker
def test_a_crashed_daemon_is_cleaned_up_and_restarts(host_containerd, live_spec):
    supervisor, spec = live_spec
    supervisor.start(spec)
    pid, containerd = supervisor.describe(spec)["pid"], containerd_pid(spec)
    os.kill(pid, signal.SIGKILL)
    assert supervisor._wait_gone(pid, 10)
    # its containerd never outlives it (dockerd's own: Pdeathsig; the supervisor's: setpriv)
    assert containerd is not None and supervisor._wait_gone(containerd, 10)
    assert not supervisor.is_running(spec)
    supervisor.start(spec)  # stale pidfile, sockets and netns mounts do not get in the way
    assert supervisor.is_running(spec) and supervisor.describe(spec)["pid"] != pid
    assert ping(spec.socket)


@pytest.mark.docker
def test_a_users_own_containerd_that_cannot_start_fails_the_start_with_its_log(
    tmp_path, monkeypatch
):
    """Beside a system containerd: when the user's own containerd exits at start (here, a
    configuration it cannot read), the start fails at once with containerd's own words in the
    error, and no dockerd is left on the system containerd."""
    import hubcontrol.supervisor as sup
    from hubcontrol.errors import DaemonError

    monkeypatch.setattr(sup, "containerd_config_text", lambda spec: "not [ toml\n")
    with system_containerd.running(), local_daemon(tmp_path, Limits()) as (supervisor, spec):
        started = time.monotonic()
        with pytest.raises(DaemonError) as failed:
            supervisor.start(spec, timeout=30)
        assert time.monotonic() - started < 10  # not the socket wait's 30 s
        assert "hub: containerd exited at start" in failed.value.log_message
        assert "toml" in failed.value.log_message.lower()  # containerd's reason, from its log
        assert not supervisor.is_running(spec) and not ping(spec.socket)


@pytest.mark.docker
def test_a_users_own_containerd_that_died_takes_its_daemon_with_it():
    """Beside a system containerd, nothing restarts the user's own containerd if it dies (dockerd
    restarts only one it started): the daemon then counts as not running, and a start replaces
    both, so the user's next login gets a daemon that can run containers."""
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp, system_containerd.running():
        with local_daemon(Path(tmp), Limits()) as (supervisor, spec):
            supervisor.start(spec)
            pid, containerd = supervisor.describe(spec)["pid"], containerd_pid(spec)
            assert containerd is not None
            os.kill(containerd, signal.SIGKILL)
            assert supervisor._wait_gone(containerd, 10)
            assert not supervisor.is_running(spec)
            supervisor.start(spec)
            assert supervisor.describe(spec)["pid"] not in (None, pid)
            assert containerd_pid(spec) not in (None, containerd)
            client, image = _busybox(spec)
            try:
                out = client.containers.run(image, ["echo", "ran"], remove=False, detach=True)
                assert out.wait(timeout=60)["StatusCode"] == 0
            finally:
                client.close()


@pytest.mark.docker
def test_while_starting_runs_in_the_daemons_group_before_it_answers_and_fails_closed(live_spec):
    """What the hub does beside dockerd's start (its OUTPUT rules) finds the daemon's group made
    and runs before the start returns; when it fails, the daemon it was for does not run on."""
    supervisor, spec = live_spec
    group = network.cgroup2_root() / supervisor.daemon_cgroup(spec)
    seen: list[bool] = []

    def beside() -> None:
        seen.append(group.is_dir())
        raise RuntimeError("iptables-restore failed")

    with pytest.raises(RuntimeError, match="iptables-restore failed"):
        supervisor.start(spec, while_starting=beside)
    assert seen == [True]
    assert not supervisor.is_running(spec) and not ping(spec.socket)

    calls: list[bool] = []
    supervisor.start(spec, while_starting=lambda: calls.append(ping(spec.socket)))
    assert ping(spec.socket) and len(calls) == 1
    supervisor.start(spec, while_starting=lambda: calls.append(ping(spec.socket)))
    assert calls[1:] == [True]  # a running daemon: runs again (the hub re-applies its rules)


@pytest.mark.docker
def test_a_recycled_pid_is_not_taken_for_the_daemon(live_spec):
    supervisor, spec = live_spec
    spec.daemon_dir.mkdir(parents=True, exist_ok=True)
    spec.pidfile.write_text(f"{os.getpid()}\n")  # a live process that is not this dockerd
    assert not supervisor.is_running(spec)


@pytest.mark.docker
def test_a_start_rotates_a_large_log_and_empties_tmpdir(live_spec):
    supervisor, spec = live_spec
    spec.tmpdir.mkdir(parents=True)
    (spec.tmpdir / "ctrd-checkpoint-123").mkdir()
    (spec.tmpdir / "ctrd-checkpoint-123" / "pages-1.img").write_bytes(b"x" * 1024)
    spec.log.write_bytes(b"old\n" * (3 << 20))  # 12 MiB
    supervisor.start(spec)
    # What the new daemons write there themselves is theirs: on a loaded machine dockerd may
    # find its containerd slow to answer, restart it and first ask it for a stack dump
    # (SIGUSR1: containerd.<pid>.stacks.log in TMPDIR). What was there before the start is gone.
    left = [p.name for p in spec.tmpdir.iterdir() if not p.name.endswith(".stacks.log")]
    assert left == []
    assert spec.log.with_name("dockerd.log.1").stat().st_size == 12 << 20
    assert spec.log.stat().st_size < 1 << 20


def test_the_policy_socket_is_not_removed_with_the_daemons(tmp_path):
    # env_socket=False: the file at env/docker.sock belongs to the policy socket process
    import socket as so

    spec = make_spec(tmp_path, env_socket=False, run_dir=tmp_path / "run")
    spec.env_dir.mkdir(parents=True)
    listener = so.socket(so.AF_UNIX)
    listener.bind(str(spec.env_socket_path))
    try:
        LocalSupervisor(cgroups=_NoCgroups())._cleanup_stale(spec)
        assert spec.env_socket_path.is_socket()
    finally:
        listener.close()


class _NoCgroups:
    """No cgroup tree (this test only checks which files a cleanup removes)."""

    def pids(self, user):
        return set()


@pytest.mark.docker
def test_restarting_a_user_daemon_leaves_the_hosts_docker0_alone(live_spec):
    """dockerd 20.10 deletes docker0 on restart with default-address-pools unless live-restore."""
    supervisor, spec = live_spec
    if subprocess.run(["ip", "link", "show", "docker0"], capture_output=True).returncode:
        # the host daemon's bridge (BRIEF: 172.17.0.1/16) is missing: put it back first
        subprocess.run(["ip", "link", "add", "docker0", "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", "172.17.0.1/16", "dev", "docker0"], check=True)
        subprocess.run(["ip", "link", "set", "docker0", "up"], check=True)
    assert json.loads(daemon_config_text(spec))["live-restore"] is True
    for _ in range(2):
        supervisor.start(spec)
        supervisor.stop(spec)
    supervisor.start(spec)
    assert subprocess.run(["ip", "link", "show", "docker0"], capture_output=True).returncode == 0


def daemon_config_text(spec: DaemonSpec) -> str:
    return json.dumps(daemon_config(spec))


# -- one user cannot exhaust the host through their daemon ----------------------------------


class GroupFiles:
    """The kernel's accounting of one leaf (``daemon`` or ``containers``) of a user's groups, on
    the v1 controllers or the v2 hierarchy, whichever holds the limits."""

    def __init__(self, supervisor: LocalSupervisor, spec: DaemonSpec, leaf: str) -> None:
        cg = supervisor.cgroups
        rel = f"rediacc.slice/hub-{spec.user}-{spec.net_id}/{leaf}"
        self.v2 = cg.v2
        self.memory = cg.root / rel if cg.v2 else cg.root / "memory" / rel
        self.pids = cg.root / rel if cg.v2 else cg.root / "pids" / rel

    def peak_memory(self) -> int:
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        return int((self.memory / name).read_text())

    def oom_kills(self) -> int:
        """OOM kills in this group and below (v1 counts a kill only in the victim's own group,
        a container's ``docker-<id>`` below ``containers``)."""
        name = "memory.events" if self.v2 else "memory.oom_control"
        total = 0
        for path in self.memory.rglob(name):
            fields = dict(line.split() for line in path.read_text().splitlines())
            total += int(fields.get("oom_kill", 0))
        return total

    def limit_hits(self) -> int:
        """How often this group's own memory limit was reached (v1 ``failcnt``, v2 ``max``)."""
        if self.v2:
            fields = dict(
                line.split() for line in (self.memory / "memory.events").read_text().splitlines()
            )
            return int(fields["max"])
        return int((self.memory / "memory.failcnt").read_text())

    def tasks(self) -> int:
        return int((self.pids / "pids.current").read_text())

    def task_limit_hits(self) -> int:
        """How often a fork in this group was refused at its ``pids.max`` (``pids.events``)."""
        fields = dict(line.split() for line in (self.pids / "pids.events").read_text().splitlines())
        return int(fields.get("max", 0))


def _busybox(spec: DaemonSpec):
    import docker

    from tests.support.images import import_busybox

    client = docker.DockerClient(base_url=spec.url, version="1.41", timeout=60)
    return client, import_busybox(client)


@pytest.mark.docker
def test_a_daemon_made_to_hold_memory_is_killed_at_its_allowance_not_the_host(tmp_path):
    """The outside test's attack, straight at the daemon's own socket (what the policy cannot
    see, such as image configs, grows the daemon the same way): creates with 900 KB labels took
    an unlimited dockerd from 178 MB to 1.36 GB. Held to its allowance, the daemon is OOM-killed
    in its own group and the user's running containers are untouched."""
    allowance = 200 << 20
    limits = Limits(memory="256M", pids=500, daemon_memory=allowance)
    with local_daemon(tmp_path, limits) as (supervisor, spec):
        supervisor.start(spec)
        client, image = _busybox(spec)
        try:
            work = client.containers.run(image, ["sleep", "1000"], detach=True)
            work_pid = client.api.inspect_container(work.id)["State"]["Pid"]
            daemon, containers = (
                GroupFiles(supervisor, spec, "daemon"),
                GroupFiles(supervisor, spec, "containers"),
            )
            big = "x" * (900 << 10)
            created = 0
            with contextlib.suppress(Exception):  # the daemon dies mid-request: reset
                for i in range(400):
                    client.api.create_container(image, ["true"], labels={"big": f"{big}{i}"})
                    created += 1
        finally:
            client.close()
        assert created < 400, "the daemon held every create: no allowance in force"
        assert daemon.peak_memory() <= allowance + (64 << 10)  # the kernel charges in batches
        assert daemon.oom_kills() >= 1 and containers.oom_kills() == 0
        assert not supervisor.is_running(spec)
        # the user's work keeps running (live-restore); only their own daemon is gone
        assert Path(f"/proc/{work_pid}").exists()


@pytest.mark.docker
def test_a_container_past_its_memory_limit_is_killed_not_the_daemon(tmp_path):
    with local_daemon(tmp_path, Limits(memory="64M", pids=500)) as (supervisor, spec):
        supervisor.start(spec)
        pid = supervisor.describe(spec)["pid"]
        client, image = _busybox(spec)
        try:
            hog = "head -c 300000000 /dev/zero | tail -c 300000000 >/dev/null; echo survived"
            c = client.containers.run(image, ["sh", "-c", hog], detach=True)
            c.wait(timeout=60)
            logs = c.logs().decode()
        finally:
            client.close()
        assert "Killed" in logs and "survived" in logs  # tail was killed, its shell was not
        assert GroupFiles(supervisor, spec, "containers").limit_hits() >= 1
        daemon = GroupFiles(supervisor, spec, "daemon")
        assert daemon.limit_hits() == 0 and daemon.oom_kills() == 0
        assert supervisor.describe(spec)["pid"] == pid and ping(spec.socket)


@pytest.mark.docker
def test_the_daemons_tasks_are_bounded_and_it_survives_reaching_them(host_containerd, tmp_path):
    """Each running container adds a shim of about 12 tasks to the daemon's group; without a
    bound, about 2,700 small containers would exhaust the host's pid_max (32768). Beside a
    system containerd too: the shims are the user's own containerd's, in the daemon's group."""
    bound = 120
    limits = Limits(memory="256M", pids=500, daemon_pids=bound)
    with local_daemon(tmp_path, limits) as (supervisor, spec):
        supervisor.start(spec)
        pid = supervisor.describe(spec)["pid"]
        daemon = GroupFiles(supervisor, spec, "daemon")
        client, image = _busybox(spec)
        refused = None
        try:
            for _ in range(40):
                try:
                    client.containers.run(image, ["sleep", "1000"], detach=True)
                except Exception as e:  # the daemon's error, whatever its class
                    refused = str(e)
                    break
                assert daemon.tasks() <= bound
            running = len(client.containers.list())
        finally:
            client.close()
        assert refused is not None, "40 containers started: no task bound on the daemon"
        # the kernel refused a fork at the daemon's bound; the daemon reports it as EAGAIN, or as
        # runc aborting (exit status 134: Go's runtime aborts when it cannot make a thread)
        assert daemon.task_limit_hits() >= 1, refused
        said = refused.lower()
        assert "resource temporarily unavailable" in said or "exit status 134" in said, refused
        assert 3 <= running < 40
        # the daemon itself is alive and answers
        assert supervisor.describe(spec)["pid"] == pid and ping(spec.socket)
        v2 = supervisor.daemon_cgroup(spec)
        shims = _shims(spec)
        assert len(shims) >= running
        assert all(f"0::/{v2}\n" in Path(f"/proc/{p}/cgroup").read_text() for p in shims)
        if host_containerd == "system containerd":
            listed = subprocess.run(
                ["ctr", "--address", str(SYSTEM_CONTAINERD), "namespaces", "ls", "-q"],
                capture_output=True, text=True, check=True,
            ).stdout.split()  # fmt: skip
            assert listed == [], "the user's containers went to the system containerd"


@pytest.mark.docker
@pytest.mark.criu
def test_a_local_daemon_checkpoints_where_run_is_noexec(host_containerd, tmp_path):
    """Debian mounts /run noexec (initramfs-tools): runc must still find a CRIU wrapper it can
    run, so the wrapper lives in CRIU_WRAPPER_DIR, never in the exec-root. A real dump and
    restore through a local daemon whose exec-root is on a noexec tmpfs."""
    import anyio
    import docker

    from hubcontrol.checkpoint import CheckpointTarget, CriuCheckpointer
    from tests.support.images import import_busybox

    run = Path(tempfile.mkdtemp(prefix="hubrun", dir="/tmp"))  # unix socket paths stay short
    mount = ["mount", "-t", "tmpfs", "-o", "noexec,nosuid,nodev,mode=0755", "tmpfs", str(run)]
    subprocess.run(mount, check=True)
    try:
        with local_daemon(tmp_path, Limits(), run_dir=run) as (supervisor, spec):
            supervisor.start(spec)
            pid = supervisor.describe(spec)["pid"]
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            path = next(e for e in environ if e.startswith(b"PATH=")).decode()[5:]
            assert path.split(":")[0] == str(CRIU_WRAPPER_DIR)
            client = docker.DockerClient(base_url=f"unix://{spec.socket}", version="1.41")
            try:
                import_busybox(client)
                counter = "i=0; while true; do i=$((i+1)); echo $i > /tmp/n; sleep 0.1; done"
                ctr = client.containers.run(
                    "hub-test/busybox:latest", ["sh", "-c", counter], detach=True
                )
                workspace = tmp_path / "ws" / spec.user
                workspace.mkdir(parents=True)
                (tmp_path / "ws").chmod(0o700)
                target = CheckpointTarget(
                    user=spec.user,
                    docker_url=f"unix://{spec.socket}",
                    container=ctr.id,
                    checkpoint_dir=workspace / ".checkpoint",
                    daemon_tmpdir=spec.tmpdir,
                    pages_aside=True,
                    container_user="root",
                    workdir="/",
                )
                checkpointer = CriuCheckpointer(tmp_path / "state")
                dumped = anyio.run(checkpointer.checkpoint, target)
                assert dumped.method == "criu"
                restored = anyio.run(checkpointer.restore, target)
                assert restored is not None
                assert "processes restored with their memory" in restored.detail
                checkpointer.engine.close()
            finally:
                for c in client.containers.list(all=True):
                    c.remove(force=True)
                client.close()
    finally:
        subprocess.run(["umount", "-l", str(run)], check=False)
        run.rmdir()
