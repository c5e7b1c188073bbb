"""The pure parts of ``--userns-remap`` (hubcontrol.userns): ranges, /etc/subuid checks, the
CRIU wrapper's restore step (run for real against a directory made as containerd makes it)."""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
from pathlib import Path

import pytest

from hubcontrol import criupages, storage, userns
from hubcontrol.checkpoint import non_root_checkpoints
from hubcontrol.errors import DaemonError
from hubcontrol.netids import MAX_USERS, net_id_for_index
from hubcontrol.supervisor import remapped_exec_roots
from hubcontrol.userns import IdRange


@pytest.mark.parametrize(
    ("index", "start"),
    [(0, 1 << 30), (1, (1 << 30) + 65536), (MAX_USERS - 1, (1 << 30) + (MAX_USERS - 1) * 65536)],
)
def test_each_network_id_has_its_own_range_above_useradds(index, start):
    ids = userns.id_range(net_id_for_index(index))
    assert ids == IdRange(start) and ids.start > 600100000 and ids.end < 2**32 - 1
    assert ids.host_id(1000) == start + 1000


def test_ranges_of_different_users_never_overlap():
    ranges = [userns.id_range(net_id_for_index(i)) for i in range(MAX_USERS)]
    assert all(a.end + 1 == b.start for a, b in zip(ranges, ranges[1:], strict=False))


@pytest.mark.parametrize("inner", [-1, 65536])
def test_ids_outside_the_namespace_are_refused(inner):
    with pytest.raises(ValueError, match="outside the namespace"):
        IdRange(1 << 30).host_id(inner)


def test_a_network_id_outside_the_user_range_has_no_range():
    with pytest.raises(ValueError):
        userns.id_range(12345)


WANT = IdRange(1 << 30)
NAME = "rdh-ns32768"


@pytest.mark.parametrize(
    ("text", "present", "problem"),
    [
        ("", False, None),
        (f"{NAME}:{WANT.start}:65536\n", True, None),
        (f"alice:100000:65536\n{NAME}:{WANT.start}:65536\n", True, None),
        (f"{NAME}:200000:65536\n", False, f"{NAME} has 200000-265535, not the hub's"),
        (f"{NAME}:{WANT.start}:65536\n{NAME}:5:1\n", True, "has 5-5, not the hub's"),
        (f"bob:{WANT.start + 1000}:10\n", False, "bob has"),
        ("# comment\nnot a line\n", False, None),
    ],
)
def test_subid_entries_that_disagree_are_named(text, present, problem):
    ok, problems = userns.subid_problems(text, NAME, WANT, "/etc/subuid")
    assert ok is present
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0] and "/etc/subuid" in problems[0]


@pytest.mark.parametrize(
    ("has_cap", "remap", "ok", "said"),
    [
        (True, False, True, "holds CAP_SYS_RESOURCE"),
        (True, True, True, "holds CAP_SYS_RESOURCE"),
        (False, True, True, "--userns-remap puts each user's containers"),
        (False, False, False, "run the hub with --userns-remap"),
    ],
)
def test_non_root_checkpoints_explained(has_cap, remap, ok, said):
    can, text = non_root_checkpoints(has_cap, remap)
    assert can is ok and said in text


def _run_prelude(tmp_path: Path, argv: list[str]) -> None:
    """Run CRIU_RESTORE_PRELUDE as runc runs the wrapper: as the child of a process whose
    argv is runc's (a shell script named by those arguments)."""
    script = tmp_path / "prelude.sh"
    script.write_text("#!/bin/sh\n" + criupages.IMAGE_PATH + userns.CRIU_RESTORE_PRELUDE)
    script.chmod(0o755)
    runc = ["sh", "-c", f"{script} swrk 3; exit 0", *argv]
    subprocess.run(runc, check=True, timeout=10)


def test_the_restore_step_opens_containerds_copy_to_search_only(tmp_path):
    copy = tmp_path / "tmp" / "ctrd-checkpoint123"
    copy.mkdir(parents=True, mode=0o700)
    (tmp_path / "tmp").chmod(0o700)
    _run_prelude(tmp_path, ["runc", "restore", "--image-path", str(copy), "--work-path", "/x"])
    assert stat.S_IMODE(copy.stat().st_mode) == 0o711
    assert stat.S_IMODE((tmp_path / "tmp").stat().st_mode) == 0o700  # the parent stays closed


@pytest.mark.parametrize("name", ["checkpoint", "ctd-checkpoint9", "link"])
def test_the_restore_step_leaves_other_directories_alone(tmp_path, name):
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    path = tmp_path / name
    if name == "link":
        path = tmp_path / "ctrd-checkpoint-link"
        path.symlink_to(target)
    else:
        path.mkdir(mode=0o700)
    _run_prelude(tmp_path, ["runc", "restore", "--image-path", str(path)])
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(path).st_mode) in (0o700, 0o777)


