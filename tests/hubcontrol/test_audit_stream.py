"""Audit streams against real dockerd (scratch daemons 10-12) and a real registry (Debian's
docker-registry): records, re-arming across a daemon restart, resuming across a hub restart,
the daemon's buffer overflowing while no stream was attached."""

from __future__ import annotations

import contextlib
import gc
import json
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import anyio
import pytest

from hubcontrol.audit import HUB_ACTIONS, AuditManager
from hubcontrol.errors import AuditError
from tests.support.dockerd import scratch_dockerd
from tests.support.images import import_busybox

pytestmark = pytest.mark.docker

NET_ID = 32768


def records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "a partial line in the audit log"
    return [json.loads(line) for line in data.splitlines()]


def user_records(path: Path) -> list[dict]:
    return [r for r in records(path) if r["type"] != "audit"]


WAIT_SECONDS = 15.0


async def wait_for(path: Path, predicate) -> list[dict]:
    """Poll the log (every 50 ms, up to WAIT_SECONDS) until ``predicate(records)`` holds; the
    stream is asynchronous."""
    with anyio.move_on_after(WAIT_SECONDS):
        while True:
            got = records(path)
            if predicate(got):
                return got
            await anyio.sleep(0.05)
    got = records(path)
    pytest.fail(f"audit log never satisfied the condition; it has {len(got)} records: {got[-5:]}")


def churn(client, image: str, n: int, prefix: str) -> list[str]:
    """``n`` short-lived containers (create, start, die, destroy each); returns their ids."""
    ids = []
    for i in range(n):
        c = client.containers.run(image, "true", name=f"{prefix}{i}", detach=True)
        c.wait()
        c.remove()
        ids.append(c.id)
    return ids


def destroyed(ids):
    """A predicate: every container in ``ids`` has its destroy record."""
    return lambda rs: {r["resource"] for r in rs if r["action"] == "destroy"} >= set(ids)


def restart_daemon(d) -> None:
    """SIGTERM the scratch dockerd and start it again with the same command line and data."""
    cmd = Path(f"/proc/{d.proc.pid}/cmdline").read_bytes().split(b"\0")[:-1]
    env = dict(
        line.split(b"=", 1)
        for line in Path(f"/proc/{d.proc.pid}/environ").read_bytes().split(b"\0")
        if b"=" in line
    )
    d.proc.send_signal(signal.SIGTERM)
    d.proc.wait(30)
    log = open(d.root / "dockerd.log", "ab")  # owned by the daemon process
    d.proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    log.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
            s.connect(str(d.socket))
            s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            if b"OK" in s.recv(4096):
                return
        time.sleep(0.05)
    raise RuntimeError("restarted dockerd did not answer /_ping")


@contextlib.contextmanager
def started_daemon(index: int):
    """scratch_dockerd, minus the ResourceWarning of the readiness probe's unclosed httpx client
    (tests/support/dockerd.py keeps it in the generator frame until the daemon is torn down)."""
    cm = scratch_dockerd(index)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        d = cm.__enter__()
        gc.collect()  # the probes that failed before the daemon answered
    first = d.proc
    try:
        yield d
    finally:
        if d.proc is not first and d.proc.poll() is None:
            # restarted by restart_daemon(): scratch_dockerd only knows the first process
            d.proc.send_signal(signal.SIGTERM)
            try:
                d.proc.wait(30)
            except subprocess.TimeoutExpired:
                d.proc.kill()
                d.proc.wait()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            cm.__exit__(None, None, None)
            gc.collect()


@pytest.fixture(scope="module")
def daemon():
    with started_daemon(10) as d:
        client = d.client()
        image = import_busybox(client)
        yield d, client, image
        client.close()


@pytest.fixture
def audit_dir():
    path = Path(tempfile.mkdtemp(prefix="hub-audit-"))
    yield path / "log"
    shutil.rmtree(path, ignore_errors=True)


