"""The control plane type-checks: ``python -m mypy`` with the project's configuration
(pyproject.toml ``[tool.mypy]``: hubcontrol, strict) finds nothing. A type error in hubcontrol
fails the suite as a failing test does, with mypy's report as the failure message.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_hubcontrol_passes_mypy_strict(tmp_path: Path) -> None:
    result = subprocess.run(
        # a cache of its own: a shared one may hold another checkout's results
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy-cache")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, f"mypy found problems:\n{result.stdout}{result.stderr}"
    assert "Success: no issues found" in result.stdout, result.stdout
