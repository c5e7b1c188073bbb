"""``hub start`` re-executes itself under ``python -O`` only as the real program."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hubproxy.pyopt import should_reexec

HUB = sys.executable.rsplit("/", 1)[0] + "/hub"


@pytest.mark.parametrize(
    ("optimize", "env", "argv", "expected"),
    [
        (0, {}, [HUB, "start"], True),
        (1, {}, [HUB, "start"], False),  # already -O
        (0, {"HUB_PYTHON_OPTIMIZE": "0"}, [HUB, "start"], False),  # switched off
        (0, {"HUB_PYTHON_OPTIMIZE": "1"}, [HUB, "start"], True),
        (0, {}, ["/usr/bin/pytest", "tests"], False),  # a command invoked in-process
        (0, {}, ["hub", "start"], False),  # not a file to re-run (e.g. sys.argv set by a wrapper)
        (0, {}, [], False),
    ],
)
def test_should_reexec(optimize, env, argv, expected):
    assert should_reexec(optimize, env, argv) is expected


def test_hub_start_runs_optimized(tmp_path):
    """The real program re-executes under -O before it reads its flags (a bad flag exits 2)."""
    probe = tmp_path / "sitecustomize.py"
    flags = str(tmp_path / "flags")
    probe.write_text(
        "import sys, atexit\n"
        f"atexit.register(lambda: open({flags!r}, 'a').write(str(sys.flags.optimize)))\n"
    )
    done = subprocess.run(
        [HUB, "start", "--prot=7112"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)},
    )
    assert done.returncode == 2, done.stderr
    # the first process was replaced by exec (its atexit never ran); the -O one exited with 2
    assert (tmp_path / "flags").read_text() == "1"
