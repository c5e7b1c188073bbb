"""Bind pins: the pure bookkeeping (labels, which pins containers refer to) and the syscalls
underneath (openat2 below the workspace, bind by descriptor, atomic publication), on real
directories and real mounts."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from hubcontrol import mounts
from hubcontrol.policysocket import pins

ID1, ID2 = "a" * 32, "b" * 32
BINDS = "/run/rediacc/hub/32768/binds"


@pytest.mark.parametrize(
    ("rel", "ok"),
    [
        ("proj", "proj"),
        ("proj/sub/", "proj/sub"),
        ("./proj//sub", "proj/sub"),
        ("", None),
        (".", None),
        ("/etc", None),
        ("proj/../..", None),
        ("..", None),
        (".checkpoint", None),
        (".checkpoint/x", None),
        ("proj/.checkpoint", "proj/.checkpoint"),  # only the workspace's own is the hub's
        ("a\0b", None),
    ],
)
def test_check_relpath(rel, ok):
    if ok is None:
        with pytest.raises(ValueError):
            pins.check_relpath(rel)
    else:
        assert pins.check_relpath(rel) == ok


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        (json.dumps({ID1: {"path": "proj", "ro": True}}), {ID1: ("proj", True)}),
        (json.dumps({ID1: {"path": "proj"}}), {ID1: ("proj", False)}),
        (json.dumps({ID1: {"path": "p", "ro": "yes"}}), {ID1: ("p", False)}),  # only true is ro
        (json.dumps({"x": {"path": "proj"}, ID2: {"path": 3}}), {}),  # not an id, not a path
        (json.dumps(["proj"]), {}),
        ("{not json", {}),
        (None, {}),
    ],
)
def test_parse_label(value, parsed):
    assert pins.parse_label(value) == parsed


def test_wanted_takes_descriptions_only_from_the_container_itself():
    """--volumes-from copies a bind but not the label: a pin is described only by a label on a
    container that binds it, and a label naming a pin it does not bind is ignored."""
    containers = [
        {
            "Labels": {pins.LABEL: json.dumps({ID1: {"path": "proj", "ro": False}})},
            "Mounts": [{"Source": f"{BINDS}/{ID1}"}, {"Source": "/var/lib/docker/volumes/v"}],
        },
        {"Labels": {}, "Mounts": [{"Source": f"{BINDS}/{ID1}"}, {"Source": f"{BINDS}/{ID2}"}]},
        {"Labels": {pins.LABEL: json.dumps({ID2: {"path": "forged"}})}, "Mounts": []},
        {"Labels": None, "Mounts": None},
    ]
    assert pins.wanted(containers, BINDS) == {ID1: ("proj", False), ID2: None}


@pytest.mark.parametrize(
    ("source", "pid"),
    [
        (f"{BINDS}/{ID1}", ID1),
        (f"{BINDS}/.mnt/{ID1}.0a0b0c0d", None),
        (f"{BINDS}/{ID1}/x", None),
        (f"{BINDS}x/{ID1}", None),
        (f"{BINDS}/short", None),
        ("/workspace/proj", None),
    ],
)
def test_pin_id(source, pid):
    assert pins.pin_id(source, BINDS) == pid


@pytest.fixture
def ws(tmp_path):
    w = tmp_path / "ws"
    (w / "proj" / "sub").mkdir(parents=True)
    (w / "proj" / "file").write_text("f\n")
    (w / "link").symlink_to("proj")
    (w / "proj" / "up").symlink_to("..")
    (w / "root").symlink_to("/")
    return w


@pytest.mark.parametrize(
    ("rel", "err"),
    [
        ("link", errno.ELOOP),  # a trailing symlink, even with O_PATH
        ("link/sub", errno.ELOOP),
        ("proj/up/proj", errno.ELOOP),
        ("root/etc", errno.ELOOP),
        ("proj/../..", errno.EXDEV),
        ("nothere", errno.ENOENT),
    ],
)
def test_open_beneath_refuses_symlinks_and_escapes(ws, rel, err):
    root = os.open(ws, os.O_PATH | os.O_DIRECTORY)
    try:
        with pytest.raises(OSError) as e:
            os.close(mounts.open_beneath(root, rel))
        assert e.value.errno == err
    finally:
        os.close(root)


def test_open_beneath_creates_missing_directories_but_not_through_links(ws):
    root = os.open(ws, os.O_PATH | os.O_DIRECTORY)
    try:
        os.close(mounts.open_beneath(root, "proj/new/deeper", create_dirs=True))
        assert (ws / "proj" / "new" / "deeper").is_dir()
        with pytest.raises(OSError) as e:
            mounts.open_beneath(root, "link/made", create_dirs=True)
        assert e.value.errno == errno.ELOOP and not (ws / "proj" / "made").exists()
    finally:
        os.close(root)


@pytest.mark.docker  # root, for mount(2)
def test_pins_hold_the_checked_object_and_are_replaced_atomically(ws, tmp_path):
    """A pin is the checked directory itself: renaming the path away and planting a symlink
    does not change it; a repin by path takes the new directory; a failed repin removes the
    pin; nosuid,nodev without nosymfollow, ro when asked; files pin too."""
    (ws / "proj" / "ln").symlink_to("file")
    box = pins.BindPins(str(ws), str(tmp_path / "run" / "binds"))
    box.prepare()
    try:
        source = box.pin("proj", False)
        pid = os.path.basename(source)
        assert box.take_made() == [pid] and box.take_made() == []
        assert os.readlink(source).startswith(f"{pins.MOUNTS}/{pid}.")
        assert Path(source, "ln").read_text() == "f\n"  # symlinks inside resolve
        target = os.path.join(box.directory, os.readlink(source))
        options = mounts.mount_options(target)
        assert {"nosuid", "nodev"} <= options and "nosymfollow" not in options
        assert "ro" not in options

        (ws / "proj").rename(ws / "old")
        (ws / "proj").symlink_to("/")
        assert os.path.exists(f"{source}/ln") and not os.path.exists(f"{source}/etc")

        (ws / "proj").unlink()
        (ws / "proj").mkdir()
        (ws / "proj" / "v").write_text("new\n")
        box.repin(pid, "proj", True)
        assert Path(source, "v").read_text() == "new\n"
        assert "ro" in mounts.mount_options(os.path.join(box.directory, os.readlink(source)))
        assert len(os.listdir(box.mounts_dir)) == 1  # the old mount went

        filepin = box.pin("old/file", True)
        assert Path(filepin).read_text() == "f\n"

        (ws / "proj" / "v").unlink()
        (ws / "proj").rmdir()
        (ws / "proj").symlink_to("/")
        with pytest.raises(OSError):
            box.repin(pid, "proj", False)
        assert not os.path.lexists(source) and box.ids() == {os.path.basename(filepin)}
        assert box.attached(os.path.basename(filepin)) and not box.attached(pid)
    finally:
        box.clear()
    assert not (tmp_path / "run" / "binds").exists()
    assert (ws / "old" / "file").read_text() == "f\n"  # clearing never touches what was pinned
