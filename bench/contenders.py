"""Every proxy the benchmarks compare, started here on loopback, all in front of one upstream.

- ``direct``: the environment's ``SERVICE_IP:port`` itself (the baseline);
- ``nginx``: a plain reverse proxy (one worker, upstream keep-alive, no buffering);
- ``chp``: configurable-http-proxy, JupyterHub's proxy, with ``--host-routing`` and one route;
- ``hub-start``: ``hub start`` (the lean embedded master) with the real control plane;
- ``hub-mitmdump``: ``mitmdump -s addons/hub.py`` with the same configuration.

The hub contenders run authentication and routing for real: each request carries a minted
session cookie that the session addon verifies against the session store.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench.clients import Endpoint
from bench.site import ROOT, Site, process_env
from tests.support.nodejs import node_env

CHP_BIN = ROOT / "bench" / "node_modules" / ".bin" / "configurable-http-proxy"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int) -> int:
    """Resident set size of ``pid`` and all its descendants, in KiB."""
    total = 0
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (all its threads) and its descendants."""
    total = 0
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


def descendants(pid: int) -> list[int]:
    out = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    out += [int(child), *descendants(int(child))]
    return out


def _json(ep: Endpoint, path: str) -> dict:
    """The JSON document at ``path`` ({} when it does not answer with one)."""
    req = urllib.request.Request(f"http://{ep.host}:{ep.port}{path}")
    req.add_header("Host", ep.host_header)
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return json.loads(r.read())
    except Exception:  # a hub that is not up yet
        return {}


def wait_http(
    ep: Endpoint,
    path: str,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    want: int = 200,
) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before answering {path}")
        try:
            req = urllib.request.Request(f"http://{ep.host}:{ep.port}{path}")
            req.add_header("Host", ep.host_header)
            if ep.cookie:
                req.add_header("Cookie", ep.cookie)
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == want:
                    return
                last = r.status
        except Exception as e:  # keep polling until the deadline
            last = e
        time.sleep(0.2)
    raise TimeoutError(f"{ep.host}:{ep.port}{path} did not answer {want}: {last}")


@dataclass
class Contender:
    name: str
    endpoint: Endpoint
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def rss_kb(self) -> int | None:
        if self.proc is None:
            return None
        return rss_kb(self.proc.pid)

    def cpu_seconds(self) -> float | None:
        if self.proc is None:
            return None
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def log_tail(self) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-3000:]
        return ""


