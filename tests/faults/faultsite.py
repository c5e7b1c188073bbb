"""What the fault suite's tests share: the hub site they inject faults into, and finding its
processes (tests/faults/conftest.py has the fixtures and what the suite runs).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import httpx

from hubcli.hubclient import HubClient
from tests.support.hubprocess import HubSite
from tests.support.webclient import browser, provider_login

HOST_SOCKET = "/var/run/docker.sock"
DOMAIN = "faults.test"
ROUTES = {"code": 8080, "term": 7681}
# busybox httpd serves the workspace on `code` (what the user sees), and `/` on `term`
COMMAND = "httpd -p __SERVICE_IP__:7681 -h / && exec httpd -f -p __SERVICE_IP__:8080 -h /workspace"


def labels_text(image: str, extra: tuple[str, ...] = ()) -> str:
    """The fault hubs' hub.labels.yaml: a per-user-daemon default template with checkpoints
    on, and ``host``, the same on the host's daemon (``rediacc.hub.docker`` empty)."""
    lines = ["version: 1", "service: hub", "labels:"]
    lines += [f'  rediacc.hub.route.{p}: "{port}"' for p, port in ROUTES.items()]
    lines += [
        f"  rediacc.hub.image: {image}",
        f'  rediacc.hub.command: "{COMMAND}"',
        "  rediacc.hub.docker: per-user",
        "  rediacc.hub.user: root",
        '  rediacc.hub.checkpoint: "true"',
        f"  rediacc.hub.templates.host.image: {image}",
        f'  rediacc.hub.templates.host.command: "{COMMAND}"',
        '  rediacc.hub.templates.host.docker: ""',
        "  rediacc.hub.templates.host.user: root",
        *(f"  {label}" for label in extra),
    ]
    return "\n".join(lines) + "\n"


