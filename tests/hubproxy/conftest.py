from __future__ import annotations

import warnings

import pytest

# mitmproxy's proxyauth addon imports ldap3, which uses a pyasn1 name deprecated upstream; the
# warning is not ours to fix and our settings turn warnings into errors, so import it quietly once.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import mitmproxy.addons  # noqa: F401


@pytest.fixture
def anyio_backend():
    return "asyncio"  # mitmproxy runs on asyncio
