"""Pure and host-local parts of the checkpointer: three strikes, fingerprints, CRIU log lines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hubcontrol.checkpoint import (
    MAX_FAILURES,
    Checkpointer,
    CheckpointHealth,
    CriuCheckpointer,
    HealthStore,
    ProcessMark,
    RecreateCheckpointer,
    _docker_root,
    after_failure,
    after_success,
    clean_containerd_copies,
    compare_fingerprints,
    criu_log_excerpt,
    criu_log_path,
    host_can_dump_other_users,
    io_uring_open_to_containers,
    make_checkpointer,
    process_token,
    read_criu_log,
)


def test_three_consecutive_failures_disable() -> None:
    h = CheckpointHealth()
    for n in range(1, MAX_FAILURES):
        h = after_failure(h, f"boom {n}", now=float(n))
        assert (h.failures, h.disabled) == (n, False)
    h = after_failure(h, "boom 3", now=3.0)
    assert (h.failures, h.disabled, h.last_error, h.last_failure_at) == (3, True, "boom 3", 3.0)


def test_success_breaks_the_run_but_does_not_re_enable() -> None:
    h = after_failure(after_failure(CheckpointHealth(), "a", 1.0), "b", 2.0)
    h = after_success(h)
    assert h.failures == 0 and not h.disabled
    h = after_failure(after_failure(h, "c", 3.0), "d", 4.0)
    assert not h.disabled  # 2 in a row after the success, not 4
    disabled = CheckpointHealth(failures=3, disabled=True)
    assert after_success(disabled).disabled  # only an operator's reset re-enables


def test_health_store_round_trip_and_reset(tmp_path: Path) -> None:
    store = HealthStore(tmp_path)
    assert store.get("alice") == CheckpointHealth()
    store.put("alice", CheckpointHealth(failures=3, disabled=True, last_error="x"))
    assert HealthStore(tmp_path).get("alice").disabled  # survives a hub restart
    cp = CriuCheckpointer(tmp_path)
    assert cp.health("alice").failures == 3
    assert not cp.reset("alice").disabled
    assert cp.health("alice") == CheckpointHealth()
    (tmp_path / "checkpoint" / "bob.json").write_text("{not json")
    assert store.get("bob") == CheckpointHealth()  # unreadable: start afresh, never crash
    with pytest.raises(ValueError):
        store.get("../etc")


def test_make_checkpointer_by_name(tmp_path: Path) -> None:
    assert isinstance(make_checkpointer("criu", tmp_path), CriuCheckpointer)
    assert isinstance(make_checkpointer("recreate", tmp_path), RecreateCheckpointer)
    with pytest.raises(ValueError, match="unknown checkpointer 'zfs'; known: criu, recreate"):
        make_checkpointer("zfs", tmp_path)


def test_subclasses_do_not_replace_registered_checkpointers(tmp_path: Path) -> None:
    class Tweaked(CriuCheckpointer):  # inherits name "criu"; e.g. a test double
        pass

    assert type(make_checkpointer("criu", tmp_path)) is CriuCheckpointer
    with pytest.raises(TypeError, match="name 'criu' is taken by CriuCheckpointer"):

        class Impostor(CriuCheckpointer):
            name = "criu"


def test_subclass_without_name_is_refused() -> None:
    with pytest.raises(TypeError, match="must set a class attribute `name`"):

        class Nameless(Checkpointer):
            async def checkpoint(self, target): ...

            async def restore(self, target): ...


def _mark(nspid: int, token: str, comm: str = "sh", started: int = 100) -> ProcessMark:
    return ProcessMark(nspid, comm, token, started)


RESTORED_BY = 500  # ticks: processes started after this were forked after the restore


@pytest.mark.parametrize(
    ("before", "after", "ok", "detail"),
    [
        (
            {1: _mark(1, "a"), 7: _mark(7, "b")},
            {1: _mark(1, "a"), 7: _mark(7, "b")},
            True,
            "2 processes restored",
        ),
        # new processes the restored tree started since are fine
        (
            {1: _mark(1, "a")},
            {1: _mark(1, "a"), 9: _mark(9, "z", "sleep", 900)},
            True,
            "1 processes",
        ),
        # a recorded short-lived process exited, and a new one got its PID after the restore
        (
            {1: _mark(1, "a"), 7: _mark(7, "b", "sleep")},
            {1: _mark(1, "a"), 7: _mark(7, "n", "sleep", 600)},
            True,
            "1 processes restored with their memory (1 exited since)",
        ),
        ({1: _mark(1, "a"), 7: _mark(7, "b")}, {1: _mark(1, "a")}, True, "(1 exited since)"),
        # a fresh start: same PIDs, new memory
        (
            {1: _mark(1, "a", "tini"), 7: _mark(7, "b")},
            {1: _mark(1, "x", "tini"), 7: _mark(7, "y")},
            False,
            "process 1 (tini), 7 (sh) was started afresh",
        ),
        # a fresh start slower than the restore call is still caught by PID 1
        (
            {1: _mark(1, "a", "tini")},
            {1: _mark(1, "x", "tini", 900)},
            False,
            "1 (tini) was started",
        ),
        # within one tick of the answer counts as restored
        (
            {1: _mark(1, "a"), 7: _mark(7, "b")},
            {1: _mark(1, "a"), 7: _mark(7, "c", "sh", 501)},
            False,
            "7 (sh) was started afresh",
        ),
        ({}, {1: _mark(1, "a")}, False, "PID 1 was not recorded"),
        ({1: _mark(1, "a")}, {}, False, "PID 1 is missing"),
    ],
)
def test_compare_fingerprints(before, after, ok: bool, detail: str) -> None:
    result, text = compare_fingerprints(before, after, RESTORED_BY)
    assert result is ok
    assert detail in text


@pytest.mark.docker  # reading another process's memory needs root
def test_process_token_is_stable_per_exec_and_new_for_each_exec() -> None:
    a = subprocess.Popen(["sleep", "30"])
    b = subprocess.Popen(["sleep", "30"])
    try:
        assert process_token(a.pid) == process_token(a.pid)
        assert process_token(a.pid) != process_token(b.pid)  # same binary, same args, new exec
        assert process_token(os.getpid()) != process_token(a.pid)
    finally:
        for p in (a, b):
            p.kill()
            p.wait()


@pytest.mark.parametrize(
    ("message", "path"),
    [
        (
            "runc did not terminate successfully: exit status 1: criu failed: type NOTIFY errno 0 "
            "path= /run/x/io.containerd.runtime.v2.task/moby/abc/criu-dump.log: unknown",
            "/run/x/io.containerd.runtime.v2.task/moby/abc/criu-dump.log",
        ),
        (
            "OCI runtime restore failed: criu failed: type RESTORE errno 0\nlog file: "
            "/run/x/moby/abc/work/restore.log: unknown",
            "/run/x/moby/abc/work/restore.log",
        ),
        ("checkpoint with name cp1 already exists", None),
        ("", None),
    ],
)
def test_criu_log_path(message: str, path: str | None) -> None:
    assert criu_log_path(message) == path


def test_criu_log_excerpt_shows_the_error_and_what_led_to_it(tmp_path: Path) -> None:
    text = "\n".join(
        [f"(00.0{i}) info {i}" for i in range(50)]
        + ["(00.1) Error (criu/files-reg.c:1000): Can't dump ghost file /tmp/big"]
        + ["(00.2) info after"]
    )
    excerpt = criu_log_excerpt(text).splitlines()
    assert excerpt[-1] == "(00.1) Error (criu/files-reg.c:1000): Can't dump ghost file /tmp/big"
    assert excerpt[0] == "(00.042) info 42"  # the lines leading to it
    assert criu_log_excerpt("a\nb\nc", lines=2) == "b\nc"
    log = tmp_path / "criu-dump.log"
    log.write_text(text)
    assert "Can't dump ghost file" in read_criu_log(f"criu failed path= {log}: unknown")
    assert "removed with the task" in read_criu_log("path= /nonexistent/x.log")


def test_clean_containerd_copies(tmp_path: Path) -> None:
    (tmp_path / "ctrd-checkpoint123").mkdir()
    (tmp_path / "ctrd-checkpoint123" / "pages-1.img").write_bytes(b"x" * 10)
    (tmp_path / "other").mkdir()
    assert clean_containerd_copies(tmp_path) == 1
    assert sorted(os.listdir(tmp_path)) == ["other"]
    assert clean_containerd_copies(tmp_path / "missing") == 0
    assert clean_containerd_copies(None) == 0


def test_module_never_imports_the_data_plane() -> None:
    # rich is left out: httpx's own CLI module imports it, whoever imports httpx
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, hubcontrol.checkpoint, hubcontrol.idle; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('mitmproxy', 'typer', 'hubproxy', 'hubcli')))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("capeff", "can"),
    [
        ("000001fffeffffff", False),
        ("000001ffffffffff", True),
        ("0000000001000000", True),
        ("0000000000000000", False),
    ],
)
def test_host_can_dump_other_users(capeff: str, can: bool) -> None:
    status = f"Name:\tpython\nCapInh:\t0000000000000000\nCapEff:\t{capeff}\n"
    assert host_can_dump_other_users(status) is can
    assert host_can_dump_other_users("Name:\tx\n") is False


@pytest.mark.parametrize(("value", "open_"), [("0\n", True), ("1\n", False), ("2\n", False)])
def test_io_uring_open_to_containers(tmp_path: Path, value: str, open_: bool) -> None:
    sysctl = tmp_path / "io_uring_disabled"
    sysctl.write_text(value)
    assert io_uring_open_to_containers(sysctl) is open_
    assert io_uring_open_to_containers(tmp_path / "missing") is False


class _Container:
    def __init__(self, cid: str, hostname_path: str | None) -> None:
        self.id = cid
        self.name = "env"
        self.attrs = {"HostnamePath": hostname_path}


class _Client:
    def __init__(self) -> None:
        self.asked = 0

    def info(self) -> dict[str, str]:
        self.asked += 1
        return {"DockerRootDir": "/from/info"}


@pytest.mark.parametrize(
    ("hostname_path", "root", "asked"),
    [
        (
            "/ws/u-docker/.rediacc/docker/data/containers/c0ffee/hostname",
            "/ws/u-docker/.rediacc/docker/data",
            0,
        ),
        (
            "/data/1073741824.1073741824/containers/c0ffee/hostname",
            "/data/1073741824.1073741824",
            0,
        ),
        (None, "/from/info", 1),
        ("/data/containers/other/hostname", "/from/info", 1),  # not this container's
        ("/data/volumes/c0ffee/hostname", "/from/info", 1),
        ("relative/containers/c0ffee/hostname", "/from/info", 1),
    ],
)
def test_the_docker_root_comes_from_the_containers_own_files(hostname_path, root, asked):
    """The restore links the checkpoint dir into <DockerRootDir>/containers/<id>; the path dockerd
    reports for the container's hostname file names that root without a round trip to /info."""
    client = _Client()
    assert _docker_root(client, _Container("c0ffee", hostname_path)) == Path(root)
    assert client.asked == asked
