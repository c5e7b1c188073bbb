"""The one mountinfo parser (hubcontrol.mounts): fields, optional propagation fields and the
kernel's octal escapes, and mounts at paths with spaces and newlines found and unmounted for real.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hubcontrol import du, mounts, storage
from hubcontrol.mounts import MountInfo, parse_mountinfo_line

PROC = "22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw"


def entry(**fields: object) -> MountInfo:
    base: dict[str, object] = dict(
        mount_id=22,
        parent_id=1,
        device="0:21",
        root="/",
        mount_point="/proc",
        options=frozenset({"rw", "nosuid", "nodev", "noexec", "relatime"}),
        optional=(),
        fstype="proc",
        source="proc",
        super_options=frozenset({"rw"}),
    )
    return MountInfo(**{**base, **fields})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (PROC, entry()),
        (PROC.encode(), entry()),
        # proc(5)'s own example: one optional field, a bind mount's root
        (
            "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue",
            entry(
                mount_id=36,
                parent_id=35,
                device="98:0",
                root="/mnt1",
                mount_point="/mnt2",
                options=frozenset({"rw", "noatime"}),
                optional=("master:1",),
                fstype="ext3",
                source="/dev/root",
                super_options=frozenset({"rw", "errors=continue"}),
            ),
        ),
        (
            "40 22 0:5 / /x rw shared:5 master:3 propagate_from:2 unbindable - tmpfs tmpfs rw",
            entry(
                mount_id=40,
                parent_id=22,
                device="0:5",
                mount_point="/x",
                options=frozenset({"rw"}),
                optional=("shared:5", "master:3", "propagate_from:2", "unbindable"),
                fstype="tmpfs",
                source="tmpfs",
            ),
        ),
        # space, tab, newline and backslash are written as octal escapes
        (PROC.replace(" /proc ", r" /my\040dir "), entry(mount_point="/my dir")),
        (PROC.replace(" /proc ", r" /a\011b\012c "), entry(mount_point="/a\tb\nc")),
        (PROC.replace(" /proc ", r" /back\134slash "), entry(mount_point="/back\\slash")),
        # an escaped backslash followed by digits is a backslash and digits, not a second escape
        (PROC.replace(" /proc ", r" /x\134040 "), entry(mount_point="/x\\040")),
        (PROC.replace(" / /proc ", r" /dir\040a /mnt\040b "), entry(root="/dir a", mount_point="/mnt b")),
        (PROC.replace("- proc proc", r"- fuse.sshfs me@host:/my\040files"), entry(fstype="fuse.sshfs", source="me@host:/my files")),
        # bytes that are not UTF-8 are kept the way os.fsdecode keeps them, so they round-trip
        (PROC.encode().replace(b" /proc ", b" /caf\xe9 "), entry(mount_point=os.fsdecode(b"/caf\xe9"))),
    ],
)  # fmt: skip
def test_a_mountinfo_line_parses(line: str | bytes, expected: MountInfo) -> None:
    assert parse_mountinfo_line(line) == expected


@pytest.mark.parametrize(
    "line",
    ["", "22 1 0:21 / /proc rw", "x 1 0:21 / /proc rw - proc proc rw", "22 1 0:21 / /p rw - proc"],
)
def test_a_line_that_is_not_mountinfo_is_refused_by_name(line: str) -> None:
    with pytest.raises(ValueError, match="not a /proc/self/mountinfo line"):
        parse_mountinfo_line(line)


def test_this_namespace_parses_whole() -> None:
    found = mounts.mountinfo()
    assert any(m.mount_point == "/" for m in found)
    assert any(m.mount_point == "/proc" and m.fstype == "proc" for m in found)


@pytest.mark.docker  # root, to mount
def test_mounts_at_paths_with_spaces_and_newlines_are_found_and_unmounted(tmp_path: Path) -> None:
    """What gc and storage rely on: a user's directory named with a space or a newline, mounted
    below a tree being removed, is found (the escapes decoded) and unmounted before deletion."""
    odd = tmp_path / "my dir" / "new\nline"
    plain = tmp_path / "my dir" / "plain"
    for point in (odd, plain):
        point.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(point)], check=True)
    try:
        assert mounts.mounts_under(tmp_path / "my dir") == sorted([str(plain), str(odd)])[::-1]
        assert "rw" in (mounts.mount_options(str(odd)) or set())
        assert du._mounts_under(str(tmp_path)) == {str(odd), str(plain)}
        storage.unmount_under(tmp_path / "my dir")
        assert mounts.mounts_under(tmp_path) == []
    finally:
        for point in (odd, plain):
            subprocess.run(["umount", "-l", str(point)], capture_output=True)
