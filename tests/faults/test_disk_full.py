"""The disk full during a checkpoint: the user's workspace is a small loop filesystem (as a
repository's is), nearly full, and CRIU's images go to ``<workspace>/.checkpoint``. The dump
fails; the environment is stopped instead (the seed's fallback), the workspace files are
intact, the half-written images are removed (the space comes back), the failure counts as one
strike, and the user's next visit gets a fresh environment on their files."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.faults.faultsite import FaultSite

pytestmark = [pytest.mark.docker, pytest.mark.criu, pytest.mark.oidc, pytest.mark.timeout(240)]


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def free_bytes(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_disk_full_during_a_checkpoint(site: FaultSite, tmp_path):
    user = "dfull"
    ws = site.workspaces / user
    ws.mkdir(parents=True)
    image = tmp_path / "ws.img"
    run("truncate", "-s", "8M", str(image))
    run("mkfs.ext4", "-q", "-m", "0", str(image))
    device = run("losetup", "--find", "--show", str(image)).strip()
    run("mount", device, str(ws))
    try:
        (ws / "notes.txt").write_text("kept")
        with site.login(user) as browser:
            # the user's files fill the disk but for 16 KiB; a dump needs some 250 KB
            filler = ws / "big.bin"
            with open(filler, "wb") as f:
                f.truncate(0)
                os.posix_fallocate(f.fileno(), 0, free_bytes(ws) - 16 * 1024)
            before = free_bytes(ws)
            mark = site.log_mark()

            result = site.api().act(user, "checkpoint")
            # the operator (hub stop --checkpoint) is told the state it ended in
            assert result["state"] == "stopped", result
            log = site.log_since(mark)
            assert "CRIU dump of hub-dfull failed" in log and "no space left" in log, log[-2000:]
            health = json.loads((site.state / "checkpoint" / f"{user}.json").read_text())
            assert health["failures"] == 1 and not health["disabled"]  # one strike
            assert "stopped instead, and your workspace files are kept" in health["last_error"]
            # nothing lost, nothing left: the files are there, the partial images gone
            assert (ws / "notes.txt").read_text() == "kept"
            assert filler.stat().st_size > 0
            assert not any((ws / ".checkpoint").iterdir())
            assert free_bytes(ws) >= before

            # the user comes back: a fresh environment on the same files
            r = site.revisit(browser, "/notes.txt")
            assert (r.status_code, r.text) == (200, "kept")
        with site.login(user) as browser:
            assert site.page(browser, "/notes.txt").text == "kept"
    finally:
        site.api().act(user, "stop")
        while subprocess.run(["umount", str(ws)], capture_output=True).returncode == 0:
            pass
        subprocess.run(["losetup", "-d", device], capture_output=True)
