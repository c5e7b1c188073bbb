"""``hub start`` runs under ``python -O``: mitmproxy's debug-only checks are off in production.

mitmproxy type-checks every field of every ``Request`` and ``Response`` it constructs, inside an
``if __debug__:`` block (its own marker for "development only"), and guards its layers with
``assert``. Profiled under ``hub start`` those checks were about an eighth of the CPU a proxied
request costs; the benchmark (docs/performance.md) measured 1.25x the small requests and 1.09x
the WebSocket round trips per CPU-second under ``-O``. The hub's own code never validates input
with ``assert``.

``reexec_optimized()`` replaces the process (same PID, same arguments, same environment) with
``python -O``. It does nothing when already optimized, when ``HUB_PYTHON_OPTIMIZE=0``, or when the
process is not the ``hub`` program itself (tests run commands in-process).
"""

from __future__ import annotations

import os
import sys

ENV = "HUB_PYTHON_OPTIMIZE"
PROGRAMS = frozenset({"hub", "hubcli"})


def should_reexec(optimize: int, env: dict[str, str], argv: list[str], shebang: str) -> bool:
    """Whether to re-run ``argv`` under ``python -O``; ``shebang`` is the first line of the file
    ``argv[0]`` ("" if unreadable): only a Python script can be handed to the interpreter."""
    if optimize or env.get(ENV, "1").strip() == "0":
        return False
    if not argv or os.path.basename(argv[0]) not in PROGRAMS:
        return False
    return shebang.startswith("#!") and "python" in shebang


def _shebang(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.readline(200).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def reexec_optimized() -> None:
    argv = sys.argv
    shebang = _shebang(argv[0]) if argv else ""
    if should_reexec(sys.flags.optimize, dict(os.environ), argv, shebang):
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-O", *sys.argv])