def test_user_lifecycle_records_have_the_seed_fields(daemon, audit_dir, registry):
    d, client, image = daemon
    remote = f"{registry}/hub-test/busybox"

    async def main():
        async with AuditManager(audit_dir=audit_dir) as audit:
            await audit.arm("alice", NET_ID, d.url)
            client.images.get(image).tag(remote, "v1")
            await anyio.to_thread.run_sync(lambda: client.images.push(remote, "v1"))
            client.images.remove(f"{remote}:v1")
            await anyio.to_thread.run_sync(lambda: client.images.pull(remote, "v1"))
            labels = {"rediacc.hub.role": "environment"}
            with HUB_ACTIONS.creating("env"):  # as hubcontrol.environment.create does
                env = client.containers.create(image, "sleep 30", name="env", labels=labels)
                HUB_ACTIONS.container_created(env.id)
            env.remove(force=True)
            # the same label on a container the hub did not create proves nothing
            forged = client.containers.create(image, "sleep 30", name="forged", labels=labels)
            forged.remove(force=True)
            c = client.containers.run(f"{remote}:v1", "sleep 30", name="happy_pike", detach=True)
            c.stop(timeout=0)
            c.start()
            c.kill(signal="SIGKILL")
            c.wait()
            c.remove()
            return (
                await wait_for(
                    audit_dir / "alice.log",
                    lambda rs: any(r["action"] == "destroy" and r["resource"] == c.id for r in rs),
                ),
                c.id,
                env.id,
                forged.id,
            )

    got, cid, env_id, forged_id = anyio.run(main)
    for r in got:
        assert list(r) == ["ts", "user", "net_id", "type", "action", "resource", "attrs"]
        assert r["user"] == "alice" and r["net_id"] == NET_ID
        assert time.strptime(r["ts"], "%Y-%m-%dT%H:%M:%SZ")
    mine = [(r["action"], r["attrs"]) for r in got if r["resource"] == cid]
    assert [a for a, _ in mine] == [
        "create", "start", "kill", "kill", "die", "stop", "start", "kill", "die", "destroy"
    ]  # fmt: skip
    assert all(a["image"] == f"{remote}:v1" and a["name"] == "happy_pike" for _, a in mine)
    assert [a["signal"] for act, a in mine if act == "kill"] == ["15", "9", "9"]
    assert [a["exitCode"] for act, a in mine if act == "die"] == ["137", "137"]
    assert all("origin" not in a for _, a in mine)
    images = [(r["action"], r["resource"]) for r in got if r["type"] == "image"]
    assert ("push", f"{remote}:v1") in images  # push/pull: the resource is the reference
    assert ("pull", f"{remote}:v1") in images
    assert ("untag", client.images.get(f"{remote}:v1").id) in images
    hub = [r for r in got if r["resource"] == env_id]
    assert [r["action"] for r in hub] == ["create", "destroy"]
    assert all(r["attrs"]["origin"] == "hub" for r in hub)
    forged_records = [r for r in got if r["resource"] == forged_id]
    assert [r["action"] for r in forged_records] == ["create", "destroy"]
    assert all("origin" not in r["attrs"] for r in forged_records)
    line = (audit_dir / "alice.log").read_bytes().splitlines()[0]
    assert b", " not in line and b": " not in line  # compact separators, as the seed's example
    assert (audit_dir.stat().st_mode & 0o777) == 0o750
    assert ((audit_dir / "alice.log").stat().st_mode & 0o777) == 0o640


def test_hub_operation_marks_the_hubs_own_image_work(daemon, audit_dir):
    d, client, image = daemon

    async def main():
        async with AuditManager(audit_dir=audit_dir) as audit:
            await audit.arm("bob", NET_ID, d.url)
            with audit.hub_operation("bob"):
                client.images.get(image).tag("template/image", "hub")
            client.images.get(image).tag("mine/image", "user")
            client.images.remove("template/image:hub")
            client.images.remove("mine/image:user")
            return await wait_for(
                audit_dir / "bob.log",
                lambda rs: any(r["attrs"].get("name") == "mine/image:user" for r in rs),
            )

    got = anyio.run(main)
    # a new user's first stream replays the daemon's buffer: earlier tests' events are there too
    tags = {
        r["attrs"]["name"]: r["attrs"].get("origin")
        for r in got
        if r["action"] == "tag" and r["attrs"]["name"].endswith(("image:hub", "image:user"))
    }
    assert tags == {"template/image:hub": "hub", "mine/image:user": None}


def test_resume_after_hub_restart_has_no_gaps_or_duplicates(daemon, audit_dir):
    """Manager 1 records, stops (the hub restarts), the daemon keeps running with activity, and
    manager 2 resumes: every event exactly once. The activity straddles each transition."""
    d, client, image = daemon
    path = audit_dir / "carol.log"
    ids: list[str] = []

    async def first():
        async with AuditManager(audit_dir=audit_dir) as audit:
            await audit.arm("carol", NET_ID, d.url)
            ids.extend(await anyio.to_thread.run_sync(churn, client, image, 3, "a"))
            await wait_for(path, destroyed(ids))
            ids.extend(await anyio.to_thread.run_sync(churn, client, image, 2, "b"))
            # leave without waiting: the last events may or may not be written yet

    async def second():
        async with AuditManager(audit_dir=audit_dir) as audit:
            await audit.arm("carol", NET_ID, d.url)
            ids.extend(await anyio.to_thread.run_sync(churn, client, image, 2, "d"))
            return await wait_for(path, destroyed(ids))

    anyio.run(first)
    ids.extend(churn(client, image, 3, "c"))  # no stream attached
    got = anyio.run(second)
    time.sleep(0.5)  # anything late would be a duplicate
    got = records(path)
    keys = [(r["resource"], r["action"]) for r in got]
    # A new user's first stream replays the daemon's buffer, so earlier tests' events are there
    # too; this test's containers each have exactly one record per action (a duplicate or a gap
    # would break the equality).
    assert sorted(k for k in keys if k[0] in ids) == sorted(
        (i, a) for i in ids for a in ("create", "start", "die", "destroy")
    )


