"""The benchmark harness works end to end: ``python -m bench.run`` at tiny sizes.

Real everything (the Hub spawns a user environment running bench/upstream.py in the environment
image, nginx, configurable-http-proxy, ``hub start`` and ``mitmdump -s addons/hub.py`` with a
real session), but only a couple of one-second workloads: this proves the harness produces its
tables, never how fast anything is (CI machines are shared; timings are not asserted).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.run import BEGIN, END, write_doc
from bench.site import ROOT

CONTENDERS = ("direct", "nginx", "chp", "hub-start", "hub-mitmdump")


@pytest.mark.docker
@pytest.mark.timeout(240)
def test_smoke_run_prints_every_table(tmp_path, env_image):
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\n## Resume\n\nkept as is\n")
    raw = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--profile", "smoke"]
        + ["--contenders", ",".join(CONTENDERS), "--workloads", "small,1m-down,ws1"]
        + ["--no-resume", "--doc", str(doc), "--json", str(raw)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    results = json.loads(raw.read_text())
    assert results["failures"] == {}, results["failures"]
    for workload in ("1 KiB, keep-alive, 50 conns", "1 MiB download", "WebSocket echo, 1 conn"):
        assert set(results["rounds"][workload]) == set(CONTENDERS), workload
        assert f"| {workload} |" in out
    assert "| workload | metric | " + " | ".join(CONTENDERS) in out
    assert "| target (hub start, 1 worker) |" in out
    assert "| cold spawn | 1 |" in out
    for proxy in CONTENDERS[1:]:
        assert results["memory"][proxy]["idle MiB"] > 0
    # the tables went into the doc between the markers; other sections are left alone
    text = doc.read_text()
    assert "## Resume\n\nkept as is\n" in text
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    assert "| workload | metric |" in text.split(BEGIN)[1].split(END)[0]


def test_write_doc_replaces_only_the_results_block(tmp_path):
    doc = tmp_path / "performance.md"
    write_doc(doc, "first")
    doc.write_text(doc.read_text() + "\n## Resume\n\nanother engineer's section\n")
    write_doc(doc, "second")
    text = doc.read_text()
    assert "first" not in text and "second" in text
    assert text.endswith("## Resume\n\nanother engineer's section\n")
