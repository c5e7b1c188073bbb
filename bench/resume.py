"""Resume latency of a returning checkpointed user, beside a cold start and a plain ``docker start``,
and where a resume's time goes.

``.venv/bin/python -m bench.resume [--cycles N] [--cold N] [--quick] [--stack small,jupyter]``
(root, docker, CRIU, the environment image from scripts/build-image.sh; the JupyterLab image from
scripts/build-jupyter-image.sh, which this runs, for ``jupyter``). Prints tables to stdout
(``bench.run`` embeds them in docs/performance.md) and progress to stderr.

Two stacks, each in its own hub run:

- ``small``: ``bench/upstream.py`` (Python) in the environment image; first byte of ``GET /1k``.
- ``jupyter``: the seed's JupyterLab command (as root, so CRIU can dump it here) in
  ``rediacc-hub/jupyterlab``, with a **live kernel**: after the cold start a notebook session is
  created and a variable set over the kernel's WebSocket (``bench/jupyter.py``); first byte of
  ``GET /api/status``, and after every resume the same kernel must still print the variable
  (timed too: "kernel answers", first request to the execute reply).

**Where the time goes**: after every resume the hub's own record of that start
(``last_start`` in the user's record, ``hubcontrol.timings``: monotonic marks of each step and
its parts, the same line the hub logs) is read, and the medians per step and part are printed
beside what lies outside the hub's start (the proxy, the progress page, this client's polling).

What is measured, all on this machine in one run, each from the first request to the first byte
of the environment's own answer (``GET /1k`` from ``bench/upstream.py``, Python, in the real
environment image):

- **resume**: ``hub start`` (real proxy, real session cookie) with ``--idle-timeout=2s
  --checkpoint``; the user goes quiet, the idle culler CRIU-checkpoints the environment and stops
  the user's dockerd; then the user's next request. The hub answers it at once with its progress
  page (503) while it starts the daemon, restores and verifies the container; the client waits
  as that page does, on the hub's long poll (``/_hub/api/progress?wait=20&since=``, answered when
  the start moves on), and asks again once it says ready, until the environment answers. Every
  cycle's restore must be verified, or the run fails.
- **cold start**: the first request of a new user: daemon, bridge, image transfer from the host
  daemon (the image is present on the host), container, first byte: same proxy, same polling.
- **docker start**: a plain ``docker start`` of a stopped container of the same image and
  command on an already running daemon (a scratch dockerd), polled directly: the floor any
  restart of a process tree pays without a daemon start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.clients import Endpoint, progress_poll
from bench.contenders import _spawn, free_port, wait_http
from bench.site import (
    ENV_IMAGE,
    PREFIX,
    UPSTREAM_PORT,
    Site,
    destroy_all,
    process_env,
    unique_user,
)
from hubcontrol import timings

# Long enough that, with --baseline, both hubs' resumes of a cycle end before either dumps again
# (a resume here: about 2 s small, 5-8 s JupyterLab; a kernel's start is a 1-2 s request).
IDLE_TIMEOUT = {"small": "5s", "jupyter": "20s"}
POLL = 0.05
JUPYTER_IMAGE = "rediacc-hub/jupyterlab:latest"
# the seed's Jupyter command, word for word; root, checkpointed (hubcontrol.checkpoint: this
# host's root lacks CAP_SYS_RESOURCE)
JUPYTER_COMMAND = (
    "exec jupyter lab --ip=__SERVICE_IP__ --port=8888 --no-browser "
    "--NotebookApp.token='' --NotebookApp.password=''"
)
PATHS = {"small": "/1k", "jupyter": "/api/status"}  # the environment's own answer
SCRATCH_INDEX = 30  # the checkpoint work's scratch daemon index range is 30-39


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def first_byte(
    host: str, port: int, host_header: str, cookie: str | None, path: str = "/1k"
) -> tuple[int, float]:
    """(status, seconds to the first byte of the answer) of one ``GET path``; status 0: refused."""
    head = f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n"
    if cookie:
        head += f"Cookie: {cookie}\r\n"
    start = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=30) as sock:
            sock.sendall((head + "\r\n").encode())
            data = sock.recv(64)
            took = time.perf_counter() - start
            while chunk := sock.recv(65536):  # drain, so the server sees a normal close
                data += chunk
    except OSError:
        return 0, time.perf_counter() - start
    parts = data.split(b" ", 2)
    return (int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0), took


def progress_wait(host: str, port: int, host_header: str, cookie: str, since: str) -> str:
    """One long poll of the progress page (``clients.progress_poll``); returns the view's
    version for the next one ("" when the hub gave no view)."""
    url = f"http://{host}:{port}/_hub/api/progress"
    headers = {"Host": host_header, "Cookie": cookie, "Sec-Fetch-Mode": "cors"}

    def get(params: Mapping[str, str]) -> httpx.Response:
        try:
            return httpx.get(url, params=params, headers=headers, timeout=30)
        except httpx.HTTPError:
            return httpx.Response(502)  # no view: waited on like any answer without one

    try:
        view = progress_poll(get, since)
    except ValueError:  # a 200 that is not JSON
        view = {}
    return str(view.get("version", ""))


def until_environment(
    host: str,
    port: int,
    host_header: str,
    cookie: str | None,
    timeout: float = 180,
    path: str = "/1k",
) -> float:
    """Seconds from the first request to the first byte of the environment's own 200, waiting
    between tries as the hub's progress page does (``progress_wait``)."""
    start = time.perf_counter()
    since = ""
    while True:
        sent = time.perf_counter()
        status, took = first_byte(host, port, host_header, cookie, path)
        if status == 200:
            return sent + took - start
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"no answer from the environment within {timeout} s (last {status})")
        if status == 503 and cookie:  # the progress page
            since = progress_wait(host, port, host_header, cookie, since)
        else:
            time.sleep(POLL)


