"""The whole product for browser tests: ``hub start`` as a subprocess with the real Hub
(per-user dockerd via LocalSupervisor, the environment image ``rediacc-hub/env:latest`` with ttyd
and python3), and the real npm OIDC provider.

Users' environments outlive a hub process by design; ``HubSite.cleanup()`` destroys every user
(daemon, bridges, data) through ``hubcontrol.embedded`` once the hub has stopped.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.support import leaks

ROOT = Path(__file__).resolve().parents[2]
ENV_IMAGE = "rediacc-hub/env:latest"
CRIU_BIN = "/opt/rediacc/criu/bin"
ROUTES = {"term": 7681, "code": 8080}
# ttyd with the DOM renderer (so a test can read the terminal) and a plain file server on the
# workspace for the `code` prefix.
COMMAND = (
    "ttyd --writable -t rendererType=dom --port 7681 bash & "
    "exec python3 -m http.server 8080 --bind __SERVICE_IP__ --directory /workspace"
)
# A second template for the template switch at login: it serves /etc instead of /workspace.
ALT_COMMAND = (
    "ttyd --writable -t rendererType=dom --port 7681 bash & "
    "exec python3 -m http.server 8080 --bind __SERVICE_IP__ --directory /etc"
)
CLIENT_SECRET = "e2e-client-secret"
SESSION_SECRET = "5e" * 32


def labels_file(
    path: Path,
    *,
    user: str = "vscode",
    extra: tuple[str, ...] = (f'rediacc.hub.templates.alt.command: "{ALT_COMMAND}"',),
) -> Path:
    """The e2e hubs' hub.labels.yaml: the routes and the ttyd template, plus ``extra`` labels."""
    lines = ["version: 1", "service: hub", "labels:"]
    lines += [f'  rediacc.hub.route.{p}: "{port}"' for p, port in ROUTES.items()]
    lines += [
        f"  rediacc.hub.image: {ENV_IMAGE}",
        f'  rediacc.hub.command: "{COMMAND}"',
        "  rediacc.hub.docker: per-user",
        f"  rediacc.hub.user: {user}",
    ]
    lines += [f"  {label}" for label in extra]
    path.write_text("\n".join(lines) + "\n")
    return path


def env_file(path: Path, issuer: str, domain: str, **extra: str) -> Path:
    values = {
        "HUB_DOMAIN": domain,
        "HUB_OAUTH_CLIENT_ID": "hub",
        "HUB_OAUTH_CLIENT_SECRET": CLIENT_SECRET,
        "HUB_OAUTH_AUTHORIZE_URL": f"{issuer}/auth",
        "HUB_OAUTH_TOKEN_URL": f"{issuer}/token",
        "HUB_OAUTH_USERINFO_URL": f"{issuer}/me",
        "HUB_OAUTH_USERINFO_PATH": "preferred_username",
        "HUB_SESSION_SECRET": SESSION_SECRET,
        **extra,
    }
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(0o600)
    return path


@dataclass
class HubSite:
    root: Path
    port: int
    domain: str
    labels: Path
    env: Path
    proc: subprocess.Popen | None = None
    # The hub in a session of its own, as the quick start (`setsid`) and systemd (a unit's own
    # cgroup) run it: the kernel then schedules it as a group of its own, not as one of the
    # processes of whoever started it (bench/load.py, whose clients share that group).
    own_session: bool = False

    def url(self, prefix: str, path: str = "/") -> str:
        return f"http://{prefix}.{self.domain}:{self.port}{path}"

    @property
    def flags(self) -> dict:
        return {
            "port": str(self.port),
            "base_domain": self.domain,
            "workspace_dir": str(self.root / "workspaces"),
            "state_dir": str(self.root / "state"),
            "audit_dir": str(self.root / "audit"),
            "docker_socket": "unix:///var/run/docker.sock",
            "supervisor": "local",
        }

    def argv(self) -> list[str]:
        args = [str(ROOT / ".venv/bin/hub"), "start", "--labels", str(self.labels)]
        args += ["--env-file", str(self.env)]
        args += [f"--{k.replace('_', '-')}={v}" for k, v in self.flags.items()]
        return args

    def start(self, timeout: float = 60) -> None:
        log = open(self.root / f"hub-{self.domain}.log", "ab")  # closed in stop()
        env = {**os.environ, "PATH": f"{CRIU_BIN}:{os.environ['PATH']}"}
        self.proc = subprocess.Popen(
            self.argv(), stdout=log, stderr=log, env=env, cwd=self.root,
            start_new_session=self.own_session,
        )  # fmt: skip
        self._log = log
        try:
            self._wait_healthy(timeout)
        except BaseException:
            self.stop()  # fixtures call start() before their try: no hub may outlive a failure
            raise

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited: {self.read_log()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(
                    f"http://127.0.0.1:{self.port}/_hub/health",
                    headers={"Host": f"term.{self.domain}:{self.port}"},
                    timeout=1,
                )
                if r.status_code == 200:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"hub did not become healthy: {self.read_log()[-3000:]}")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._log.close()
        self.proc = None
        return code

    def read_log(self) -> str:
        path = self.root / f"hub-{self.domain}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def cleanup(self) -> None:
        """Destroy every user environment the hub made (daemons, bridges, data), then check the
        host: AssertionError naming what is left (a daemon, mount, claim, bridge, rule, cgroup)
        or which destroy failed, so a leak fails the test run instead of piling up on the host."""
        from hubcontrol.config import load_config
        from hubcontrol.embed import embedded

        net_ids = leaks.net_ids_under(self.root)
        errors = []
        config = load_config(self.labels, env_file=self.env, flags=self.flags)
        with warnings.catch_warnings():
            # docker-py clients the control plane dropped during destroy are collected here
            warnings.simplefilter("ignore", ResourceWarning)
            with embedded(config) as hub:
                for row in hub.status():
                    try:
                        hub.destroy(row.user, remove_data=True)
                    except Exception as e:  # destroy the others, report below
                        errors.append(f"destroying {row.user}: {e!r}")
            gc.collect()
        left = leaks.leftovers(self.root, net_ids)
        assert not errors and not left, "\n".join(["cleanup left:", *errors, *left])


def new_site(root: Path, issuer: str, domain: str, port: int, **extra_env: str) -> HubSite:
    # what a killed earlier run left mounted (its dockerd gone) under the test tmp dirs
    leaks.sweep_stale_daemon_mounts()
    root.mkdir(parents=True, exist_ok=True)
    return HubSite(
        root=root,
        port=port,
        domain=domain,
        labels=labels_file(root / "hub.labels.yaml"),
        env=env_file(root / f"hub-{domain}.env", issuer, domain, **extra_env),
    )