@pytest.mark.parametrize(("root", "want"), [(None, (0, 0o700)), (1 << 30, (1 << 30, 0o710))])
def test_daemon_dirs_get_the_namespace_roots_group_only_when_remapped(root, want):
    assert storage.remap_modes(root) == want


def test_the_workspace_dir_is_traversable_only_when_remapped(tmp_path):
    ws = tmp_path / "ws"
    storage.secure_workspace_dir(ws, traversable=True)
    assert stat.S_IMODE(ws.stat().st_mode) == 0o711
    storage.secure_workspace_dir(ws, traversable=None)  # seeds: keep the hub's choice
    assert stat.S_IMODE(ws.stat().st_mode) == 0o711
    storage.secure_workspace_dir(ws)
    assert stat.S_IMODE(ws.stat().st_mode) == 0o700
    ws.chmod(0o755)
    storage.secure_workspace_dir(ws, traversable=None)  # anything else: back to root-only
    assert stat.S_IMODE(ws.stat().st_mode) == 0o700


def test_remapped_exec_roots_are_dockerds_siblings_of_that_id_only(tmp_path):
    for name in ("32768", "32768.1073741824.1073741824", "327680.1.1", "32768.x.1", "32832.1.1"):
        (tmp_path / name).mkdir()
    (tmp_path / "32768.2.2").symlink_to(tmp_path / "32832.1.1")
    assert remapped_exec_roots(tmp_path, 32768) == [tmp_path / "32768.1073741824.1073741824"]
    assert remapped_exec_roots(tmp_path / "missing", 32768) == []


@pytest.mark.docker  # root: it adds and removes a real account and /etc/subuid, /etc/subgid lines
def test_an_account_is_made_once_removed_again_and_refused_over_a_foreign_entry():
    net_id = net_id_for_index(MAX_USERS - 1)  # the last index: no test run gets that far
    name, want = userns.account_name(net_id), userns.id_range(net_id)
    original = userns.SUBUID.read_text()

    def lines() -> list[str]:
        return [
            line
            for path in (userns.SUBUID, userns.SUBGID)
            for line in path.read_text().splitlines()
            if line.startswith(f"{name}:")
        ]

    try:
        # another name holding one of its ids: refused before anything is made
        userns.SUBUID.write_text(original + f"intruder:{want.start + 5}:1\n")
        with pytest.raises(DaemonError) as err:
            userns.ensure_account(net_id)
        assert "/etc/subuid: intruder has" in err.value.log_message
        assert "give intruder other ids" in err.value.log_message
        with pytest.raises(KeyError):
            pwd.getpwnam(name)
        userns.SUBUID.write_text(original)

        assert userns.ensure_account(net_id) == name
        assert userns.ensure_account(net_id) == name  # idempotent: nothing added twice
        assert lines() == [f"{name}:{want.start}:65536"] * 2
        assert pwd.getpwnam(name).pw_shell == "/usr/sbin/nologin"
        assert grp.getgrnam(name)  # dockerd's --userns-remap looks the group up too

        assert userns.remove_account(net_id) is True
        assert userns.remove_account(net_id) is False
        assert lines() == []
        with pytest.raises(KeyError):
            pwd.getpwnam(name)

        # an account someone else made under that name: never adopted, never removed
        subprocess.run(["useradd", "--system", "--comment", "Rita Dh-ns, ops", name], check=True)
        with pytest.raises(DaemonError) as err:
            userns.ensure_account(net_id)
        assert f"the account {name} exists but the hub did not make it" in err.value.log_message
        assert lines() == []  # no ids given to it either
        assert userns.remove_account(net_id) is False
        assert pwd.getpwnam(name).pw_gecos == "Rita Dh-ns, ops"
    finally:
        if "intruder" in userns.SUBUID.read_text():
            userns.SUBUID.write_text(original)
        userns.remove_account(net_id)
        subprocess.run(["userdel", name], capture_output=True)  # the foreign one, if still there


# measured on this host: another daemon's CRIU restore was running while the hub started a
# remapped environment
YARD_ERROR = (
    '400 Client Error: Bad Request ("failed to create shim task: OCI runtime create failed: runc '
    "create failed: unable to start container process: error during container init: error "
    'mounting "cgroup" to rootfs at "/sys/fs/cgroup": stat /tmp/x/.rediacc/docker/data/'
    "containerd/daemon/io.containerd.runtime.v2.task/moby/1282/.criu.cgyard.aYeiaZ/hugetlb: "
    'permission denied: unknown")'
)


@pytest.mark.parametrize(
    ("error", "race"),
    [
        (YARD_ERROR, True),
        (YARD_ERROR.replace(".criu.cgyard.aYeiaZ", "other"), False),
        (YARD_ERROR.replace("permission denied", "no such file or directory"), False),
        ("driver failed programming external connectivity: port is already allocated", False),
    ],
)
def test_only_another_crius_cgroup_yard_is_retried(error, race):
    assert userns.cgroup_yard_race(error) is race
