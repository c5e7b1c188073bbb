"""The benchmarked hub's files and its user environment.

A throwaway hub configuration (labels, env file, workspace/state/audit dirs under one temp root)
whose template runs ``bench/upstream.py`` in the real environment image, a session minted with
the hub's own signing code and session store (so every proxied request runs the real session
check), and the control-plane latencies measured through ``hubcontrol.embedded``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import h11
import wsproto

if TYPE_CHECKING:
    from hubcontrol.config import HubConfig
    from hubcontrol.hub import Hub

ROOT = Path(__file__).resolve().parents[1]
ENV_IMAGE = "rediacc-hub/env:latest"
CRIU_BIN = "/opt/rediacc/criu/bin"
PREFIX = "b"
UPSTREAM_PORT = 8000
USER = "bench"  # the prefix of the benchmark's user names
SESSION_SECRET = "be" * 32
# the environment's command: the upstream, with wsproto/h11 (pure Python) copied next to it
COMMAND = (
    "PYTHONPATH=/workspace/.benchlib exec python3 /workspace/upstream.py "
    f"--host __SERVICE_IP__ --port {UPSTREAM_PORT}"
)


def process_env() -> dict[str, str]:
    """The environment the hub processes run with: CRIU first on PATH, as the product docs say."""
    return {**os.environ, "PATH": f"{CRIU_BIN}:{os.environ['PATH']}"}


def unique_user() -> str:
    """A user name no concurrent run shares: per-user cgroups and net-ID claims are host-wide
    and keyed by user name, so two hubs on one host must not both spawn "bench"."""
    return f"{USER}{os.getpid()}"


@dataclass
class Site:
    root: Path
    domain: str = "bench.test"
    user: str = field(default_factory=unique_user)

    @property
    def labels(self) -> Path:
        return self.root / "hub.labels.yaml"

    @property
    def env_file(self) -> Path:
        return self.root / "hub.env"

    @property
    def workspaces(self) -> Path:
        return self.root / "workspaces"

    @property
    def host_header(self) -> str:
        return f"{PREFIX}.{self.domain}"

    def flags(self, audit: str = "audit") -> dict[str, str]:
        return {
            "base_domain": self.domain,
            "workspace_dir": str(self.workspaces),
            "state_dir": str(self.root / "state"),
            "audit_dir": str(self.root / audit),
            "docker_socket": "unix:///var/run/docker.sock",
            "supervisor": "local",
        }

    def write(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.labels.write_text(
            "\n".join(
                [
                    "version: 1",
                    "service: hub",
                    "labels:",
                    f'  rediacc.hub.route.{PREFIX}: "{UPSTREAM_PORT}"',
                    f"  rediacc.hub.image: {ENV_IMAGE}",
                    f'  rediacc.hub.command: "{COMMAND}"',
                    "  rediacc.hub.docker: per-user",
                ]
            )
            + "\n"
        )
        # No provider is contacted: the benchmark's session is minted directly (see mint_cookie).
        values = {
            "HUB_DOMAIN": self.domain,
            "HUB_OAUTH_CLIENT_ID": "hub",
            "HUB_OAUTH_CLIENT_SECRET": "bench-client-secret",
            "HUB_OAUTH_AUTHORIZE_URL": "http://127.0.0.1:9/auth",
            "HUB_OAUTH_TOKEN_URL": "http://127.0.0.1:9/token",
            "HUB_OAUTH_USERINFO_URL": "http://127.0.0.1:9/me",
            "HUB_OAUTH_USERINFO_PATH": "preferred_username",
            "HUB_SESSION_SECRET": SESSION_SECRET,
        }
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        self.env_file.chmod(0o600)

    def prepare_workspace(self, user: str) -> None:
        """Put the upstream and its two libraries into ``user``'s workspace before the spawn."""
        ws = self.workspaces / user
        lib = ws / ".benchlib"
        lib.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "bench" / "upstream.py", ws / "upstream.py")
        for module in (h11, wsproto):
            src = Path(module.__file__).parent
            dst = lib / src.name
            if not dst.exists():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))

    def config(self) -> HubConfig:
        from hubcontrol.config import load_config

        return load_config(self.labels, env_file=self.env_file, flags=self.flags())

    def mint_cookie(self, user: str | None = None) -> str:
        """A real session: stored in the hub's session store, cookie signed with the hub's key.

        Call before the hub processes start (they read the store once at startup).
        """
        from hubproxy.auth.cookies import (
            SESSION_COOKIE,
            SessionCookie,
            derive_key,
            make_session_token,
        )
        from hubproxy.auth.sessionstore import SessionStore

        state = self.root / "state"
        state.mkdir(parents=True, exist_ok=True)
        user = user or self.user
        session = SessionStore.open(state / "sessions.json").create(user)
        token = make_session_token(
            SessionCookie(user=user, sid=session.sid, exp=session.exp),
            derive_key(SESSION_SECRET, "session"),
        )
        return f"{SESSION_COOKIE}={token}"


