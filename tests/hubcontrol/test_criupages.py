"""A checkpoint's large images set aside, staged for a restore, and moved in by the CRIU wrapper.

The wrapper's shell lines run as runc runs the wrapper: as the child of a process whose argv is
runc's (``--image-path <TMPDIR>/ctrd-checkpoint<N>``). The restore through a real dockerd and
CRIU is in test_checkpoint_criu.py.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hubcontrol import criupages

CKPT = "hub-1733520000000"


def _checkpoint(tmp_path: Path, pages: int = 2) -> tuple[Path, Path]:
    """A user's ``.checkpoint`` with CRIU-like images: small ones and ``pages`` large ones."""
    workspace = tmp_path / "ws" / "alice"
    images = workspace / ".checkpoint" / CKPT
    images.mkdir(parents=True)
    (tmp_path / "ws").chmod(0o700)
    (workspace / ".checkpoint").chmod(0o700)
    (images / "inventory.img").write_bytes(b"inv")
    (images / "pagemap-1.img").write_bytes(b"m" * 100)
    (images / "hub-fingerprint.json").write_bytes(b"x" * (100 << 10))  # the hub's: stays
    for n in range(1, pages + 1):
        (images / f"pages-{n}.img").write_bytes(bytes([n]) * (200 << 10))
    return workspace / ".checkpoint", images


def test_set_aside_moves_only_the_large_images_and_marks_the_set(tmp_path):
    checkpoints, images = _checkpoint(tmp_path)
    moved = criupages.set_aside(checkpoints, CKPT)
    aside = checkpoints / f"{CKPT}.pages"
    assert moved == 2 * (200 << 10)
    assert sorted(p.name for p in aside.iterdir()) == ["pages-1.img", "pages-2.img"]
    assert sorted(p.name for p in images.iterdir()) == [
        "hub-fingerprint.json",
        "hub-pages",
        "inventory.img",
        "pagemap-1.img",
    ]
    assert (images / "hub-pages").read_text() == CKPT
    assert oct(aside.stat().st_mode & 0o777) == "0o700"


def test_a_set_with_nothing_large_stays_as_it_is(tmp_path):
    checkpoints, images = _checkpoint(tmp_path, pages=0)
    assert criupages.set_aside(checkpoints, CKPT) == 0
    assert not (images / "hub-pages").exists()
    assert not (checkpoints / f"{CKPT}.pages").exists()
    assert criupages.stage(checkpoints, CKPT, tmp_path) == 0


@pytest.mark.parametrize("name", ["../x", "a/b", "", "x" * 65])
def test_names_outside_the_checkpoint_alphabet_are_refused(tmp_path, name):
    checkpoints, _ = _checkpoint(tmp_path)
    with pytest.raises(ValueError, match="checkpoint name"):
        criupages.set_aside(checkpoints, name)


def test_stage_hard_links_on_one_filesystem(tmp_path):
    checkpoints, _ = _checkpoint(tmp_path)
    criupages.set_aside(checkpoints, CKPT)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir(mode=0o700)
    (tmpdir / f"hub-pages-{CKPT}").mkdir()  # a crashed restore's: replaced
    (tmpdir / f"hub-pages-{CKPT}" / "stale").write_text("old")
    assert criupages.stage(checkpoints, CKPT, tmpdir) == 2 * (200 << 10)
    staged = tmpdir / f"hub-pages-{CKPT}"
    assert sorted(p.name for p in staged.iterdir()) == ["pages-1.img", "pages-2.img"]
    source = checkpoints / f"{CKPT}.pages" / "pages-1.img"
    assert (staged / "pages-1.img").stat().st_ino == source.stat().st_ino  # no bytes copied
    assert source.exists()  # the checkpoint keeps its own until the restore is verified


def test_stage_copies_across_filesystems(tmp_path):
    """/dev/shm is a tmpfs: no hard link, no reflink there; the bytes are copied."""
    checkpoints, _ = _checkpoint(tmp_path)
    criupages.set_aside(checkpoints, CKPT)
    shm = Path("/dev/shm")
    if os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.fail("/dev/shm and the test's tmp dir share a filesystem on this machine")
    tmpdir = Path(os.path.realpath(shm)) / f"criupages-{os.getpid()}"
    tmpdir.mkdir(mode=0o700)
    try:
        criupages.stage(checkpoints, CKPT, tmpdir)
        staged = tmpdir / f"hub-pages-{CKPT}" / "pages-2.img"
        assert staged.read_bytes() == bytes([2]) * (200 << 10)
    finally:
        subprocess.run(["rm", "-rf", str(tmpdir)], check=True)