def summary(samples: list[float]) -> dict:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"n": len(samples), "median": statistics.median(samples), "p95": p95}


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


def daemon_alive(site: Site, user: str) -> bool:
    pidfile = site.workspaces / f"{user}-docker" / ".rediacc" / "docker" / "docker.pid"
    try:
        os.kill(int(pidfile.read_text().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


def write_site(root: Path, stack: str = "small", user: str | None = None) -> Site:
    site = Site(root, domain="resume.test", user=user or unique_user())
    site.write()
    if stack == "jupyter":
        labels = {
            f"rediacc.hub.route.{PREFIX}": "8888",
            "rediacc.hub.image": JUPYTER_IMAGE,
            "rediacc.hub.command": JUPYTER_COMMAND,
            "rediacc.hub.workspace": "/home/jovyan/work",
            "rediacc.hub.docker": "per-user",
        }
        lines = ["version: 1", "service: hub", "labels:"]
        lines += [f"  {k}: {json.dumps(v)}" for k, v in labels.items()]
        site.labels.write_text("\n".join(lines) + "\n")
    # Checkpointed as root: hosts whose root lacks CAP_SYS_RESOURCE (like this Firecracker VM)
    # cannot CRIU-dump processes of another uid.
    with site.labels.open("a") as f:
        f.write('  rediacc.hub.user: root\n  rediacc.hub.checkpoint: "true"\n')
    return site


@dataclass
class Run:
    """One stack's numbers: cold starts, resumes, and each resume's own breakdown."""

    stack: str
    tree: Path | None = None  # --baseline: another source tree's hub; None: this checkout's
    colds: list[float] = field(default_factory=list)
    resumes: list[float] = field(default_factory=list)
    kernel: list[float] = field(default_factory=list)  # jupyter: first request -> execute reply
    dumps: list[float] = field(default_factory=list)
    starts: list[dict] = field(default_factory=list)  # the user's last_start after each resume

    @property
    def label(self) -> str:
        return f"{self.stack} (baseline)" if self.tree else self.stack


class HubBench:
    """One ``hub start`` (of source tree ``tree``, default this checkout's) serving one stack:
    its cold starts, then resumes on demand (``resume``), each checked and broken down."""

    def __init__(self, site: Site, users: list[str], stack: str, tree: Path | None) -> None:
        self.site, self.users, self.stack = site, users, stack
        self.run = Run(stack, tree)
        self.path = PATHS[stack]
        self.cookies = {u: site.mint_cookie(u) for u in users}
        self.state = site.root / "state"
        self.proc: subprocess.Popen | None = None
        self.kernel: str | None = None
        self.secret = ""

    def start(self) -> None:
        site = self.site
        for user in self.users:
            site.prepare_workspace(user)
        self.port = free_port()
        argv = [str(Path(sys.executable).parent / "hub"), "start", "--labels", str(site.labels)]
        argv += ["--env-file", str(site.env_file), f"--port={self.port}"]
        argv += [f"--{k.replace('_', '-')}={v}" for k, v in site.flags().items()]
        argv += [f"--idle-timeout={IDLE_TIMEOUT[self.stack]}", "--checkpoint"]
        env = process_env()
        if self.run.tree is not None:  # the hub and the policy sockets it spawns import it
            env["PYTHONPATH"] = str(self.run.tree)
        self.proc = _spawn(argv, site.root / "hub.log", env=env)
        wait_http(Endpoint("127.0.0.1", self.port, site.host_header), "/_hub/health", 60, self.proc)

    def cold_starts(self) -> None:
        for user in self.users:
            took = self._until_environment(user)
            self.run.colds.append(took)
            log(f"  {self.run.label} cold start {user}: {took:.2f} s")
        if self.stack == "jupyter":
            from bench import jupyter

            self.kernel = jupyter.new_kernel(self.endpoint)
            self.secret = os.urandom(6).hex()
            code = f"import os\nkept = {self.secret!r}\nprint(os.getpid())"
            jupyter.execute(self.endpoint, self.kernel, code)
            log(f"  {self.run.label}: kernel {self.kernel} holds a variable")

    @property
    def user(self) -> str:
        return self.users[0]

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint("127.0.0.1", self.port, self.site.host_header, self.cookies[self.user])

    def _until_environment(self, user: str) -> float:
        host = self.site.host_header
        return until_environment("127.0.0.1", self.port, host, self.cookies[user], path=self.path)

    def checkpointed(self) -> bool:
        rec = read_json(self.state / "users" / f"{self.user}.json")
        return rec.get("state") == "checkpointed" and not daemon_alive(self.site, self.user)

    def resume(self, cycle: int, cycles: int) -> None:
        """The user's next request after the checkpoint, to the environment's first byte."""
        run, user = self.run, self.user
        health = read_json(self.state / "checkpoint" / f"{user}.json")
        start = time.perf_counter()
        took = self._until_environment(user)
        if self.kernel is not None:
            from bench import jupyter

            out = jupyter.execute(self.endpoint, self.kernel, "print(kept)")
            run.kernel.append(time.perf_counter() - start)
            if out.strip() != self.secret:
                raise RuntimeError(f"cycle {cycle}: the kernel lost its variable: {out!r}")
        rec = read_json(self.state / "users" / f"{user}.json")
        restored = rec.get("restored") or {}
        if rec.get("restore_error") or "restored with their memory" not in restored.get(
            "detail", ""
        ):
            raise RuntimeError(f"cycle {cycle}: not a verified restore: {rec}")
        last = rec.get("last_start") or {}
        if last.get("outcome") != "restored":
            raise RuntimeError(f"cycle {cycle}: the hub's last start was not a restore: {last}")
        run.resumes.append(took)
        run.starts.append(last)
        run.dumps.append(health.get("last_dump_seconds") or 0.0)
        log(
            f"  {run.label} resume {cycle}/{cycles}: {took:.2f} s "
            + (f"(kernel answered at {run.kernel[-1]:.2f} s) " if self.kernel else "")
            + f"hub: {timings.describe(last)}"
        )

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def measure_interleaved(benches: list[HubBench], cycles: int) -> None:
    """Resume every bench's user once per cycle, in an order that alternates per cycle, once all
    of them are checkpointed (the idle timeout is long enough that no hub dumps while another
    resumes): the trees compared see the same machine, minute by minute."""
    for bench in benches:
        bench.start()
        bench.cold_starts()
    for cycle in range(1, cycles + 1):
        wait_for(lambda: all(b.checkpointed() for b in benches), 240, "every user checkpointed")
        order = benches if cycle % 2 else benches[::-1]
        for bench in order:
            bench.resume(cycle, cycles)


def measure_docker_start(cycles: int) -> list[float]:
    """Plain ``docker start`` of the same image and command on a running scratch dockerd."""
    from tests.support.dockerd import scratch_dockerd

    samples = []
    root = Path(tempfile.mkdtemp(prefix="hub-bench-plain-"))
    Site(root).prepare_workspace("plain")
    workspace = root / "workspaces" / "plain"
    with scratch_dockerd(SCRATCH_INDEX) as daemon:
        client = daemon.client()
        try:
            save = subprocess.Popen(["docker", "save", ENV_IMAGE], stdout=subprocess.PIPE)
            client.images.load(save.stdout)
            save.wait()
            container = client.containers.create(
                ENV_IMAGE,
                [
                    "bash",
                    "-c",
                    "PYTHONPATH=/workspace/.benchlib exec python3 /workspace/upstream.py"
                    f" --host 0.0.0.0 --port {UPSTREAM_PORT}",
                ],
                init=True,
                user="root",
                volumes={str(workspace): {"bind": "/workspace", "mode": "rw"}},
            )
            for cycle in range(1, cycles + 1):
                start = time.perf_counter()
                container.start()
                container.reload()
                ip = container.attrs["NetworkSettings"]["IPAddress"]
                while first_byte(ip, UPSTREAM_PORT, "plain", None)[0] != 200:
                    if time.perf_counter() - start > 60:
                        raise TimeoutError("plain container never answered")
                    time.sleep(POLL)
                samples.append(time.perf_counter() - start)
                log(f"  docker start {cycle}/{cycles}: {samples[-1]:.2f} s")
                container.stop(timeout=5)
        finally:
            client.close()
            shutil.rmtree(root, ignore_errors=True)
    return samples


def breakdown(run: Run) -> list[str]:
    """Medians of the hub's own step and part timings over a stack's resumes."""
    steps: dict[str, list[float]] = {}
    parts: dict[str, dict[str, list[float]]] = {}
    order: list[str] = []
    for start in run.starts:
        for step in start.get("steps", []):
            name = step["step"]
            if name not in steps:
                order.append(name)
            steps.setdefault(name, []).append(step["seconds"])
            for part, seconds in step.get("parts", {}).items():
                parts.setdefault(name, {}).setdefault(part, []).append(seconds)
    n = len(run.starts)
    med = lambda xs: statistics.median(xs + [0.0] * (n - len(xs)))  # noqa: E731 - absent: 0 s
    hub = [s.get("seconds", 0.0) for s in run.starts]
    outside = [total - h for total, h in zip(run.resumes, hub, strict=True)]
    out = [f"| where a {run.label} resume's time goes (median of {n}) | s |", "|---|---|"]
    for name in order:
        out.append(f"| {name} | {med(steps[name]):.3f} |")
        for part, xs in parts.get(name, {}).items():
            out.append(f"| &nbsp;&nbsp;{name}: {part} | {med(xs):.3f} |")
    out.append(f"| the hub's start, in all | {statistics.median(hub):.3f} |")
    out.append("| outside it (proxy, progress page and its long poll, the request after it) "
               f"| {statistics.median(outside):.3f} |")  # fmt: skip
    return out


def report(runs: list[Run], plain: list[float]) -> str:
    out = ["| first request -> first byte | n | median s | p95 s |", "|---|---|---|---|"]
    rows = {}
    for run in runs:
        rows[f"resume, {run.label} (checkpointed user)"] = summary(run.resumes)
        if run.kernel:
            rows[f"resume, {run.label}: the live kernel answers"] = summary(run.kernel)
        rows[f"cold start, {run.label} (new user)"] = summary(run.colds)
    if plain:
        rows["docker start (plain, small)"] = summary(plain)
    for name, s in rows.items():
        out.append(f"| {name} | {s['n']} | {s['median']:.2f} | {s['p95']:.2f} |")
    for run in runs:
        r, c = statistics.median(run.resumes), statistics.median(run.colds)
        line = f"{run.label}: resume / cold start {r / c:.2f}x"
        if plain and run.stack == "small":
            line += f"; resume / docker start {r / statistics.median(plain):.2f}x"
        line += f"; checkpoint (pre_dump, freeze, dump) median {statistics.median(run.dumps):.2f} s"
        out += ["", line, ""]
        out += breakdown(run)
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--cold", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3 cycles, 2 cold starts")
    parser.add_argument("--stack", default="small,jupyter", help="small, jupyter or both (a,b)")
    parser.add_argument("--no-plain", action="store_true", help="skip the plain docker start")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="also run the hub from this source tree (git archive REV hubproxy hubcontrol hubcli "
        "| tar -x -C DIR), before this checkout's, stack by stack: a change against its parent",
    )
    args = parser.parse_args()
    if args.quick:
        args.cycles, args.cold = 3, 2
    stacks = [s for s in args.stack.split(",") if s]
    if not stacks or set(stacks) - set(PATHS):
        sys.exit(f"--stack: one or more of {', '.join(PATHS)}, comma-separated; got {args.stack!r}")
    if os.geteuid() != 0:
        sys.exit("bench.resume needs root (per-user dockerd, CRIU)")
    if "jupyter" in stacks:
        script = Path(__file__).resolve().parents[1] / "scripts" / "build-jupyter-image.sh"
        subprocess.run([str(script)], check=True)  # skipped when its recipe is unchanged
    runs = []
    trees = [args.baseline.resolve(), None] if args.baseline else [None]
    for stack in stacks:
        benches = []
        for tree in trees:
            root = Path(tempfile.mkdtemp(prefix=f"hub-bench-resume-{stack}-"))
            # a user name per hub: cgroups and net-ID claims are host-wide, by user name
            site = write_site(root, stack, user=unique_user() + ("b" if tree else ""))
            users = [site.user] + [f"{site.user}c{i}" for i in range(1, args.cold)]
            benches.append(HubBench(site, users, stack, tree))
            log(f"resume bench ({stack}, {tree or 'this checkout'}) in {root}: {args.cycles} "
                f"cycles, {len(users)} cold starts")  # fmt: skip
        try:
            measure_interleaved(benches, args.cycles)
            runs += [b.run for b in benches]
        finally:
            for bench in benches:
                bench.stop()
                with contextlib.suppress(Exception):
                    destroy_all(bench.site)
                # the hub's log (timeline of every checkpoint and restore) outlives the run
                artifacts = Path(__file__).resolve().parents[1] / "test-artifacts"
                with contextlib.suppress(OSError):
                    artifacts.mkdir(exist_ok=True)
                    tag = "-baseline" if bench.run.tree else ""
                    log_copy = artifacts / f"bench-resume-{stack}{tag}-hub.log"
                    shutil.copy(bench.site.root / "hub.log", log_copy)
                shutil.rmtree(bench.site.root, ignore_errors=True)
    plain = [] if args.no_plain or "small" not in stacks else measure_docker_start(args.cycles)
    print(report(runs, plain))


if __name__ == "__main__":
    main()
