"""The import direction is part of the architecture: addons -> hubproxy -> hubcontrol <- hubcli.

ruff's banned-api rule checks the source; this test checks what really gets imported at run time,
so a transitive import (hubcontrol -> some helper -> mitmproxy) is caught too. The proxy reaches
the control plane only through ``hubcontrol.__all__``, and inside hubproxy the shared pieces (auth,
web, hosts, guard, context) import no addon, process or worker module (both checked on the source).
"""

from __future__ import annotations

import ast
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


def _hubcontrol_imports(path: Path) -> list[tuple[int, str]]:
    """Every import of hubcontrol in ``path`` that is not ``from hubcontrol import <public name>``:
    (line, what is imported)."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            bad += [
                (node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "hubcontrol"
            ]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.startswith("hubcontrol."):
                bad += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
            elif node.module == "hubcontrol":
                public = set(hubcontrol.__all__)
                bad += [(node.lineno, a.name) for a in node.names if a.name not in public]
    return bad


def test_the_proxy_uses_only_hubcontrols_public_api() -> None:
    # The seam between the planes is hubcontrol.__all__: a name the proxy needs is exported there
    # (and so documented as public), never reached for in a private module.
    files = sorted((ROOT / "hubproxy").rglob("*.py")) + sorted((ROOT / "addons").glob("*.py"))
    assert files
    found = {
        f"{path.relative_to(ROOT)}:{line}": name
        for path in files
        for line, name in _hubcontrol_imports(path)
    }
    assert found == {}, (
        "import these from `hubcontrol` (add them to its __all__ if they are public)"
    )


def test_hubcontrol_all_names_exist() -> None:
    missing = [name for name in hubcontrol.__all__ if not hasattr(hubcontrol, name)]
    assert missing == []


# Inside hubproxy: the shared pieces never import the addons, the process or the workers.
SHARED = (
    "hubproxy/context.py",
    "hubproxy/guard.py",
    "hubproxy/hosts.py",
    "hubproxy/auth",
    "hubproxy/web",
)
UPPER = ("hubproxy.addons", "hubproxy.server", "hubproxy.workers")


def test_hubproxys_shared_pieces_import_no_addon_process_or_worker() -> None:
    found = {}
    for entry in SHARED:
        path = ROOT / entry
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            for node in ast.walk(ast.parse(file.read_text(), str(file))):
                names = []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                bad = [
                    n for n in names if n in UPPER or n.startswith(tuple(u + "." for u in UPPER))
                ]
                if bad:
                    found[f"{file.relative_to(ROOT)}:{node.lineno}"] = bad[0]
    assert found == {}


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


def _test_tree_imports() -> list[tuple[Path, int, str, list[str]]]:
    """Every ``tests.*`` import in the tests: (file, line, module, imported names)."""
    found = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if "node_modules" in path.parts:
            continue
        package = ".".join(path.relative_to(ROOT).parent.parts)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [(path, node.lineno, a.name, []) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join([*base, module] if module else base)
                found.append((path, node.lineno, module, [a.name for a in node.names]))
    return [f for f in found if f[2] == "tests" or f[2].startswith("tests.")]


def _fixtures_in(module: str) -> set[str]:
    path = ROOT.joinpath(*module.split(".")).with_suffix(".py")
    if not path.is_file():
        return set()
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for d in node.decorator_list:
                target = d.func if isinstance(d, ast.Call) else d
                if ast.unparse(target) in ("pytest.fixture", "fixture"):
                    names.add(node.name)
    return names


def test_test_modules_share_through_conftest_and_support_only() -> None:
    """Fixtures live in the nearest conftest.py (pytest finds them there, so nothing imports
    them); helpers shared by several folders live in tests/support/, helpers of one folder in a
    module of that folder. No module imports a test module or a conftest, because importing a
    test module runs it again under a second name and re-registers its tests' fixtures."""
    bad = []
    for path, line, module, names in _test_tree_imports():
        where = f"{path.relative_to(ROOT)}:{line} imports {module}"
        parts = module.split(".")
        if any(p.startswith("test_") or p == "conftest" for p in [*parts, *names]):
            bad.append(f"{where}: a test module or conftest")
        folder = path.relative_to(ROOT / "tests").parts[:-1]
        if len(parts) > 1 and parts[1] != "support" and (not folder or parts[1] != folder[0]):
            bad.append(f"{where}: another folder's helper (shared helpers go in tests/support/)")
        if fixtures := sorted(_fixtures_in(module) & set(names)):
            bad.append(f"{where}: fixtures {fixtures} (put them in the nearest conftest.py)")
    assert bad == [], "\n".join(bad)