def test_put_back_restores_the_original_layout(tmp_path):
    checkpoints, images = _checkpoint(tmp_path)
    before = sorted(p.name for p in images.iterdir())
    criupages.set_aside(checkpoints, CKPT)
    criupages.put_back(checkpoints, CKPT)
    assert sorted(p.name for p in images.iterdir()) == before
    assert not criupages.is_aside(checkpoints, CKPT)


def test_a_link_planted_for_the_aside_dir_is_never_followed(tmp_path):
    checkpoints, _ = _checkpoint(tmp_path)
    criupages.set_aside(checkpoints, CKPT)
    aside = checkpoints / f"{CKPT}.pages"
    elsewhere = tmp_path / "elsewhere"
    aside.rename(elsewhere)
    aside.symlink_to(elsewhere)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    with pytest.raises(OSError):
        criupages.stage(checkpoints, CKPT, tmpdir)
    assert not list((tmpdir / f"hub-pages-{CKPT}").iterdir())


def test_clean_stages_removes_only_staged_sets(tmp_path):
    (tmp_path / f"hub-pages-{CKPT}").mkdir()
    (tmp_path / "ctrd-checkpoint1").mkdir()
    (tmp_path / "hub-pages-link").symlink_to(tmp_path / "ctrd-checkpoint1")
    assert criupages.clean_stages(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ctrd-checkpoint1", "hub-pages-link"]


def _wrapper(tmp_path: Path, image_path: Path) -> None:
    script = tmp_path / "criu"
    script.write_text("#!/bin/sh\n" + criupages.IMAGE_PATH + criupages.RESTORE_PRELUDE)
    script.chmod(0o755)
    runc = ["sh", "-c", f"{script} swrk 3; exit 0", "runc", "restore", "--image-path"]
    subprocess.run([*runc, str(image_path), "--work-path", "/x", "id"], check=True, timeout=10)


def _containerd_copy(tmp_path: Path, marker: str) -> tuple[Path, Path]:
    tmpdir = tmp_path / "tmp"
    copy = tmpdir / "ctrd-checkpoint42"
    copy.mkdir(parents=True)
    (copy / "inventory.img").write_text("inv")
    (copy / "hub-pages").write_text(marker)
    stage = tmpdir / f"hub-pages-{CKPT}"
    stage.mkdir()
    (stage / "pages-1.img").write_text("memory")
    return copy, stage


def test_the_wrapper_moves_the_staged_images_into_containerds_copy(tmp_path):
    copy, stage = _containerd_copy(tmp_path, CKPT)
    _wrapper(tmp_path, copy)
    assert (copy / "pages-1.img").read_text() == "memory"
    assert not stage.exists()


@pytest.mark.parametrize("marker", ["../../elsewhere", "hub-1/../../x", "", "hub 1"])
def test_the_wrapper_takes_nothing_but_a_plain_name_from_the_images(tmp_path, marker):
    copy, stage = _containerd_copy(tmp_path, marker)
    _wrapper(tmp_path, copy)
    assert not (copy / "pages-1.img").exists()
    assert (stage / "pages-1.img").exists()


def test_the_wrapper_leaves_everything_but_a_restore_alone(tmp_path):
    """A dump's images are not containerd's copy (ctrd-checkpoint*): nothing is moved."""
    copy, stage = _containerd_copy(tmp_path, CKPT)
    other = copy.rename(copy.with_name("checkpoint-dump"))
    _wrapper(tmp_path, other)
    assert not (other / "pages-1.img").exists()
    assert (stage / "pages-1.img").exists()


def test_the_wrapper_follows_no_link_in_the_stage(tmp_path):
    copy, stage = _containerd_copy(tmp_path, CKPT)
    secret = tmp_path / "secret"
    secret.write_text("someone else's")
    (stage / "pages-9.img").symlink_to(secret)
    _wrapper(tmp_path, copy)
    assert (copy / "pages-1.img").exists()
    assert not (copy / "pages-9.img").exists()
    assert secret.read_text() == "someone else's"