@dataclass
class FaultSite(HubSite):
    """A ``HubSite`` with the fault suite's flags and the means to hurt it."""

    issuer: str = ""
    extra_flags: dict = field(default_factory=dict)

    @property
    def flags(self) -> dict:
        # idle culling off: checkpoints are asked for through the API, at a known moment
        return {**super().flags, "checkpoint": "true", **self.extra_flags}

    @property
    def workspaces(self) -> Path:
        return self.root / "workspaces"

    @property
    def state(self) -> Path:
        return self.root / "state"

    # -- the hub process --

    def kill(self) -> None:
        """SIGKILL the hub process (nothing of it runs its cleanup), as a crash or OOM kill."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()
        self.proc = None

    def restart(self) -> None:
        if self.proc is not None:
            self.stop()
        self.start()

    def log_since(self, mark: int) -> str:
        return self.read_log()[mark:]

    def log_mark(self) -> int:
        return len(self.read_log())

    # -- what a user does --

    def url(self, prefix: str, path: str = "/") -> str:
        return f"http://{prefix}.{self.domain}:{self.port}{path}"

    def browser(self) -> httpx.Client:
        """A cookie-keeping client that navigates as a browser does (HTML wanted), sending
        ``*.faults.test`` to the hub's port; the provider is reached directly."""
        return browser(self.domain, self.port, timeout=60)

    @contextlib.contextmanager
    def login(self, user: str, *, template: str | None = None) -> Iterator[httpx.Client]:
        """Log ``user`` in through the proxy and the provider's form in a new browser, wait for
        the environment (as the progress page does); yields the browser with its session."""
        with self.browser() as client:
            self.sign_in(client, user, template=template)
            yield client

    def sign_in(
        self, client: httpx.Client, user: str, *, template: str | None = None, wait: bool = True
    ) -> None:
        """Log in in ``client``; with ``wait``, until the environment is ready."""
        path = f"/_hub/login?template={template}" if template else "/"
        r = client.get(self.url("code", path))
        if "/interaction/" in str(r.url):
            r = provider_login(client, r, user)
        assert r.url.host == f"code.{self.domain}", (r.url, r.text[:300])
        if wait:
            self.wait_ready(client, user)

    def wait_ready(self, client: httpx.Client, user: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            p = client.get(
                self.url("code", "/_hub/api/progress"), headers={"Sec-Fetch-Mode": "cors"}
            )
            body = (
                p.json() if p.headers.get("content-type", "").startswith("application/json") else {}
            )
            if p.status_code == 200 and body.get("ready"):
                return body
            if body.get("state") == "failed":
                raise AssertionError(f"{user}: start failed: {body}\n{self.read_log()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{user} not ready: {p.status_code} {p.text[:300]}")
            time.sleep(0.2)

    def went_to_provider(self, r: httpx.Response) -> bool:
        """Whether getting ``r`` passed by the provider (the session was not enough)."""
        host = self.issuer.split("//")[1]
        return any(host in str(h.url) for h in [*r.history, r])

    def revisit(self, client: httpx.Client, path: str, *, timeout: float = 60) -> httpx.Response:
        """The user comes back to ``path`` with the session they had: the visit starts (or
        resumes) their environment if needed; the page once it is ready. AssertionError when
        the session no longer counted (the provider was visited)."""
        r = client.get(self.url("code", path))
        assert not self.went_to_provider(r), "the session was lost: the user logs in again"
        self.wait_ready(client, "", timeout=timeout)
        return self.page(client, path)

    def page(self, client: httpx.Client, path: str = "/") -> httpx.Response:
        """What the user sees at ``path`` of the ``code`` route (their workspace's files)."""
        return client.get(self.url("code", path))

    # -- what an operator sees --

    def record(self, user: str) -> dict:
        path = self.state / "users" / f"{user}.json"
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def wait_record(self, user: str, timeout: float = 60, **want) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            rec = self.record(user)
            if all(rec.get(k) == v for k, v in want.items()):
                return rec
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{user}: record {rec} is not {want}:\n{self.read_log()[-3000:]}"
                )
            time.sleep(0.1)

    def api(self) -> HubClient:
        return HubClient(url=f"http://127.0.0.1:{self.port}", token_file=self.state / "admin.token")

    @contextlib.contextmanager
    def daemon(self, user: str) -> Iterator[docker.DockerClient]:
        """The user's own dockerd (root's view, past the policy)."""
        net_id = self.record(user)["net_id"]
        client = docker.DockerClient(
            base_url=f"unix:///run/rediacc/hub/{net_id}/docker.sock", version="1.41", timeout=60
        )
        try:
            yield client
        finally:
            client.close()

    def container(self, user: str) -> dict:
        with self.daemon(user) as client:
            return client.api.inspect_container(f"hub-{user}")

    def audit_events(self, user: str) -> list[dict]:
        """The user's audit log as records (one JSON object a line)."""
        path = self.root / "audit" / f"{user}.log"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def gc(self, *args: str) -> subprocess.CompletedProcess:
        """``hub gc`` on this site's workspace dir, as the operator (or the timer) runs it."""
        return subprocess.run(
            [str(Path(self.argv()[0])), "gc", str(self.workspaces), "--json", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )


def poll(what: Callable[[], object], timeout: float, interval: float = 0.05, why: str = ""):
    """``what()`` once it is truthy, else AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s: {why or what}")
        time.sleep(interval)


def processes(match: Callable[[list[str]], bool]) -> list[int]:
    """PIDs whose argv ``match`` (read from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdecimal():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[:-1]
        except OSError:
            continue
        if argv and match([a.decode(errors="replace") for a in argv]):
            found.append(int(entry))
    return found


def dockerd_pid(site: FaultSite, user: str) -> int | None:
    data_root = f"{site.workspaces / f'{user}-docker'}/"
    pids = processes(lambda a: a[0].endswith("dockerd") and any(data_root in x for x in a))
    return pids[0] if pids else None


def policy_pid(net_id: int) -> int | None:
    listen = f"--listen=/run/rediacc/hub/{net_id}/env/docker.sock"
    pids = processes(lambda a: "hubcontrol.policysocket" in a and listen in a)
    return pids[0] if pids else None
