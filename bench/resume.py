"""Resume latency of a returning checkpointed user, beside a cold start and a plain ``docker start``.

``.venv/bin/python -m bench.resume [--cycles N] [--cold N] [--quick]`` (root, docker, CRIU, the
environment image from scripts/build-image.sh). Prints a table to stdout (``bench.run`` embeds it
in docs/performance.md) and progress to stderr.

What is measured, all on this machine in one run, each from the first request to the first byte
of the environment's own answer (``GET /1k`` from ``bench/upstream.py``, Python, in the real
environment image):

- **resume**: ``hub start`` (real proxy, real session cookie) with ``--idle-timeout=2s
  --checkpoint``; the user goes quiet, the idle culler CRIU-checkpoints the environment and stops
  the user's dockerd; then the user's next request. The hub answers it at once with its progress
  page (503) while it starts the daemon, restores and verifies the container; the client re-asks
  every 50 ms (a browser's progress page polls less often) until the environment answers. Every
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
from collections.abc import Callable
from pathlib import Path

from bench.clients import Endpoint
from bench.contenders import _spawn, free_port, wait_http
from bench.site import ENV_IMAGE, UPSTREAM_PORT, Site, destroy_all, process_env

IDLE_TIMEOUT = "2s"
POLL = 0.05
SCRATCH_INDEX = 30  # the checkpoint work's scratch daemon index range is 30-39


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def first_byte(host: str, port: int, host_header: str, cookie: str | None) -> tuple[int, float]:
    """(status, seconds to the first byte of the answer) of one ``GET /1k``; status 0: refused."""
    head = f"GET /1k HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n"
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


def until_environment(
    host: str, port: int, host_header: str, cookie: str | None, timeout: float = 180
) -> float:
    """Seconds from the first request to the first byte of the environment's own 200."""
    start = time.perf_counter()
    while True:
        sent = time.perf_counter()
        status, took = first_byte(host, port, host_header, cookie)
        if status == 200:
            return sent + took - start
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"no answer from the environment within {timeout} s (last {status})")
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


def write_site(root: Path) -> Site:
    site = Site(root, domain="resume.test")
    site.write()
    # Checkpointed as root: hosts whose root lacks CAP_SYS_RESOURCE (like this Firecracker VM)
    # cannot CRIU-dump processes of another uid.
    with site.labels.open("a") as f:
        f.write('  rediacc.hub.user: root\n  rediacc.hub.checkpoint: "true"\n')
    return site


def measure_hub(site: Site, users: list[str], cycles: int) -> tuple[list, list, list]:
    """(cold starts, resumes, restore breakdown) through ``hub start``."""
    cookies = {u: site.mint_cookie(u) for u in users}
    for user in users:
        site.prepare_workspace(user)
    port = free_port()
    argv = [str(Path(sys.executable).parent / "hub"), "start", "--labels", str(site.labels)]
    argv += ["--env-file", str(site.env_file), f"--port={port}"]
    argv += [f"--{k.replace('_', '-')}={v}" for k, v in site.flags().items()]
    argv += [f"--idle-timeout={IDLE_TIMEOUT}", "--checkpoint"]
    proc = _spawn(argv, site.root / "hub.log", env=process_env())
    state = site.root / "state"
    try:
        wait_http(Endpoint("127.0.0.1", port, site.host_header), "/_hub/health", 60, proc)
        colds = []
        for user in users:
            took = until_environment("127.0.0.1", port, site.host_header, cookies[user])
            colds.append(took)
            log(f"  cold start {user}: {took:.2f} s")
        resumes, breakdown = [], []
        user = users[0]
        for cycle in range(1, cycles + 1):
            wait_for(
                lambda: (
                    read_json(state / "users" / f"{user}.json").get("state") == "checkpointed"
                    and not daemon_alive(site, user)
                ),
                120,
                f"{user} to be checkpointed",
            )
            health = read_json(state / "checkpoint" / f"{user}.json")
            took = until_environment("127.0.0.1", port, site.host_header, cookies[user])
            rec = read_json(state / "users" / f"{user}.json")
            restored = rec.get("restored") or {}
            if rec.get("restore_error") or "restored with their memory" not in restored.get(
                "detail", ""
            ):
                raise RuntimeError(f"cycle {cycle}: not a verified restore: {rec}")
            resumes.append(took)
            breakdown.append((health.get("last_dump_seconds"), restored.get("seconds")))
            log(
                f"  resume {cycle}/{cycles}: {took:.2f} s (CRIU restore+verify "
                f"{restored.get('seconds', 0):.2f} s; dump was {health.get('last_dump_seconds')} s)"
            )
        return colds, resumes, breakdown
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


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


def report(
    colds: list[float],
    resumes: list[float],
    breakdown: list[tuple[float | None, float | None]],
    plain: list[float],
) -> str:
    rows = {
        "resume (checkpointed user)": summary(resumes),
        "cold start (new user)": summary(colds),
        "docker start (plain)": summary(plain),
    }
    out = ["| first request -> first byte | n | median s | p95 s |", "|---|---|---|---|"]
    for name, s in rows.items():
        out.append(f"| {name} | {s['n']} | {s['median']:.2f} | {s['p95']:.2f} |")
    r, c, p = (rows[k]["median"] for k in rows)
    out.append("")
    out.append(f"resume / cold start: {r / c:.2f}x    resume / docker start: {r / p:.2f}x")
    restores = [b[1] for b in breakdown if b[1] is not None]
    dumps = [b[0] for b in breakdown if b[0] is not None]
    if restores and dumps:
        out.append(
            f"inside resume: CRIU restore + verification median {statistics.median(restores):.2f} s;"
            f" checkpoint (pre_dump, freeze, dump) median {statistics.median(dumps):.2f} s"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--cold", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3 cycles, 2 cold starts")
    args = parser.parse_args()
    if args.quick:
        args.cycles, args.cold = 3, 2
    if os.geteuid() != 0:
        sys.exit("bench.resume needs root (per-user dockerd, CRIU)")
    root = Path(tempfile.mkdtemp(prefix="hub-bench-resume-"))
    site = write_site(root)
    users = ["bench"] + [f"cold{i}" for i in range(1, args.cold)]
    try:
        log(f"resume bench in {root}: {args.cycles} cycles, {len(users)} cold starts")
        colds, resumes, breakdown = measure_hub(site, users, args.cycles)
        plain = measure_docker_start(args.cycles)
    finally:
        with contextlib.suppress(Exception):
            destroy_all(site)
        # the hub's log (timeline of every checkpoint and restore) outlives the run
        artifacts = Path(__file__).resolve().parents[1] / "test-artifacts"
        with contextlib.suppress(OSError):
            artifacts.mkdir(exist_ok=True)
            shutil.copy(root / "hub.log", artifacts / "bench-resume-hub.log")
        shutil.rmtree(root, ignore_errors=True)
    print(report(colds, resumes, breakdown, plain))


if __name__ == "__main__":
    main()
