"""``python -m bench.load`` works end to end at tiny sizes: real ``hub start`` (the real Hub,
per-user dockerd, policy sockets) with its workspace dir on a BTRFS loop file, the real npm OIDC
provider, one new user's login through both, a few idle WebSockets to ttyd and a terminal
printing through the hub. This proves the harness produces its table and cleans up after
itself, never how fast anything is (timings are not asserted: CI machines are shared).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.site import ROOT

pytestmark = [pytest.mark.docker, pytest.mark.oidc]


@pytest.mark.timeout(180)
def test_smoke_load_prints_its_table_and_leaves_nothing(tmp_path, env_image):
    raw = tmp_path / "load.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.load", "--logins", "1", "--websockets", "3"]
        + ["--baseline", "1", "--min-load", "2", "--btrfs-size", "4G", "--json", str(raw)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    assert "| measure | baseline (no load) | under load |" in out
    for row in ("`/_hub/health` p99", "another user's page (`code.`) p99", "floor: "):
        assert f"| {row}" in out, row
    assert "| new users logging in at once, served | | 1 of 1 |" in out
    assert "| idle WebSockets opened / failed / still open at the end | | 3 / 0 / 3 |" in out
    assert "Target (issue 16): `/_hub/health` within 100 ms at p99 under load:" in out
    assert "The same, from when all 3 WebSockets were open:" in out
    assert "| `/_hub/health` p99 / max / errors, once the WebSockets were open | |" in out
    results = json.loads(raw.read_text())
    assert results["leftovers"] == []
    # every probe was answered, under load as in the baseline
    for phase in ("baseline", "sampler"):
        for probe, samples in results[phase].items():
            assert samples and all(status == 200 for _, status, _at in samples), (phase, probe)
    assert results["firehose"]["bytes"] > 0 and not results["firehose"]["ended_early"]
