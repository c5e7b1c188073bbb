"""Which Node.js the tests' and benchmarks' node processes run with.

configurable-http-proxy 5.3.0 (bench/) needs Node.js >= 20 and Debian 12 ships 18, so where the
system's node is older, scripts/install-test-deps.sh installs a pinned Node.js 20 from the npm
registry into ``/opt/rediacc/node20`` (scripts/node20) and leaves ``/usr/bin/node`` alone.
``node_env`` puts that private one first on PATH, as scripts/test.sh does (lib.sh ``use_node20``),
so ``node ...`` and ``#!/usr/bin/env node`` scripts run it also when pytest is started directly.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

# The same directory as NODE20_PREFIX/bin in scripts/lib.sh.
NODE20_BIN = Path("/opt/rediacc/node20/bin")
NODE_MAJOR_MIN = 20


def prefer_private_node(system_major: int | None, private_installed: bool) -> bool:
    """Whether the private Node.js 20 runs the tests' node: only when it is installed and the
    system's node is missing (None) or older than 20; a newer system node is never shadowed."""
    return private_installed and (system_major is None or system_major < NODE_MAJOR_MIN)


def _without_private(path: str) -> str:
    return os.pathsep.join(d for d in path.split(os.pathsep) if d and Path(d) != NODE20_BIN)


@functools.cache
def _system_major(path: str) -> int | None:
    try:
        done = subprocess.run(
            ["node", "-p", "process.versions.node.split('.')[0]"],
            env={"PATH": path},
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return int(done.stdout) if done.returncode == 0 and done.stdout.strip().isdigit() else None


def node_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """ENV (default: this process's) with PATH leading to the Node.js the tests need."""
    out = dict(os.environ if env is None else env)
    path = _without_private(out.get("PATH", os.defpath))
    if prefer_private_node(_system_major(path), os.access(NODE20_BIN / "node", os.X_OK)):
        path = f"{NODE20_BIN}{os.pathsep}{path}"
    out["PATH"] = path
    return out
