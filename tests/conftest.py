"""Shared test settings.

Tests that need root, a real dockerd, CRIU, the npm OIDC provider or Chromium are marked; they run
everywhere the project's scripts have installed those things, and in CI (``CI=true``) a missing
requirement is a failure, never a skip.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ci import IN_CI
from tests.support.dockerd import ScratchDaemon, scratch_dockerd
from tests.support.images import import_busybox
from tests.support.registry import docker_registry

ROOT = Path(__file__).resolve().parent.parent

REQUIREMENTS = {
    "docker": lambda: os.geteuid() == 0 and shutil.which("dockerd") is not None,
    "criu": lambda: os.path.exists("/opt/rediacc/criu/bin/criu"),
    "browser": lambda: os.path.exists("/usr/bin/chromium"),
    "oidc": lambda: (ROOT / "tests/support/oidc/node_modules/oidc-provider").is_dir(),
}
WHY = {
    "docker": "needs root and dockerd (run scripts/setup-host.sh)",
    "criu": "needs CRIU 4.2.1 in /opt/rediacc/criu (run scripts/setup-host.sh)",
    "browser": "needs /usr/bin/chromium (run scripts/install-test-deps.sh)",
    "oidc": "needs npm oidc-provider (run scripts/install-test-deps.sh)",
}


def pytest_runtest_setup(item: pytest.Item) -> None:
    for name, available in REQUIREMENTS.items():
        if item.get_closest_marker(name) and not available():
            if IN_CI:
                pytest.fail(f"{WHY[name]}: missing in CI, where every test must run")
            pytest.skip(WHY[name])


@pytest.fixture(scope="module")
def registry() -> Iterator[str]:
    """A real registry (host:port) for the tests that push and pull, in hubcontrol/ and security/."""
    with docker_registry() as address:
        yield address


@pytest.fixture(scope="module")
def busybox_daemon(request: pytest.FixtureRequest) -> Iterator[ScratchDaemon]:
    """A scratch dockerd holding the busybox test image, for the module; ``.api`` is docker-py on
    its own socket. The module names its ``DAEMON_INDEX`` (the bridge hubt<index>), so modules
    that run at once never share a bridge."""
    index = getattr(request.module, "DAEMON_INDEX", None)
    if not isinstance(index, int):
        pytest.fail(f"{request.module.__name__} uses busybox_daemon: set DAEMON_INDEX = <1..254>")
    with scratch_dockerd(index) as d:
        d.api = d.client()
        import_busybox(d.api)
        yield d
        d.api.close()