def test_rearm_after_daemon_restart_keeps_counts_exact(audit_dir):
    """A daemon stop ends the stream normally; re-armed after the start (even with events already
    made before arm), the new daemon's whole history is recorded exactly once."""
    with started_daemon(11) as d:
        client = d.client()
        image = import_busybox(client)
        path = audit_dir / "dave.log"
        ids: list[str] = []

        async def main():
            async with AuditManager(audit_dir=audit_dir) as audit:
                await audit.arm("dave", NET_ID + 64, d.url)
                ids.extend(await anyio.to_thread.run_sync(churn, client, image, 2, "a"))
                await wait_for(path, destroyed(ids))
                await anyio.to_thread.run_sync(restart_daemon, d)
                with anyio.fail_after(10):
                    # polled: the manager exposes no event for a stream's end
                    while audit.armed("dave"):  # noqa: ASYNC110
                        await anyio.sleep(0.05)
                # activity between the daemon start and arm() is not lost: the daemon buffers it
                c2 = d.client()
                ids.extend(await anyio.to_thread.run_sync(churn, c2, image, 1, "b"))
                await audit.arm("dave", NET_ID + 64, d.url)
                ids.extend(await anyio.to_thread.run_sync(churn, c2, image, 2, "c"))
                c2.close()
                return await wait_for(path, destroyed(ids))

        anyio.run(main)
        time.sleep(0.5)
        got = records(path)
        client.close()
    keys = [(r["resource"], r["action"]) for r in got if r["resource"] in ids]
    assert len(keys) == len(set(keys)) == 20
    assert sorted(keys) == sorted(
        (i, a) for i in ids for a in ("create", "start", "die", "destroy")
    )


def test_overflowed_daemon_buffer_is_reported_as_a_gap(daemon, audit_dir):
    """More than the daemon's 256 buffered events while no stream runs: a gap record says so."""
    d, client, image = daemon
    path = audit_dir / "erin.log"

    async def arm_once(marker):
        async with AuditManager(audit_dir=audit_dir) as audit:
            await audit.arm("erin", NET_ID, d.url)
            await anyio.to_thread.run_sync(img.tag, "erin", marker)
            got = await wait_for(
                path, lambda rs: rs and rs[-1]["attrs"].get("name") == f"erin:{marker}"
            )
            assert audit.counters.gaps == (1 if marker == "2" else 0)
            return got

    img = client.images.get(image)
    anyio.run(arm_once, "1")
    for i in range(140):  # 280 events: tag + untag each
        img.tag("flood", str(i))
        client.images.remove(f"flood:{i}")
    got = anyio.run(arm_once, "2")
    gaps = [r for r in got if r["type"] == "audit"]
    assert [g["action"] for g in gaps] == ["gap"]
    assert set(gaps[0]["attrs"]) == {"after", "before"}
    # what the daemon still had is recorded after the gap
    assert sum(r["action"] == "untag" for r in got) > 100


def test_arm_fails_clearly_when_the_daemon_does_not_answer(audit_dir):
    async def main():
        async with AuditManager(audit_dir=audit_dir) as audit:
            with pytest.raises(AuditError) as info:
                await audit.arm("frank", NET_ID, "unix:///run/hub-no-such-daemon/docker.sock")
            assert not audit.armed("frank")
            assert audit.counters.arm_failures == 1
            return info.value

    err = anyio.run(main)
    assert "did not answer" in err.user_message
    assert "/run/hub-no-such-daemon/docker.sock" in err.log_message


def test_disarm_stops_the_stream_promptly(daemon, audit_dir):
    d, _, _ = daemon

    async def main():
        async with AuditManager(audit_dir=audit_dir) as audit:
            await audit.arm("gina", NET_ID, d.url)
            start = time.monotonic()
            await audit.disarm("gina")
            return time.monotonic() - start, audit.armed("gina")

    elapsed, armed = anyio.run(main)
    assert not armed
    assert elapsed < 0.5


def test_a_failed_write_is_retried_from_the_daemons_buffer(daemon, audit_dir, monkeypatch, caplog):
    """The log cannot be written for a while (here: a directory in its place); nothing is lost
    and nothing doubled once it can."""
    from hubcontrol.audit import AuditStream

    monkeypatch.setattr(AuditStream, "WRITE_RETRY_DELAY", 0.2)
    d, client, image = daemon
    path = audit_dir / "hank.log"

    async def main():
        async with AuditManager(audit_dir=audit_dir) as audit:
            await audit.arm("hank", NET_ID, d.url)
            first = await anyio.to_thread.run_sync(churn, client, image, 1, "h")
            await wait_for(path, destroyed(first))
            path.rename(audit_dir / "hank.log.saved")
            path.mkdir()  # open(O_APPEND) now fails with EISDIR
            second = await anyio.to_thread.run_sync(churn, client, image, 2, "i")
            await anyio.sleep(0.5)  # a few failed attempts
            path.rmdir()
            (audit_dir / "hank.log.saved").rename(path)
            await wait_for(path, destroyed(second))
            assert audit.counters.write_errors >= 1  # the failure did happen
            return first + second

    ids = anyio.run(main)
    assert "audit log for hank not written" in caplog.text
    time.sleep(0.3)
    keys = sorted((r["resource"], r["action"]) for r in records(path) if r["resource"] in ids)
    assert keys == sorted((i, a) for i in ids for a in ("create", "start", "die", "destroy"))
