"""``hub start`` re-executes itself under ``python -O`` only as the real program."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hubproxy.server.pyopt import should_reexec

HUB = sys.executable.rsplit("/", 1)[0] + "/hub"


PY = "#!/opt/venv/bin/python3"


@pytest.mark.parametrize(
    ("optimize", "env", "argv", "shebang", "expected"),
    [
        (0, {}, [HUB, "start"], PY, True),
        (1, {}, [HUB, "start"], PY, False),  # already -O
        (0, {"HUB_PYTHON_OPTIMIZE": "0"}, [HUB, "start"], PY, False),  # switched off
        (0, {"HUB_PYTHON_OPTIMIZE": "1"}, [HUB, "start"], PY, True),
        (0, {}, ["/usr/bin/pytest", "tests"], PY, False),  # a command invoked in-process
        (0, {}, ["hub", "start"], "", False),  # no such file (a wrapper set sys.argv)
        (0, {}, ["/usr/local/bin/hub", "start"], "#!/bin/sh", False),  # a shell shim
        (0, {}, [], "", False),
    ],
)
def test_should_reexec(optimize, env, argv, shebang, expected):
    assert should_reexec(optimize, env, argv, shebang) is expected


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