def _spawn(
    argv: list[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")  # the child keeps it; closed with the process
    try:
        return subprocess.Popen(
            argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env or process_env()
        )
    finally:
        log.close()


def direct(site: Site, service_ip: str, port: int) -> Contender:
    return Contender("direct", Endpoint(service_ip, port, site.host_header))


NGINX_CONF = """\
worker_processes {workers};
worker_rlimit_nofile 65536;
daemon off;
master_process on;
user root;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream env {{ server {upstream}; keepalive 64; }}
    map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        client_max_body_size 0;
        location / {{
            proxy_pass http://env;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 3600s;
        }}
    }}
}}
"""


def nginx(site: Site, service_ip: str, upstream_port: int, workdir: Path) -> Contender:
    port = free_port()
    d = workdir / "nginx"
    d.mkdir(parents=True, exist_ok=True)
    conf = d / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(workers=1, dir=d, upstream=f"{service_ip}:{upstream_port}", port=port)
    )
    proc = _spawn(["nginx", "-c", str(conf), "-p", str(d)], d / "stderr.log")
    c = Contender("nginx", Endpoint("127.0.0.1", port, site.host_header), proc, d / "error.log")
    wait_http(c.endpoint, "/1k", 15, proc)
    return c


def chp(site: Site, service_ip: str, upstream_port: int, workdir: Path) -> Contender:
    if not CHP_BIN.exists():
        raise RuntimeError(
            f"{CHP_BIN} is missing: run scripts/install-test-deps.sh (npm ci in bench/)"
        )
    port, api = free_port(), free_port()
    token = secrets.token_hex(16)
    argv = [str(CHP_BIN), "--ip", "127.0.0.1", "--port", str(port), "--api-ip", "127.0.0.1"]
    argv += ["--api-port", str(api), "--host-routing", "--log-level", "warn"]
    log_path = workdir / "chp.log"
    proc = _spawn(argv, log_path, env={**node_env(process_env()), "CONFIGPROXY_AUTH_TOKEN": token})
    c = Contender("chp", Endpoint("127.0.0.1", port, site.host_header), proc, log_path)
    body = json.dumps({"target": f"http://{service_ip}:{upstream_port}"}).encode()
    deadline = time.monotonic() + 15
    while True:
        try:
            req = urllib.request.Request(
                f"http://127.0.0.1:{api}/api/routes/{site.host_header}",
                data=body,
                method="POST",
                headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=2):
                break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(
                    f"configurable-http-proxy did not start: {c.log_tail()}"
                ) from None
            time.sleep(0.2)
    wait_http(c.endpoint, "/1k", 15, proc)
    return c


def _wait_hub(c: Contender, timeout: float = 90) -> None:
    try:
        health = Endpoint(c.endpoint.host, c.endpoint.port, c.endpoint.host_header)
        wait_http(health, "/_hub/health", timeout, c.proc)
        # routed and authenticated: the environment answers through the hub
        wait_http(c.endpoint, "/1k", timeout, c.proc)
    except Exception as e:
        raise RuntimeError(f"{c.name} did not come up: {e}\n{c.log_tail()}") from None


def hub_start(
    site: Site,
    cookie: str,
    workdir: Path,
    name: str = "hub-start",
    source: Path | None = None,
    extra: list[str] | None = None,
) -> Contender:
    """``hub start`` (plus ``extra`` flags); ``source`` runs it from another source tree (an A/B
    baseline, e.g. the previous commit unpacked with ``git archive``) with this checkout's
    virtualenv."""
    port = free_port()
    argv = [str(ROOT / ".venv/bin/hub"), "start", "--labels", str(site.labels)]
    argv += ["--env-file", str(site.env_file), f"--port={port}", *(extra or [])]
    argv += [f"--{k.replace('_', '-')}={v}" for k, v in site.flags(f"audit-{name}").items()]
    env = process_env()
    if source is not None:
        env["PYTHONPATH"] = str(source)
    log_path = workdir / f"{name}.log"
    proc = _spawn(argv, log_path, env=env)
    c = Contender(name, Endpoint("127.0.0.1", port, site.host_header, cookie), proc, log_path)
    _wait_hub(c)
    return c


def hub_workers(site: Site, cookie: str, workdir: Path, workers: int) -> Contender:
    """``hub start --workers N``: worker 0 (control plane and proxy) and N-1 proxy workers on
    one port with ``SO_REUSEPORT``; the kernel spreads connections across them. Measured once
    every worker listens (``/_hub/health`` says so). RSS and CPU cover the process tree."""
    name = f"hub-{workers}w"
    c = hub_start(site, cookie, workdir, name=name, extra=[f"--workers={workers}"])
    health = Endpoint(c.endpoint.host, c.endpoint.port, c.endpoint.host_header)
    deadline = time.monotonic() + 60
    while True:
        ready = _json(health, "/_hub/health").get("workers", {}).get("ready")
        if ready == workers:
            return c
        if time.monotonic() > deadline or c.proc.poll() is not None:
            c.stop()
            raise RuntimeError(f"{name}: {ready} of {workers} workers listen\n{c.log_tail()}")
        time.sleep(0.2)


def hub_mitmdump(site: Site, cookie: str, workdir: Path) -> Contender:
    port = free_port()
    argv = [str(ROOT / ".venv/bin/mitmdump"), "-q", "--mode", f"reverse:http://127.0.0.1:1@{port}"]
    argv += ["-s", str(ROOT / "addons" / "hub.py")]
    argv += ["--set", f"hub_labels={site.labels}", "--set", f"hub_env_file={site.env_file}"]
    for k, v in site.flags("audit-mitmdump").items():
        argv += ["--set", f"hub_{k}={v}"]
    log_path = workdir / "hub-mitmdump.log"
    proc = _spawn(argv, log_path)
    c = Contender(
        "hub-mitmdump", Endpoint("127.0.0.1", port, site.host_header, cookie), proc, log_path
    )
    _wait_hub(c)
    return c


def raise_fd_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    os.environ.setdefault("BENCH_FD_LIMIT", str(resource.getrlimit(resource.RLIMIT_NOFILE)[0]))