def _summary(samples: list[float]) -> dict:
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"n": len(samples), "median": statistics.median(samples), "p95": p95}


def control_plane(
    site: Site, cold: int, warm: int, log: Callable[[str], None] = print
) -> tuple[str, dict]:
    """Spawn the benchmark user (a cold spawn), ``cold - 1`` more new users and ``warm`` warm
    starts of a stopped one; returns the benchmark user's service IP and the latencies.

    The extra users are destroyed again; the benchmark user keeps running for the data plane.
    """
    from hubcontrol.embed import embedded

    os.environ["PATH"] = process_env()["PATH"]
    colds: list[float] = []
    warms: list[float] = []
    with embedded(site.config()) as hub:
        site.prepare_workspace(site.user)
        start = time.perf_counter()
        hub.ensure_running(site.user)
        colds.append(time.perf_counter() - start)
        log(f"  cold spawn {site.user}: {colds[-1]:.2f} s")
        extra = [f"{site.user}-c{i}" for i in range(1, 1 + max(cold - 1, 1 if warm else 0))]
        for user in extra:
            site.prepare_workspace(user)
            start = time.perf_counter()
            hub.ensure_running(user)
            colds.append(time.perf_counter() - start)
            log(f"  cold spawn {user}: {colds[-1]:.2f} s")
        if warm and extra:
            for _ in range(warm):
                hub.stop(extra[0], checkpoint=False)
                start = time.perf_counter()
                hub.ensure_running(extra[0])
                warms.append(time.perf_counter() - start)
                log(f"  warm start {extra[0]}: {warms[-1]:.2f} s")
        for user in extra:
            with contextlib.suppress(Exception):
                hub.destroy(user, remove_data=True)
        route = hub.snapshot().get(site.user)
        service_ip = route.service_ip
    return service_ip, {"cold spawn": _summary(colds), "warm start": _summary(warms)}


def destroy_all(site: Site, logs_to: Path | None = None) -> None:
    """Destroy every user of the benchmark hub (daemons, bridges, data); with ``logs_to``, first
    save each environment container's state and output there (for a failed run)."""
    from hubcontrol.embed import embedded

    with embedded(site.config()) as hub:
        for row in hub.status():
            if logs_to is not None:
                with contextlib.suppress(Exception):
                    save_environment_log(hub.hub, row.user, logs_to / f"env-{row.user}.log")
            with contextlib.suppress(Exception):
                hub.destroy(row.user, remove_data=True)


def save_environment_log(hub: Hub, user: str, path: Path) -> None:
    import docker

    from hubcontrol.environment import find
    from hubcontrol.names import safe_name

    client = docker.DockerClient(base_url=hub.docker_url(user))
    container = find(client, safe_name(user))
    if container is None:
        path.write_text("no environment container\n")
        return
    state = container.attrs.get("State", {})
    path.write_bytes(f"state: {state}\n".encode() + container.logs(tail=200))
