"""CRIU checkpoint/restore against a real dockerd, stopped and started again between dump and restore.

Starts a throwaway dockerd (bridge hubt31, experimental, tini init, CRIU 4.2.1 on PATH) that this
file can stop and restart on the same data-root, which ``tests.support.dockerd.scratch_dockerd``
cannot. The environment is a busybox container running, as the container user, a shell that keeps
a counter and a random token only in its memory and appends both to a workspace file every 0.2 s.
Failures are injected for real: a process holding a deleted file larger than CRIU's ghost limit
(CRIU refuses to dump it), damaged images, and docker starting the container fresh instead of
restoring it (the one simulated part: docker is told to start without the checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from hubcontrol import criupages, mounts
from hubcontrol.checkpoint import (
    FINGERPRINT_FILE,
    CheckpointTarget,
    CriuCheckpointer,
    RecreateCheckpointer,
    compare_fingerprints,
    container_processes,
    host_can_dump_other_users,
)
from hubcontrol.errors import CheckpointError
from tests.support.dockerd import own_containerd
from tests.support.images import import_busybox
from tests.support.procs import stop as stop_process

pytestmark = [pytest.mark.docker, pytest.mark.criu, pytest.mark.timeout(240)]

INDEXES = range(31, 40)  # this area's scratch daemon indexes (30 is bench/resume.py's)
IMAGE = "hub-test/busybox-bash:latest"
BASH = "printf '#!/bin/sh\\nexec /bin/sh \"$@\"\\n' > /bin/bash && chmod 755 /bin/bash"
CRIU_BIN = "/opt/rediacc/criu/bin"
COUNTER = (
    "T=$$-$RANDOM$RANDOM; i=0; "
    'while true; do i=$((i+1)); echo "$i $T" >> /workspace/counter; sleep 0.2; done'
)
# CRIU's default ghost limit is 1 MiB: a deleted file larger than that cannot be dumped.
GHOST = "head -c 3000000 /dev/zero > /tmp/big; exec 3</tmp/big; rm /tmp/big; " + COUNTER


class RestartableDockerd:
    """A dockerd that can be stopped and started again on the same data-root and TMPDIR."""

    @classmethod
    def claim(cls) -> RestartableDockerd:
        """One on a free index: the suite may run beside a developer's run of this file."""
        for index in INDEXES:
            try:
                os.mkdir(f"/run/hubt{index}")  # atomic claim; dockerd uses it as exec-root
            except FileExistsError:
                continue
            return cls(index)
        raise RuntimeError(f"no free scratch daemon index in {INDEXES}")

    def __init__(self, index: int) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=f"hubt{index}-", dir="/tmp"))
        self.exec_root = Path(f"/run/hubt{index}")
        self.socket = self.exec_root / "docker.sock"
        self.bridge = f"hubt{index}"
        self.index = index
        self.tmpdir = self.root / "tmp"
        self.tmpdir.mkdir()
        (self.root / "daemon.json").write_text(json.dumps({}))
        self.proc: subprocess.Popen | None = None
        self.containerd: subprocess.Popen | None = None
        self._client = None
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        for cmd in (
            ["ip", "link", "add", self.bridge, "type", "bridge"],
            ["ip", "addr", "add", f"10.250.{index}.1/24", "dev", self.bridge],
            ["ip", "link", "set", self.bridge, "up"],
        ):
            subprocess.run(cmd, check=True, capture_output=True)

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        # the hub's CRIU wrapper, as both supervisors write it: it hands CRIU the memory images
        # the checkpointer set aside (hubcontrol.criupages)
        path = f"{CRIU_BIN}:{os.environ['PATH']}"
        wrapper = self.root / "bin" / "criu"
        wrapper.parent.mkdir(exist_ok=True)
        wrapper.write_text(
            "#!/bin/sh\n"
            + criupages.IMAGE_PATH
            + criupages.RESTORE_PRELUDE
            + f'PATH={path} exec criu "$@"\n'
        )
        wrapper.chmod(0o700)
        env = dict(os.environ, TMPDIR=str(self.tmpdir), PATH=f"{wrapper.parent}:{path}")
        cmd = [
            "dockerd",
            "--data-root",
            str(self.root / "data"),
            "--exec-root",
            str(self.exec_root),
            "-H",
            self.url,
            "--pidfile",
            str(self.root / "docker.pid"),
            "--config-file",
            str(self.root / "daemon.json"),
            "--bridge",
            self.bridge,
            "--experimental",
            "--init-path",
            "/usr/bin/tini-static",
            "--iptables=false",
            "--ip-masq=false",
        ]
        with open(self.root / "dockerd.log", "ab") as log:
            if os.path.exists("/run/containerd/containerd.sock"):
                # beside a system containerd: one of its own, kept across restarts (CRIU's PATH)
                if self.containerd is None or self.containerd.poll() is not None:
                    self.containerd = own_containerd(self.root, self.exec_root, env, log)
                cmd += ["--containerd", str(self.exec_root / "containerd.sock")]
            self.proc = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError((self.root / "dockerd.log").read_text()[-2000:])
            if _ping(self.socket):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("dockerd did not answer /_ping within 30 s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._client is not None:
            self._client.close()
            self._client = None
        _unmount_under(self.exec_root)

    def client(self):
        import docker

        if self._client is None:
            self._client = docker.DockerClient(base_url=self.url, version="1.41", timeout=60)
        return self._client

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                for ctr in self.client().containers.list(all=True):
                    ctr.remove(force=True)
        self.stop()
        if self.containerd is not None:
            stop_process(self.containerd, 10)
        _unmount_under(self.root)
        shutil.rmtree(self.exec_root, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


def _ping(path: Path) -> bool:
    # a plain socket: httpcore leaks the socket of a refused unix-socket connect
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(1)
        try:
            sock.connect(str(path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: d\r\n\r\n")
            return sock.recv(4096).endswith(b"OK")
        except OSError:
            return False


def _unmount_under(path: Path) -> None:
    for m in mounts.mounts_under(path):
        subprocess.run(["umount", "-l", m], capture_output=True)


@pytest.fixture(scope="module")
def daemon():
    d = RestartableDockerd.claim()
    try:
        d.start()
        client = d.client()
        import_busybox(client)
        # hooks run with `bash -c` (the seed's contract): give busybox a bash
        maker = client.containers.run(
            "hub-test/busybox:latest", ["/bin/sh", "-c", BASH], detach=True
        )
        maker.wait()
        maker.commit(IMAGE.split(":")[0], "latest")
        maker.remove()
        yield d
    finally:
        d.cleanup()


@pytest.fixture
def workspace(daemon: RestartableDockerd, request):
    ws = daemon.root / "workspaces" / request.node.name[:40].replace("[", "-").strip("]")
    ws.mkdir(parents=True)
    os.chown(ws, 1000, 1000)
    yield ws
    for ctr in daemon.client().containers.list(all=True):
        ctr.remove(force=True)


@pytest.fixture
def checkpointers(tmp_path: Path):
    """Make checkpointers sharing one state dir; their docker clients are closed afterwards."""
    made: list[CriuCheckpointer] = []

    def make(cls=CriuCheckpointer):
        cp = cls(tmp_path / "state")
        made.append(cp)
        return cp

    yield make
    for cp in made:
        cp.engine.close()


def _run_env(
    daemon: RestartableDockerd,
    ws: Path,
    script: str = COUNTER,
    name: str = "env",
    user: str = "root",
):
    """The environment as the hub creates it: --init, workspace, hidden images.

    It runs as root because this machine's root lacks CAP_SYS_RESOURCE, without which CRIU cannot
    read the rlimits of another user's processes (see test_non_root_environment...); hooks still
    run as the container user ``vscode``.
    """
    ctr = daemon.client().containers.run(
        IMAGE,
        ["sh", "-c", script],
        detach=True,
        init=True,
        user=user,
        name=f"hub-{name}",
        volumes={str(ws): {"bind": "/workspace", "mode": "rw"}},
        tmpfs={"/workspace/.checkpoint": "ro,size=4k,mode=0555"},
        restart_policy={"Name": "no"},
    )
    _wait_lines(ws / "counter", 3)
    return ctr


def _target(daemon: RestartableDockerd, ws: Path, ctr, **kw) -> CheckpointTarget:
    return CheckpointTarget(
        user=ws.name,
        docker_url=daemon.url,
        container=ctr.id,
        checkpoint_dir=ws / ".checkpoint",
        daemon_tmpdir=daemon.tmpdir,
        container_user="vscode",
        workdir="/workspace",
        **{"pages_aside": True, **kw},
    )


def _lines(path: Path) -> list[tuple[int, str]]:
    out = []
    for line in path.read_text().splitlines():
        n, _, token = line.partition(" ")
        if n.isdecimal() and token:
            out.append((int(n), token))
    return out


def _wait_lines(path: Path, at_least: int, timeout: float = 10) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(FileNotFoundError):
            lines = _lines(path)
            if len(lines) >= at_least:
                return lines
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} has fewer than {at_least} lines")
        time.sleep(0.1)


def _shim_alive(container_id: str) -> bool:
    for pid in os.listdir("/proc"):
        if pid.isdecimal() and int(pid) != os.getpid():
            with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
                if container_id.encode() in f.read():
                    return True
    return False


def test_checkpoint_stop_daemon_restore_continues(
    daemon: RestartableDockerd, workspace: Path, checkpointers
) -> None:
    ws = workspace
    ctr = _run_env(daemon, ws)
    ctr.reload()
    old_pid = ctr.attrs["State"]["Pid"]
    target = _target(
        daemon,
        ws,
        ctr,
        pre_dump="id -u > /workspace/pre_dump.uid",
        post_restore="id -u > /workspace/post_restore.uid",
    )
    cp = checkpointers()

    result = anyio.run(cp.checkpoint, target)
    assert result.method == "criu" and result.processes >= 2 and result.image_bytes > 0
    assert (ws / "pre_dump.uid").read_text().strip() == "1000"  # hooks run as the container user
    images = ws / ".checkpoint" / result.checkpoint
    assert (images / "inventory.img").exists() and (images / FINGERPRINT_FILE).exists()
    # the memory is set aside, out of the tar dockerd streams into containerd on a restore
    aside = images.with_name(images.name + ".pages")
    # (every image of ASIDE_MIN_BYTES or more; a small process's pages may stay with the rest)
    assert [p.name for p in aside.glob("pages-*.img")]
    assert all(p.stat().st_size < criupages.ASIDE_MIN_BYTES for p in images.iterdir())
    assert (images / "hub-pages").read_text() == result.checkpoint
    assert not os.path.exists(f"/proc/{old_pid}")  # the processes are gone
    frozen = _lines(ws / "counter")
    last_n, token = frozen[-1]

    daemon.stop()  # what the hub does next: the memory is really freed
    cp.engine.forget(daemon.url)
    assert not _shim_alive(ctr.id)
    time.sleep(0.5)
    assert _lines(ws / "counter") == frozen  # nothing runs while suspended
    daemon.start()

    restored = anyio.run(cp.restore, target)
    assert restored is not None and restored.hook_error is None
    assert "processes restored with their memory" in restored.detail
    assert (ws / "post_restore.uid").read_text().strip() == "1000"
    lines = _wait_lines(ws / "counter", len(frozen) + 3)
    after = lines[len(frozen) :]
    # the counter went on from where it stopped, with the token only its memory held
    assert after[0] == (last_n + 1, token)
    assert all(t == token for _, t in after)
    assert [n for n, _ in lines] == list(range(1, len(lines) + 1))
    # cleaned up: containerd's copies, the restored images; the record is ready for the next cycle
    assert not [p for p in os.listdir(daemon.tmpdir) if p.startswith(("ctrd-", "hub-pages-"))]
    assert not images.exists() and not aside.exists()
    health = cp.health(ws.name)
    assert (health.failures, health.checkpoint, health.disabled) == (0, None, False)
    assert health.last_restore_seconds is not None

    # a second cycle on the same daemon, restored at once (the "content already exists" case)
    second = anyio.run(cp.checkpoint, target)
    assert anyio.run(cp.restore, target).checkpoint == second.checkpoint
    assert _wait_lines(ws / "counter", len(lines) + 2)[-1][1] == token


def test_images_set_aside_also_restore_through_dockerd(
    daemon: RestartableDockerd, workspace: Path, checkpointers
) -> None:
    """A restore without a TMPDIR to stage in (or a CRIU wrapper that predates staging) puts the
    aside images back beside the rest, and dockerd's tar carries them as it always did."""
    ws = workspace
    ctr = _run_env(daemon, ws)
    target = _target(daemon, ws, ctr)
    cp = checkpointers()
    result = anyio.run(cp.checkpoint, target)
    frozen = _lines(ws / "counter")
    images = ws / ".checkpoint" / result.checkpoint
    assert list(images.with_name(images.name + ".pages").glob("pages-*.img"))
    restored = anyio.run(cp.restore, replace(target, pages_aside=False))
    assert restored is not None and "processes restored with their memory" in restored.detail
    assert _wait_lines(ws / "counter", len(frozen) + 2)[len(frozen)] == (
        frozen[-1][0] + 1,
        frozen[-1][1],
    )


def test_verification_detects_a_fresh_start(
    daemon: RestartableDockerd, workspace: Path, checkpointers
) -> None:
    ws = workspace
    ctr = _run_env(daemon, ws)
    target = _target(daemon, ws, ctr)

    class FreshStarting(CriuCheckpointer):
        """docker claiming a restore while starting the container afresh (simulated)."""

        def _start_from_checkpoint(self, target, container_id, checkpoint_id):
            with self._api(target) as api:
                response = api.post(f"/containers/{container_id}/start")
            assert response.status_code == 204, response.text
            return None

    cp = checkpointers(FreshStarting)
    result = anyio.run(cp.checkpoint, target)
    recorded = json.loads((ws / ".checkpoint" / result.checkpoint / FINGERPRINT_FILE).read_text())
    assert {p["nspid"] for p in recorded["processes"]} >= {1}
    with pytest.raises(CheckpointError) as err:
        anyio.run(cp.restore, target)
    assert "not verified" in err.value.log_message
    assert "was started afresh" in err.value.log_message
    assert "restored faithfully" in err.value.user_message
    health = cp.health(ws.name)
    assert health.failures == 1 and health.checkpoint is None
    ctr.reload()
    assert ctr.status == "exited"  # stopped: the hub starts it afresh, knowingly
    assert not (ws / ".checkpoint" / result.checkpoint).exists()

    # and the same comparison with the real restore says yes
    ctr.start()
    _wait_lines(ws / "counter", 3)
    good = checkpointers()
    anyio.run(good.checkpoint, target)
    restored = anyio.run(good.restore, target)
    ctr.reload()
    ok, _ = compare_fingerprints(restored.processes, container_processes(ctr.attrs["State"]["Pid"]))
    assert ok and good.health(ws.name).failures == 0


def test_dump_failures_are_logged_counted_and_disable_after_three(
    daemon: RestartableDockerd, workspace: Path, checkpointers
) -> None:
    ws = workspace
    (ws / "notes.txt").write_text("keep me")
    ctr = _run_env(daemon, ws, GHOST)
    target = _target(daemon, ws, ctr)
    cp = checkpointers()
    for attempt in (1, 2, 3):
        with pytest.raises(CheckpointError) as err:
            anyio.run(cp.checkpoint, target)
        assert "CRIU dump" in err.value.log_message
        # CRIU's own log line, read from the criu-dump.log dockerd named
        assert "ghost" in err.value.log_message.lower()
        assert "workspace files are kept" in err.value.user_message
        ctr.reload()
        assert ctr.status == "running"  # unpaused, still serving the user
        assert cp.health(ws.name).failures == attempt
        assert not [p for p in os.listdir(ws / ".checkpoint")]  # no half-written images left
    health = cp.health(ws.name)
    assert health.disabled and "CRIU dump failed" in health.last_error
    with pytest.raises(CheckpointError, match="disabled"):
        anyio.run(cp.checkpoint, target)
    # the fallback: stop-and-recreate, workspace untouched
    stopped = anyio.run(checkpointers(RecreateCheckpointer).checkpoint, target)
    assert stopped.method == "stop"
    ctr.reload()
    assert ctr.status == "exited"
    assert (ws / "notes.txt").read_text() == "keep me"
    assert anyio.run(checkpointers(RecreateCheckpointer).restore, target) is None
    assert not cp.reset(ws.name).disabled


def test_damaged_images_fail_the_restore_cleanly(
    daemon: RestartableDockerd, workspace: Path, checkpointers
) -> None:
    ws = workspace
    ctr = _run_env(daemon, ws)
    target = _target(daemon, ws, ctr)
    cp = checkpointers()
    result = anyio.run(cp.checkpoint, target)
    (ws / ".checkpoint" / result.checkpoint / "inventory.img").write_bytes(os.urandom(64))
    with pytest.raises(CheckpointError) as err:
        anyio.run(cp.restore, target)
    assert "CRIU restore" in err.value.log_message and "restore.log" in err.value.log_message
    assert cp.health(ws.name).failures == 1
    assert not (ws / ".checkpoint" / result.checkpoint).exists()  # stale images gone
    assert not [p for p in os.listdir(daemon.tmpdir) if p.startswith("ctrd-checkpoint")]
    # the hub's fallback: a fresh start on the same workspace
    before = len(_lines(ws / "counter"))
    ctr.start()
    lines = _wait_lines(ws / "counter", before + 2)
    assert lines[before][0] == 1  # a fresh process, and the old lines are all still there


def test_a_hanging_restore_is_killed(
    daemon: RestartableDockerd, workspace: Path, checkpointers
) -> None:
    """CRIU 4.2.1 spins forever (and fills its log) on empty pages images; the watchdog ends it."""
    ws = workspace
    ctr = _run_env(daemon, ws)
    target = _target(daemon, ws, ctr)
    cp = checkpointers()
    cp.restore_timeout = 3.0
    result = anyio.run(cp.checkpoint, target)
    images = ws / ".checkpoint"
    pages = [*images.glob(f"{result.checkpoint}/pages-*.img")]
    pages += images.glob(f"{result.checkpoint}.pages/pages-*.img")
    assert pages
    for image in pages:
        image.write_bytes(b"")
    started = time.monotonic()
    with pytest.raises(CheckpointError, match="restore"):
        anyio.run(cp.restore, target)
    assert time.monotonic() - started < 30
    ctr.reload()
    assert ctr.status == "exited"
    assert cp.health(ws.name).failures == 1


def test_restore_refuses_a_container_started_without_its_checkpoint(
    daemon: RestartableDockerd, workspace: Path, checkpointers
) -> None:
    ws = workspace
    ctr = _run_env(daemon, ws)
    target = _target(daemon, ws, ctr)
    cp = checkpointers()
    anyio.run(cp.checkpoint, target)
    ctr.start()  # someone (a restart policy, a person) started it fresh meanwhile
    with pytest.raises(CheckpointError, match="restarted without its saved state"):
        anyio.run(cp.restore, target)
    ctr.reload()
    assert ctr.status == "running"  # left running: it is the user's working environment
    assert cp.health(ws.name).checkpoint is None


def test_non_root_environment_needs_cap_sys_resource(
    daemon: RestartableDockerd, workspace: Path, checkpointers
) -> None:
    """CRIU reads every process's rlimits with prlimit(), which for a process of another uid needs
    CAP_SYS_RESOURCE. Some hosts (this Firecracker VM) withhold it from root: there a non-root
    environment cannot be dumped, and the failure says why."""
    ctr = _run_env(daemon, workspace, user="vscode")
    cp = checkpointers()
    target = _target(daemon, workspace, ctr)
    if host_can_dump_other_users():
        assert anyio.run(cp.checkpoint, target).method == "criu"
        return
    with pytest.raises(CheckpointError) as err:
        anyio.run(cp.checkpoint, target)
    assert "Can't get rlimit" in err.value.log_message  # CRIU's own line
    assert "CAP_SYS_RESOURCE" in err.value.log_message  # and the hint
    ctr.reload()
    assert ctr.status == "running"


def test_unexpected_errors_become_counted_failures(
    daemon: RestartableDockerd, workspace: Path, checkpointers
) -> None:
    """A container that vanished or a daemon that does not answer must not leave the Hub halfway:
    the error is a counted CheckpointError, so its fallback runs."""
    cp = checkpointers()
    gone = CheckpointTarget(
        user=workspace.name,
        docker_url=daemon.url,
        container="hub-gone",
        checkpoint_dir=workspace / ".checkpoint",
    )
    with pytest.raises(CheckpointError, match="could not be suspended") as err:
        anyio.run(cp.checkpoint, gone)
    assert "NotFound" in err.value.log_message
    cp.store.update(workspace.name, lambda h: replace(h, checkpoint="hub-1", container="abc"))
    dead = CheckpointTarget(
        user=workspace.name,
        docker_url="unix:///run/hubt-none/docker.sock",
        container="abc",
        checkpoint_dir=workspace / ".checkpoint",
    )
    with pytest.raises(CheckpointError, match="a fresh one was started"):
        anyio.run(cp.restore, dead)
    health = cp.health(workspace.name)
    assert health.failures == 2 and health.checkpoint is None
