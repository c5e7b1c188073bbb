"""The import direction is part of the architecture: addons -> hubproxy -> hubcontrol <- hubcli.

ruff's banned-api rule checks the source; this test checks what really gets imported at run time,
so a transitive import (hubcontrol -> some helper -> mitmproxy) is caught too.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import hubcontrol

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = ("mitmproxy", "typer", "rich", "hubproxy", "hubcli")


def _hubcontrol_modules() -> list[str]:
    walked = pkgutil.walk_packages(hubcontrol.__path__, "hubcontrol.")
    return ["hubcontrol"] + [m.name for m in walked if "._" not in m.name]


def test_hubcontrol_never_imports_data_plane_or_cli() -> None:
    # Third-party libraries hubcontrol may use pull in optional extras of their own (httpx loads
    # rich for its command line); only what hubcontrol's own modules add on top counts.
    code = (
        "import importlib, json, sys\n"
        "import anyio, docker, httpx, yaml\n"
        "baseline = set(sys.modules)\n"
        f"for name in {_hubcontrol_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(set(sys.modules) - baseline)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    loaded = json.loads(out.stdout)
    leaked = sorted({m.split(".")[0] for m in loaded if m.split(".")[0] in FORBIDDEN})
    assert leaked == [], f"hubcontrol imported {leaked}"


def test_importing_hubcontrol_is_cheap_and_its_public_names_resolve() -> None:
    """``hubcontrol/__init__.py`` imports on first use: the package alone loads nothing (so the
    per-user processes, ``python -m hubcontrol.policysocket`` and ``hubcontrol.du``, load only
    their own modules), and every name of ``__all__`` is still there."""
    code = (
        "import json, sys\n"
        "import hubcontrol\n"
        "alone = sorted(m for m in sys.modules if m.startswith(('hubcontrol', 'docker', 'yaml')))\n"
        "import inspect\n"
        "resolved = {n: getattr(hubcontrol, n).__module__ for n in hubcontrol.__all__\n"
        "            if inspect.isclass(getattr(hubcontrol, n)) or callable(getattr(hubcontrol, n))}\n"
        "print(json.dumps([alone, sorted(hubcontrol.__all__), resolved, 'Hub' in dir(hubcontrol)]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    alone, names, resolved, listed = json.loads(out.stdout)
    assert alone == ["hubcontrol"]
    assert names == sorted(hubcontrol.__all__) and len(names) == len(set(names))
    assert resolved["Hub"] == "hubcontrol.hub" and resolved["safe_name"] == "hubcontrol.names"
    assert all(module.startswith("hubcontrol.") for module in resolved.values())
    assert listed
    assert set(hubcontrol._EXPORTS) == set(hubcontrol.__all__)
