"""``hub start`` with its listening socket opened with ``SO_REUSEPORT``, for the scaling test.

    python -m bench.reuseport start --port=7112 ...   (same arguments as ``hub start``)

Several of these on one port make the kernel spread new connections across processes. Each is
a complete hub (its own control plane adopting the same running environments, the same session
store and secret), which is how ``bench.run`` measures what a second core buys the request path
today; docs/performance.md describes the production design (one control-plane owner, proxy-only
workers). mitmproxy opens its listener with ``asyncio.start_server`` and no way to ask for
``reuse_port``: this wrapper supplies it in this process only.
"""

from __future__ import annotations

import asyncio
import sys

_start_server = asyncio.start_server


async def _start_server_reuse_port(*args, **kwargs):
    kwargs.setdefault("reuse_port", True)
    return await _start_server(*args, **kwargs)


def main() -> None:
    asyncio.start_server = _start_server_reuse_port
    from hubcli.app import main as hub_main

    sys.argv = ["hub", *sys.argv[1:]]
    hub_main()


if __name__ == "__main__":
    main()
