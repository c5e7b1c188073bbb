"""The fault suite's hub: the whole product as an operator runs it, so faults can be injected.

``hub start`` runs as a real subprocess (so a test can SIGKILL it) with the LocalSupervisor: a
real per-user dockerd and policy-socket process per user, CRIU checkpoints, the real npm OIDC
provider, and the hub's own proxy in front. Users log in with a cookie-keeping HTTP client that
fills in the provider's form as a person would (``FaultSite.login``).

The environment image is busybox (2.7 MB, tests/support/images.py), imported into the host's
daemon once per session: a user's first start costs a daemon start and a 3 MB load, not the
200 MB of ``rediacc-hub/env``. Its command serves the workspace on the ``code`` route (busybox
httpd), so what a user sees through the proxy is their workspace's files.

Each module gets its own hub (``site``), started with the provider; the module's tests use
users of their own and may stop, kill and restart the hub (``restart``). At the end every user
is destroyed and the host checked for leaks (``HubSite.cleanup``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.faultsite import (
    DOMAIN,
    ROUTES,
    FaultSite,
    labels_text,
)
from tests.support import leaks
from tests.support.hubcore import host_test_image
from tests.support.hubprocess import CLIENT_SECRET, env_file
from tests.support.oidc_provider import free_port, npm_oidc_provider


@pytest.fixture(scope="session")
def fault_image() -> Iterator[str]:
    """busybox-static imported into the host's daemon under a tag of this run."""
    with host_test_image("hub-test/faults") as ref:
        yield ref


@pytest.fixture(scope="module")
def site(tmp_path_factory, fault_image, request) -> Iterator[FaultSite]:
    """A started hub of this module (see the module docstring); destroyed with a leak check."""
    root = tmp_path_factory.mktemp("faults")
    port = free_port()
    extra = getattr(request.module, "HUB_LABELS", ())
    redirects = [f"http://{p}.{DOMAIN}:{port}/_hub/oauth/callback" for p in ROUTES]
    client = {"client_id": "hub", "client_secret": CLIENT_SECRET, "redirect_uris": redirects}
    leaks.sweep_stale_daemon_mounts()
    with npm_oidc_provider([client]) as issuer:
        labels = root / "hub.labels.yaml"
        labels.write_text(labels_text(fault_image, extra))
        s = FaultSite(
            root=root,
            port=port,
            domain=DOMAIN,
            labels=labels,
            env=env_file(root / "hub.env", issuer, DOMAIN, HUB_ADMIN_USERS="admin"),
            issuer=issuer,
            extra_flags=dict(getattr(request.module, "HUB_FLAGS", {})),
        )
        s.start()
        try:
            yield s
        finally:
            s.stop()
            s.cleanup()
