"""hubcontrol.doctor: each host check over fake /proc, /sys and /etc trees, then on this host."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hubcontrol import doctor
from hubcontrol.doctor import FAIL, OK, WARN

# /proc/self/status lines of this machine kind (root without CAP_SYS_RESOURCE, bit 24) and of a
# host that grants it
WITHHELD = "CapPrm:\t000001fffeffffff\nCapEff:\t000001fffeffffff\nCapBnd:\t000001fffeffffff\n"
GRANTED = "CapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n"
DROPPED = "CapPrm:\t000001fffeffffff\nCapEff:\t000001fffeffffff\nCapBnd:\t000001ffffffffff\n"


def write(root: Path, path: str, text: str = "") -> Path:
    target = root / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target


@pytest.mark.parametrize(
    ("status", "expected", "says"),
    [
        (GRANTED, OK, "effective"),
        (WITHHELD, WARN, "checkpoints of environments that run as a non-root user fail"),
        (DROPPED, WARN, "Run the hub as root with its full capabilities"),
        ("", WARN, "withholds CAP_SYS_RESOURCE"),
    ],
)
def test_cap_sys_resource(status: str, expected: str, says: str) -> None:
    check = doctor.check_cap_sys_resource(status)
    assert (check.status, check.needed_for) == (expected, "checkpoint")
    assert says in check.detail


def test_cap_sys_resource_withheld_says_why_and_who_still_checkpoints() -> None:
    check = doctor.check_cap_sys_resource(WITHHELD)
    assert "rlimits" in check.detail and "rediacc.hub.user=root" in check.detail
    assert "--userns-remap" in check.fix


def test_cap_sys_resource_withheld_is_fine_under_userns_remap() -> None:
    """--userns-remap puts environments in user namespaces root owns: CRIU reads their rlimits
    without the capability (tests/hubcontrol/test_checkpoint_userns.py proves it on this host)."""
    check = doctor.check_cap_sys_resource(WITHHELD, userns_remap=True)
    assert check.status == OK and "user namespace" in check.detail


@pytest.mark.parametrize(
    ("files", "expected", "says"),
    [
        # pure v2 with the controllers delegated to it
        ({"cgroup.controllers": "cpuset cpu io memory pids", "cgroup.procs": ""}, OK, "v2"),
        # v2 in a cgroup namespace that was not given memory and pids
        (
            {"cgroup.controllers": "cpu io", "cgroup.procs": ""},
            FAIL,
            "without the memory, pids controller(s)",
        ),
        # hybrid, as this machine kind
        (
            {
                "cpu/cgroup.procs": "",
                "memory/cgroup.procs": "",
                "pids/cgroup.procs": "",
                "unified/cgroup.procs": "",
            },
            OK,
            "hybrid",
        ),
        # hybrid without the v1 pids hierarchy: that limit is not enforced
        (
            {"cpu/cgroup.procs": "", "memory/cgroup.procs": "", "unified/cgroup.procs": ""},
            WARN,
            "pids hierarchy",
        ),
        # pure v1: the daemon-isolation rules have no v2 group to match
        (
            {"cpu/cgroup.procs": "", "memory/cgroup.procs": "", "pids/cgroup.procs": ""},
            FAIL,
            "no cgroup v2 hierarchy",
        ),
    ],
)
def test_cgroups(tmp_path: Path, files: dict[str, str], expected: str, says: str) -> None:
    for name, text in files.items():
        write(tmp_path, f"sys/fs/cgroup/{name}", text)
    check = doctor.check_cgroups(tmp_path)
    assert check.status == expected, check
    assert says in check.detail
    assert (check.fix != "") == (expected != OK)


@pytest.mark.parametrize("executable", [True, False])
def test_tini(tmp_path: Path, executable: bool) -> None:
    assert doctor.check_tini(tmp_path).status == FAIL  # missing
    tini = write(tmp_path, "usr/bin/tini-static", "#!/bin/sh\n")
    tini.chmod(0o755 if executable else 0o644)
    check = doctor.check_tini(tmp_path)
    assert check.status == (OK if executable else FAIL)
    if not executable:
        assert check.fix == "apt-get install -y tini"


@pytest.mark.parametrize(
    ("content", "checkpoint", "expected"),
    [
        ("tcp-established\n", True, OK),
        ("log-file /x\n  tcp-established  \n", None, OK),
        ("log-file /x\n", True, FAIL),
        ("log-file /x\n", None, WARN),
        (None, True, FAIL),
        ("# tcp-established\n", True, FAIL),
    ],
)
def test_runc_conf(tmp_path: Path, content: str | None, checkpoint: bool | None, expected: str):
    if content is not None:
        write(tmp_path, "etc/criu/runc.conf", content)
    check = doctor.check_runc_conf(tmp_path, checkpoint)
    assert check.status == expected
    if expected != OK:
        assert "tcp-established" in check.fix and check.fix.endswith("/etc/criu/runc.conf")


@pytest.mark.parametrize(
    ("value", "checkpoint", "expected"),
    [("1", True, OK), ("2", True, OK), ("0", True, FAIL), ("0", None, WARN), (None, True, WARN)],
)
def test_io_uring(tmp_path: Path, value: str | None, checkpoint: bool | None, expected: str):
    if value is not None:
        write(tmp_path, "proc/sys/kernel/io_uring_disabled", value + "\n")
    check = doctor.check_io_uring(tmp_path, checkpoint)
    assert check.status == expected
    if value == "0":
        assert "sysctl -w kernel.io_uring_disabled=1" in check.fix


@pytest.mark.parametrize(
    ("output", "checkpoint", "expected"),
    [
        ("Version: 4.2.1\n", True, OK),
        ("Version: 3.17.1\n", True, WARN),
        (None, True, FAIL),
        (None, None, WARN),
    ],
)
def test_criu(output: str | None, checkpoint: bool | None, expected: str) -> None:
    check = doctor.check_criu(output, checkpoint)
    assert check.status == expected
    if expected != OK:
        assert check.fix == "hub install --setup-host"
    if checkpoint is None and expected != OK:
        assert "needed only with --checkpoint" in check.detail


@pytest.mark.parametrize(
    ("v4", "v6", "expected", "says"),
    [
        ("iptables v1.8.9 (nf_tables)", "ip6tables v1.8.9 (nf_tables)", OK, "nf_tables"),
        ("iptables v1.8.9 (legacy)", "ip6tables v1.8.9 (legacy)", WARN, "legacy backend"),
        ("iptables v1.8.9 (nf_tables)", "ip6tables v1.8.9 (legacy)", WARN, "one backend"),
        (None, "ip6tables v1.8.9 (nf_tables)", FAIL, "iptables not found"),
        (None, None, FAIL, "iptables and ip6tables not found"),
    ],
)
def test_iptables(v4: str | None, v6: str | None, expected: str, says: str) -> None:
    check = doctor.check_iptables(v4, v6)
    assert (check.status, says in check.detail) == (expected, True), check


@pytest.mark.parametrize(
    ("output", "expected", "shown"),
    [
        ("Docker version 20.10.24+dfsg1, build 5d6db84", OK, "dockerd 20.10.24+dfsg1"),
        ("Docker version 27.3.1, build ce12230", OK, "dockerd 27.3.1"),
        ("Docker version 19.03.15, build 99e3ed8", FAIL, "older than 20.10"),
        ("something else", WARN, "cannot read the version"),
        (None, FAIL, "not found"),
    ],
)
def test_dockerd(output: str | None, expected: str, shown: str) -> None:
    check = doctor.check_dockerd(output)
    assert check.status == expected and shown in check.detail, check


@pytest.mark.parametrize(
    ("filesystem", "tool", "expected"),
    [("btrfs", True, OK), ("btrfs", False, FAIL), ("xfs", False, OK), ("ext2/ext3", True, WARN)],
)
def test_workspace_filesystem(filesystem: str, tool: bool, expected: str) -> None:
    check = doctor.check_workspace_filesystem(Path("/srv/ws"), filesystem, tool)
    assert (check.status, check.needed_for) == (expected, "seeds")
    if expected == WARN:
        assert "loads the template image" in check.detail and "mkfs.btrfs" in check.fix


def fake_host(root: Path, bindir: Path) -> None:
    """A host with everything the hub needs: files under root, programs in bindir."""
    for name, out in (
        ("dockerd", "Docker version 20.10.24+dfsg1, build 5d6db84"),
        ("containerd", "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1"),
        ("iptables", "iptables v1.8.9 (nf_tables)"),
        ("ip6tables", "ip6tables v1.8.9 (nf_tables)"),
        ("btrfs", "btrfs-progs v6.2"),
    ):
        write(bindir, name, f"#!/bin/sh\necho '{out}'\n").chmod(0o755)
    write(root, "opt/rediacc/criu/bin/criu", "#!/bin/sh\necho 'Version: 4.2.1'\n").chmod(0o755)
    write(root, "usr/bin/tini-static", "").chmod(0o755)
    write(root, "etc/criu/runc.conf", "tcp-established\n")
    write(root, "proc/sys/kernel/io_uring_disabled", "1\n")
    write(root, "proc/self/status", GRANTED)
    write(root, "sys/fs/cgroup/cgroup.controllers", "cpu memory pids")
    write(root, "sys/fs/cgroup/cgroup.procs")


def test_run_checks_on_a_fake_host_that_has_everything(tmp_path: Path) -> None:
    root, bindir = tmp_path / "root", tmp_path / "bin"
    fake_host(root, bindir)
    checks = doctor.run_checks(workspace_dir=tmp_path, checkpoint=True, root=root, path=str(bindir))
    names = [c.name for c in checks]
    assert names == [
        "dockerd",
        "containerd",
        "tini-static",
        "iptables",
        "cgroups",
        "BTRFS",
        "CRIU",
        "runc.conf",
        "io_uring",
        "CAP_SYS_RESOURCE",
    ]
    assert all(c.status == OK for c in checks if c.name != "BTRFS"), checks
    assert doctor.failures(checks) == []


def test_run_checks_names_each_missing_piece(tmp_path: Path) -> None:
    root, bindir = tmp_path / "root", tmp_path / "bin"
    fake_host(root, bindir)
    for gone in (
        bindir / "containerd",
        bindir / "iptables",
        root / "usr/bin/tini-static",
        root / "etc/criu/runc.conf",
    ):
        gone.unlink()
    checks = doctor.run_checks(workspace_dir=tmp_path, checkpoint=True, root=root, path=str(bindir))
    assert [c.name for c in doctor.failures(checks)] == [
        "containerd",
        "tini-static",
        "iptables",
        "runc.conf",
    ]


def test_a_system_containerd_is_named_and_each_user_keeps_their_own(tmp_path: Path) -> None:
    root, bindir = tmp_path / "root", tmp_path / "bin"
    fake_host(root, bindir)
    write(root, "run/containerd/containerd.sock")
    checks = doctor.run_checks(workspace_dir=tmp_path, checkpoint=True, root=root, path=str(bindir))
    check = next(c for c in checks if c.name == "containerd")
    assert check.status == OK
    assert check.detail.startswith("containerd 1.6.20~ds1; a system containerd runs")
    assert "each user's daemon still gets its own" in check.detail
    missing = doctor.check_containerd(None, True)
    assert missing.status == FAIL and "apt-get install -y containerd" in missing.fix


def test_checkpoint_checks_are_left_out_when_checkpointing_is_off(tmp_path: Path) -> None:
    root, bindir = tmp_path / "root", tmp_path / "bin"
    fake_host(root, bindir)
    (root / "opt/rediacc/criu/bin/criu").unlink()
    checks = doctor.run_checks(
        workspace_dir=tmp_path, checkpoint=False, root=root, path=str(bindir)
    )
    assert "CRIU" not in [c.name for c in checks]
    unknown = doctor.run_checks(workspace_dir=tmp_path, root=root, path=str(bindir))
    assert [(c.name, c.status) for c in unknown if c.needed_for == "checkpoint"][0] == (
        "CRIU",
        WARN,
    )


def _fs(path: Path) -> str:
    return subprocess.run(
        ["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True
    ).stdout.strip()


def test_this_host(tmp_path: Path) -> None:
    """The real checks on this machine kind (Debian 12, hybrid cgroups, Firecracker VM set up by
    scripts/setup-host.sh): everything the hub needs is there, and CAP_SYS_RESOURCE is not."""
    checks = {c.name: c for c in doctor.run_checks(workspace_dir=tmp_path, checkpoint=True)}
    assert doctor.failures(checks.values()) == []
    for name in (
        "dockerd", "containerd", "tini-static", "iptables", "cgroups", "CRIU", "runc.conf",
        "io_uring",
    ):  # fmt: skip
        assert checks[name].status == OK, checks[name]
    assert "hybrid" in checks["cgroups"].detail
    assert checks["CRIU"].detail == "/opt/rediacc/criu/bin/criu 4.2.1"
    cap = checks["CAP_SYS_RESOURCE"]
    assert cap.status == WARN and "withholds CAP_SYS_RESOURCE even from root" in cap.detail
    expected = OK if _fs(tmp_path) in ("btrfs", "xfs") else WARN
    assert checks["BTRFS"].status == expected
