"""The hub as a mitmdump script (``mitmdump -s addons/hub.py``), as operators run it: a real
mitmdump process, the real Hub in its control thread, the real npm oidc-provider."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.oidc_provider import free_port, npm_oidc_provider
from tests.support.webclient import browser, provider_login

ROOT = Path(__file__).resolve().parents[2]
MITMDUMP = str(Path(sys.executable).parent / "mitmdump")
LABELS = """version: 1
service: hub
labels:
  rediacc.hub.route.term: "7681"
  rediacc.hub.image: rediacc-hub/env:latest
  rediacc.hub.command: ttyd --writable --port 7681 bash
  rediacc.hub.docker: per-user
"""


def mitmdump(port: int, *sets: str) -> list[str]:
    args = [MITMDUMP, "-q", "--mode", f"reverse:http://127.0.0.1:1@{port}"]
    args += ["--listen-host", "127.0.0.1", "-s", str(ROOT / "addons/hub.py")]
    for s in sets:
        args += ["--set", s]
    return args


def test_bad_configuration_fails_startup_with_the_problems(tmp_path):
    labels = tmp_path / "hub.labels.yaml"
    labels.write_text(LABELS.replace('"7681"', '"not-a-port"'))
    proc = subprocess.run(
        mitmdump(free_port(), f"hub_labels={labels}", f"hub_state_dir={tmp_path}"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "rediacc.hub.route.term" in output and "not-a-port" in output


@pytest.mark.docker
@pytest.mark.oidc
def test_mitmdump_serves_login_health_and_stops_cleanly(tmp_path):
    port = free_port()
    callback = f"http://term.localhost:{port}/_hub/oauth/callback"
    client = {"client_id": "hub", "client_secret": "dump-secret", "redirect_uris": [callback]}
    with npm_oidc_provider([client]) as issuer:
        labels = tmp_path / "hub.labels.yaml"
        labels.write_text(LABELS)
        env = tmp_path / "hub.env"
        env.write_text(
            "\n".join(
                [
                    "HUB_DOMAIN=localhost",
                    "HUB_OAUTH_CLIENT_ID=hub",
                    "HUB_OAUTH_CLIENT_SECRET=dump-secret",
                    f"HUB_OAUTH_AUTHORIZE_URL={issuer}/auth",
                    f"HUB_OAUTH_TOKEN_URL={issuer}/token",
                    f"HUB_OAUTH_USERINFO_URL={issuer}/me",
                    "HUB_OAUTH_USERINFO_PATH=preferred_username",
                ]
            )
            + "\n"
        )
        log = (tmp_path / "mitmdump.log").open("wb")
        proc = subprocess.Popen(
            mitmdump(
                port,
                f"hub_labels={labels}",
                f"hub_env_file={env}",
                f"hub_state_dir={tmp_path / 'state'}",
                f"hub_workspace_dir={tmp_path / 'ws'}",
                f"hub_audit_dir={tmp_path / 'audit'}",
                "hub_supervisor=local",
            ),
            stdout=log,
            stderr=log,
            cwd=ROOT,
            env={**os.environ},
        )
        try:
            deadline = time.monotonic() + 60
            health = None
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    health = httpx.get(
                        f"http://127.0.0.1:{port}/_hub/health",
                        headers={"Host": f"term.localhost:{port}"},
                        timeout=1,
                    )
                    if health.status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            assert health is not None and health.status_code == 200, (
                tmp_path / "mitmdump.log"
            ).read_text()[-3000:]
            # no session secret configured: a generated one is kept 0600 in the state dir
            secret = tmp_path / "state" / "session.secret"
            assert secret.stat().st_mode & 0o777 == 0o600
            with browser("localhost", port) as c:
                r = c.get(f"http://term.localhost:{port}/_hub/")
                r = provider_login(c, r, "dumpuser")
                assert r.status_code == 200 and "Logged in as dumpuser" in r.text
                status = c.get(
                    f"http://term.localhost:{port}/_hub/api/progress",
                    headers={"Sec-Fetch-Mode": "cors"},
                )
                assert status.status_code == 200 and status.json()["ready"] is False
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
            log.close()
        assert code == 0, (tmp_path / "mitmdump.log").read_text()[-3000:]
