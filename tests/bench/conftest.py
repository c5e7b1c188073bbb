"""Fixtures shared by the benchmark smoke tests in tests/bench/."""

from __future__ import annotations

import subprocess

import pytest

from tests.support.ci import IN_CI


@pytest.fixture
def env_image() -> str:
    """The environment image the benchmarks run (scripts/build-image.sh): missing fails in CI,
    where the project's scripts build it, and skips elsewhere."""
    ref = "rediacc-hub/env:latest"
    done = subprocess.run(["docker", "image", "inspect", ref], capture_output=True)
    if done.returncode:
        if IN_CI:
            pytest.fail(f"{ref} is missing (scripts/build-image.sh)")
        pytest.skip(f"needs {ref} (scripts/build-image.sh)")
    return ref
