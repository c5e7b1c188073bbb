"""Start the real npm ``oidc-provider`` (tests/support/oidc/provider.mjs) for a test.

    with npm_oidc_provider(clients=[...], groups={"alice": ["dev"]}) as issuer:
        ...  # issuer = "http://127.0.0.1:<port>"; endpoints /auth, /token, /me

``host`` is the address it listens on (and names in its issuer): docker's bridge gateway for a
hub in a container (tests/systemd).

Its development login form accepts any login name (see provider.mjs).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.support.nodejs import node_env
from tests.support.procs import stop

OIDC_DIR = Path(__file__).resolve().parent / "oidc"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def npm_oidc_provider(
    clients: list[dict],
    groups: dict[str, list[str]] | None = None,
    port: int | None = None,
    skip_consent: bool = True,
    timeout: float = 15.0,
    host: str = "127.0.0.1",
) -> Iterator[str]:
    port = port or free_port()
    options = {
        "host": host,
        "port": port,
        "clients": clients,
        "groups": groups or {},
        "skipConsent": skip_consent,
    }
    proc = subprocess.Popen(
        ["node", str(OIDC_DIR / "provider.mjs"), json.dumps(options)],
        cwd=OIDC_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=node_env({**os.environ, "NODE_ENV": "test"}),
    )
    try:
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                line = proc.stdout.readline()
                if line.startswith(b"listening "):
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"oidc-provider exited: {proc.stderr.read().decode()[-2000:]}")
        else:
            raise RuntimeError("oidc-provider did not start in time")
        yield line.decode().split()[1]
    finally:
        stop(proc, 5)
        for stream in (proc.stdout, proc.stderr):
            stream.close()
