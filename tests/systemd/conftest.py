from __future__ import annotations

import warnings

# tests.support.proxyharness (provider_login) imports mitmproxy, whose proxyauth addon imports ldap3,
# which uses a pyasn1 name deprecated upstream; as tests/hubproxy/conftest.py does, import it
# quietly once (warnings are errors here).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import mitmproxy.addons  # noqa: F401
