"""Run every benchmark side by side and print ratios: ``.venv/bin/python -m bench.run [--quick]``.

Starts each contender itself on loopback (direct access to the environment, nginx,
configurable-http-proxy, ``hub start`` and ``mitmdump -s addons/hub.py``, the hubs with
authentication and routing on) in front of one upstream running in a real user environment
that the real Hub spawned, measures the workloads in interleaved rounds (every round visits the
contenders in a rotated order) and reports medians. Also measures the control plane (cold spawn,
warm start, and resume via ``bench/resume.py`` when present) and proxy memory. Writes the tables
into docs/performance.md unless ``--no-write``. Needs root, docker, the environment image
(scripts/build-image.sh), nginx, wrk and configurable-http-proxy (scripts/install-test-deps.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench import clients, contenders
from bench.clients import Endpoint
from bench.contenders import Contender
from bench.site import ROOT, UPSTREAM_PORT, Site, control_plane, destroy_all
from tests.support.nodejs import node_env

MIB = 1024 * 1024
PROXIES = ("nginx", "chp", "hub-start", "hub-mitmdump")
# hub-2w: `hub start --workers 2` (two proxy processes on one port), the scaling measurement
ALL = ("direct", *PROXIES, "hub-2w")
HUBS = ("hub-start", "hub-mitmdump")
BEGIN = "<!-- bench:results:begin (written by bench/run.py; edit outside these markers) -->"
END = "<!-- bench:results:end -->"


@dataclass(frozen=True)
class Profile:
    """How long and how often: ``full`` for the record, ``quick`` to check a change, ``smoke``
    for CI (proves the harness works, measures nothing meaningful)."""

    name: str
    rounds: int
    seconds: float  # per wrk / WebSocket measurement
    transfers_1m: int
    transfers_64m: int
    requests_for_memory: int  # hub-start's, the contender the memory target is about
    requests_for_memory_peers: int  # everyone else's (time: mitmdump does a few hundred/s)
    idle_websockets: int
    cold: int
    warm: int


PROFILES = {
    "full": Profile("full", 3, 3, 20, 2, 100_000, 20_000, 1000, 3, 3),
    "quick": Profile("quick", 2, 2, 10, 1, 10_000, 5_000, 1000, 1, 1),
    "smoke": Profile("smoke", 1, 1, 2, 1, 200, 200, 20, 1, 0),
}


@dataclass(frozen=True)
class Workload:
    key: str  # for --workloads
    name: str
    run: Callable[[Endpoint, Profile], dict]
    metrics: tuple[str, ...]  # keys of run()'s result, the first is the headline
    units: tuple[str, ...]
    higher_is_better: bool = True
    sample_rss: bool = False


def _wrk(close: bool = False, connections: int = 50) -> Callable[[Endpoint, Profile], dict]:
    def run(ep: Endpoint, p: Profile) -> dict:
        r = clients.wrk(ep, "/1k", connections=connections, seconds=p.seconds, close=close)
        if r["errors"] or not r["requests"]:
            raise RuntimeError(f"wrk: {r['errors']} errors, {r['requests']} requests\n{r['raw']}")
        return r

    return run


def _transfer(
    method: str, path: str, size: int, count_of: Callable[[Profile], int]
) -> Callable[[Endpoint, Profile], dict]:
    return lambda ep, p: clients.transfer(ep, method, path, size, count_of(p))


def _ws(connections: int) -> Callable[[Endpoint, Profile], dict]:
    return lambda ep, p: clients.ws_echo(ep, connections, p.seconds)


WORKLOADS = (
    Workload(
        "small",
        "1 KiB, keep-alive, 50 conns",
        _wrk(),
        ("rps", "per_cpu"),
        ("req/s", "req per CPU-s"),
    ),
    Workload(
        "small-new",
        "1 KiB, new connection each",
        _wrk(close=True, connections=10),
        ("rps", "per_cpu"),
        ("req/s", "req per CPU-s"),
    ),
    Workload(
        "latency",
        "1 KiB latency, 1 conn",
        _wrk(connections=1),
        ("p50_ms", "p99_ms", "rps", "per_cpu"),
        ("ms p50", "ms p99", "req/s", "req per CPU-s"),
        higher_is_better=False,
    ),
    Workload(
        "1m-down",
        "1 MiB download",
        _transfer("GET", "/1m", MIB, lambda p: p.transfers_1m),
        ("mbps", "per_cpu"),
        ("MiB/s", "MiB per CPU-s"),
    ),
    Workload(
        "1m-up",
        "1 MiB upload",
        _transfer("POST", "/upload", MIB, lambda p: p.transfers_1m),
        ("mbps", "per_cpu"),
        ("MiB/s", "MiB per CPU-s"),
    ),
    Workload(
        "64m-down",
        "64 MiB download",
        _transfer("GET", "/64m", 64 * MIB, lambda p: p.transfers_64m),
        ("mbps", "per_cpu"),
        ("MiB/s", "MiB per CPU-s"),
        sample_rss=True,
    ),
    Workload(
        "64m-up",
        "64 MiB upload",
        _transfer("POST", "/upload", 64 * MIB, lambda p: p.transfers_64m),
        ("mbps", "per_cpu"),
        ("MiB/s", "MiB per CPU-s"),
        sample_rss=True,
    ),
    Workload(
        "ws1",
        "WebSocket echo, 1 conn",
        _ws(1),
        ("rps", "p50_ms", "p99_ms", "per_cpu"),
        ("rt/s", "ms p50", "ms p99", "rt per CPU-s"),
    ),
    Workload(
        "ws50",
        "WebSocket echo, 50 conns",
        _ws(50),
        ("rps", "p50_ms", "p99_ms", "per_cpu"),
        ("rt/s", "ms p50", "ms p99", "rt per CPU-s"),
    ),
)


class PeakRss:
    """Samples a process tree's RSS every 20 ms in a thread; ``growth_kb`` is peak minus start."""

    def __init__(self, contender: Contender) -> None:
        self.contender = contender
        self.start_kb = contender.rss_kb() or 0
        self.peak_kb = self.start_kb
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_kb = max(self.peak_kb, self.contender.rss_kb() or 0)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_kb(self) -> int:
        return self.peak_kb - self.start_kb


@dataclass
class Results:
    # results[workload][contender] = list of per-round dicts
    rounds: dict[str, dict[str, list[dict]]] = field(default_factory=dict)
    rss_growth: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    memory: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    control: dict[str, dict] = field(default_factory=dict)
    resume: str | None = None

    def median(self, workload: str, contender: str, metric: str) -> float | None:
        values = [
            r[metric]
            for r in self.rounds.get(workload, {}).get(contender, [])
            if r.get(metric) is not None
        ]
        return statistics.median(values) if values else None


def log(msg: str) -> None:
    print(msg, flush=True)


# -- machine description ------------------------------------------------------------------------


def _version(
    cmd: list[str], pattern: str = r"[\d]+\.[\d.]+", env: dict[str, str] | None = None
) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return "missing"
    m = re.search(pattern, done.stdout + done.stderr)
    return m.group(0) if m else "unknown"


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "unknown"
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / MIB:.1f} GiB"
    import mitmproxy.version

    chp = "missing"
    with contextlib.suppress(OSError, ValueError):
        chp = json.loads(
            (ROOT / "bench/node_modules/configurable-http-proxy/package.json").read_text()
        )["version"]
    return {
        "cpu": f"{os.cpu_count()} cores, {model}",
        "memory": mem,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mitmproxy": mitmproxy.version.VERSION,
        "nginx": _version(["nginx", "-v"]),
        # the node configurable-http-proxy ran with (contenders.chp)
        "node": _version(["node", "--version"], env=node_env()),
        "configurable-http-proxy": chp,
        "wrk": _version(["wrk", "--version"]),
        "load average at start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


# -- the run ------------------------------------------------------------------------------------


def start_contenders(
    site: Site,
    service_ip: str,
    cookie: str,
    workdir: Path,
    only: list[str],
    results: Results,
    baseline: Path | None = None,
) -> dict[str, Contender]:
    starters = {
        "direct": lambda: contenders.direct(site, service_ip, UPSTREAM_PORT),
        "nginx": lambda: contenders.nginx(site, service_ip, UPSTREAM_PORT, workdir),
        "chp": lambda: contenders.chp(site, service_ip, UPSTREAM_PORT, workdir),
        "hub-start": lambda: contenders.hub_start(site, cookie, workdir),
        "hub-mitmdump": lambda: contenders.hub_mitmdump(site, cookie, workdir),
        "hub-base": lambda: contenders.hub_start(site, cookie, workdir, "hub-base", baseline),
        "hub-2w": lambda: contenders.hub_workers(site, cookie, workdir, 2),
    }
    # started side by side (each waits for its own health check), kept in the order asked for
    with ThreadPoolExecutor(max_workers=len(only) or 1) as pool:
        futures = {name: pool.submit(starters[name]) for name in only}
    running = {}
    for name, future in futures.items():
        try:
            running[name] = future.result()
            log(f"  {name}: {running[name].endpoint.host}:{running[name].endpoint.port}")
        except Exception as e:  # a contender that cannot start is reported, not fatal
            results.failures[name] = f"did not start: {e}"
            log(f"  {name}: FAILED to start: {e}")
    return running


def measure_rounds(
    running: dict[str, Contender], profile: Profile, results: Results, workloads: list[Workload]
) -> None:
    names = list(running)
    for r in range(profile.rounds):
        log(f"round {r + 1}/{profile.rounds}")
        for w in workloads:
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                c = running[name]
                if name in results.failures:
                    continue
                cpu_before = c.cpu_seconds()
                try:
                    if w.sample_rss and c.proc is not None:
                        with PeakRss(c) as peak:
                            value = w.run(c.endpoint, profile)
                        results.rss_growth.setdefault(w.name, {}).setdefault(name, []).append(
                            peak.growth_kb
                        )
                    else:
                        value = w.run(c.endpoint, profile)
                except Exception as e:  # one failed measurement is reported
                    results.failures[f"{name}: {w.name}"] = str(e).splitlines()[0][:200]
                    log(f"  {w.name} / {name}: FAILED: {e}")
                    continue
                value.pop("raw", None)
                if cpu_before is not None:
                    # work per CPU-second of the proxy: its capacity per core, robust to a
                    # shared machine (throughput above also depends on what else runs)
                    cpu = c.cpu_seconds() - cpu_before
                    value["per_cpu"] = value["work"] / cpu if cpu > 0 else None
                results.rounds.setdefault(w.name, {}).setdefault(name, []).append(value)
                head = w.metrics[0]
                log(f"  {w.name} / {name}: {value[head]:.2f} {w.units[0]}")


def measure_memory(running: dict, profile: Profile, results: Results, idle: dict) -> None:
    for name, c in running.items():
        if c.proc is None:
            continue
        mem = results.memory.setdefault(name, {})
        mem["idle MiB"] = idle.get(name, 0) / 1024
        before = c.rss_kb() or 0
        mem["after rounds MiB"] = before / 1024
        extra = (
            profile.requests_for_memory
            if name == "hub-start"
            else (profile.requests_for_memory_peers)
        )
        try:
            clients.wrk(
                c.endpoint,
                "/1k",
                connections=50,
                seconds=10 if extra >= 20_000 else profile.seconds,
                requests=extra,
            )
            after = c.rss_kb() or 0
            mem["extra requests (thousands)"] = extra / 1000
            mem["after the extra requests MiB"] = after / 1024
            mem["growth over those requests MiB"] = (after - before) / 1024
        except Exception as e:
            results.failures[f"{name}: memory after requests"] = str(e)[:200]
        try:
            settle = min(1.0, profile.seconds / 2)
            base, held = asyncio.run(_hold_websockets(c, profile.idle_websockets, settle))
            mem[f"with {profile.idle_websockets} idle WebSockets MiB"] = held / 1024
            mem["KiB per idle WebSocket"] = (held - base) / profile.idle_websockets
        except Exception as e:
            results.failures[f"{name}: idle WebSockets"] = str(e)[:200]
        log(f"  memory {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in mem.items()))


async def _hold_websockets(c: Contender, count: int, settle: float) -> tuple[int, int]:
    await asyncio.sleep(settle / 2)
    base = c.rss_kb() or 0
    ready, release = asyncio.Event(), asyncio.Event()
    task = asyncio.ensure_future(clients.ws_hold(c.endpoint, count, ready, release))
    waiter = asyncio.ensure_future(ready.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # raises the connection error
    await asyncio.sleep(settle)
    held = c.rss_kb() or 0
    release.set()
    await task
    return base, held


def run_resume(quick: bool) -> str | None:
    """The resume numbers of ``bench/resume.py`` (owned by the checkpoint work), if present."""
    if not (ROOT / "bench" / "resume.py").exists():
        return None
    # the full run keeps bench/resume.py's own defaults short enough to fit one sitting
    cmd = [sys.executable, "-m", "bench.resume", "--stack", "small"]  # jupyter: run it alone
    cmd += ["--quick"] if quick else ["--cycles", "5", "--cold", "2"]
    log("resume: " + " ".join(cmd))
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return "bench/resume.py timed out after 900 s"
    text = done.stdout.strip()
    if done.returncode != 0:
        text += f"\n(bench/resume.py exited {done.returncode}: {done.stderr.strip()[-500:]})"
    return text


# -- report -------------------------------------------------------------------------------------


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}"


def tables(res: Results, present: list[str], profile: Profile) -> str:
    out = []
    pairs = [("hub-start", "chp"), ("hub-start", "direct"), ("hub-mitmdump", "chp")]
    if "hub-2w" in present:
        pairs.append(("hub-2w", "hub-start"))
    if "hub-base" in present:
        pairs.append(("hub-start", "hub-base"))
    head = ["workload", "metric", *present, *(f"{a} / {b}" for a, b in pairs)]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for w in WORKLOADS:
        for metric, unit in zip(w.metrics, w.units, strict=True):
            vals = {c: res.median(w.name, c, metric) for c in present}
            if all(v is None for v in vals.values()):
                continue  # not measured in this run (--workloads)
            row = [w.name, unit, *(_fmt(vals[c]) for c in present)]
            row += [_ratio(vals.get(a), vals.get(b)) for a, b in pairs]
            out.append("| " + " | ".join(row) + " |")
    out.append("")
    if res.rss_growth:
        out.append("Peak RSS growth while transferring (MiB, median of rounds; body size 64 MiB):")
        out.append("")
        procs = [c for c in present if c != "direct"]
        out.append("| workload | " + " | ".join(procs) + " |")
        out.append("|---|" + "---|" * len(procs))
        for w, per in res.rss_growth.items():
            cells = [_fmt(statistics.median(per[c]) / 1024) if c in per else "-" for c in procs]
            out.append(f"| {w} | " + " | ".join(cells) + " |")
        out.append("")
    if res.memory:
        keys = list(dict.fromkeys(k for m in res.memory.values() for k in m))
        procs = list(res.memory)
        out.append("| memory | " + " | ".join(procs) + " |")
        out.append("|---|" + "---|" * len(procs))
        for k in keys:
            out.append(f"| {k} | " + " | ".join(_fmt(res.memory[p].get(k)) for p in procs) + " |")
        out.append("")
    if res.control:
        out.append("| control plane | n | median s | p95 s |")
        out.append("|---|---|---|---|")
        for k, v in res.control.items():
            if v.get("n"):
                out.append(f"| {k} | {v['n']} | {v['median']:.2f} | {v['p95']:.2f} |")
        out.append("")
    if res.resume:
        out.append("Resume of a checkpointed user (bench/resume.py, run right after):")
        out.append("")
        out.append(res.resume)
        out.append("")
    if res.failures:
        out.append("Failures:")
        out.append("")
        out += [f"- {k}: {v}" for k, v in res.failures.items()]
        out.append("")
    return "\n".join(out)


def targets(res: Results) -> str:
    """Issue 10's targets as ratios of this run. "Per core" is work per CPU-second of the proxy
    process (one worker), which a shared machine disturbs far less than wall-clock throughput."""
    med = res.median
    ka, lat, ws = "1 KiB, keep-alive, 50 conns", "1 KiB latency, 1 conn", "WebSocket echo, 50 conns"
    hub_core, chp_core = med(ka, "hub-start", "per_cpu"), med(ka, "chp", "per_cpu")
    hub_rps, chp_rps = med(ka, "hub-start", "rps"), med(ka, "chp", "rps")
    added = None
    if med(lat, "hub-start", "p50_ms") is not None and med(lat, "direct", "p50_ms") is not None:
        added = med(lat, "hub-start", "p50_ms") - med(lat, "direct", "p50_ms")
    ws_core, ws_chp = med(ws, "hub-start", "per_cpu"), med(ws, "chp", "per_cpu")
    mem = res.memory.get("hub-start", {})
    growth = mem.get("growth over those requests MiB")
    per_ws = mem.get("KiB per idle WebSocket")
    body = res.rss_growth.get("64 MiB download", {}).get("hub-start")
    body_mib = statistics.median(body) / 1024 if body else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a and b else None

    def check(ok: bool | None) -> str:
        return "-" if ok is None else ("met" if ok else "MISSED")

    def known(value: object, ok: object) -> bool | None:
        return None if value is None else bool(ok)

    r_core, r_rps, r_ws = ratio(hub_core, chp_core), ratio(hub_rps, chp_rps), ratio(ws_core, ws_chp)
    rows = [
        (
            "small requests per CPU-second (one worker core) >= 1,000",
            _fmt(hub_core),
            check(known(hub_core, hub_core and hub_core >= 1000)),
        ),
        (
            "same, wall-clock requests/s of one worker (shared machine)",
            _fmt(hub_rps),
            check(known(hub_rps, hub_rps and hub_rps >= 1000)),
        ),
        (
            "within 2x of CHP per core (hub/CHP requests per CPU-s >= 0.50)",
            _fmt(r_core),
            check(known(r_core, r_core and r_core >= 0.5)),
        ),
        (
            "same, wall-clock throughput hub/CHP",
            _fmt(r_rps),
            check(known(r_rps, r_rps and r_rps >= 0.5)),
        ),
        (
            "added p50 latency, 1 connection, ms < 1",
            _fmt(added),
            check(known(added, added is not None and added < 1)),
        ),
        (
            "WebSocket round trips per CPU-s >= 50% of CHP (50 conns)",
            _fmt(r_ws),
            check(known(r_ws, r_ws and r_ws >= 0.5)),
        ),
        (
            "memory growth over the extra requests, MiB < 5 (flat)",
            _fmt(growth),
            check(known(growth, growth is not None and growth < 5)),
        ),
        (
            "KiB per idle WebSocket < 50",
            _fmt(per_ws),
            check(known(per_ws, per_ws is not None and per_ws < 50)),
        ),
        (
            "64 MiB download: peak RSS growth, MiB < 16 (not proportional to the body)",
            _fmt(body_mib),
            check(known(body_mib, body_mib is not None and body_mib < 16)),
        ),
    ]
    lines = ["| target (hub start, 1 worker) | this run | |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines) + "\n"


def report(
    res: Results,
    present: list[str],
    profile: Profile,
    mach: dict[str, str],
    command: str,
    started: datetime,
    elapsed: float,
) -> str:
    lines = [
        f"Run: {started:%Y-%m-%d %H:%M} UTC, profile `{profile.name}` ({profile.rounds} interleaved "
        f"rounds, medians), {elapsed / 60:.1f} min. Command: `{command}`",
        "",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in mach.items()) + ".",
        "",
        tables(res, present, profile),
        targets(res),
    ]
    return "\n".join(lines)


def write_doc(path: Path, body: str) -> None:
    block = f"{BEGIN}\n{body.rstrip()}\n{END}"
    text = path.read_text() if path.exists() else "# Performance\n\n"
    if BEGIN in text and END in text:
        pre, rest = text.split(BEGIN, 1)
        _, post = rest.split(END, 1)
        text = pre + block + post
    else:
        text = text.rstrip() + "\n\n## Results of the last run\n\n" + block + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 short rounds (about 10 minutes)")
    parser.add_argument("--profile", choices=sorted(PROFILES), help="full (default), quick, smoke")
    parser.add_argument("--contenders", default=",".join(ALL), help="comma-separated subset")
    parser.add_argument(
        "--workloads",
        default=",".join(w.key for w in WORKLOADS),
        help="comma-separated subset of " + ", ".join(w.key for w in WORKLOADS),
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurements")
    parser.add_argument("--no-resume", action="store_true", help="skip bench/resume.py")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs alone")
    parser.add_argument("--doc", default=str(ROOT / "docs" / "performance.md"))
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="A/B: also run `hub start` from the source tree DIR as contender hub-base "
        "(e.g. `git archive HEAD~1 hubproxy hubcontrol hubcli | tar -x -C DIR`)",
    )
    args = parser.parse_args(argv)
    argv_given = sys.argv[1:] if argv is None else list(argv)
    profile = PROFILES[args.profile or ("quick" if args.quick else "full")]
    only = [c.strip() for c in args.contenders.split(",") if c.strip()]
    keys = {w.key for w in WORKLOADS}
    chosen = [k.strip() for k in args.workloads.split(",") if k.strip()]
    if bad := [k for k in chosen if k not in keys]:
        parser.error(f"unknown workload(s) {', '.join(bad)}; choose from {', '.join(sorted(keys))}")
    workloads = [w for w in WORKLOADS if w.key in chosen]
    if args.baseline and "hub-base" not in only:
        only.append("hub-base")
    unknown = [c for c in only if c not in (*ALL, "hub-base")]
    if unknown:
        parser.error(f"unknown contender(s) {', '.join(unknown)}; choose from {', '.join(ALL)}")
    for tool in ("wrk", "nginx", "docker"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed (scripts/install-test-deps.sh)")
    # the command as given (so a recorded run can be repeated), e.g. with --baseline DIR
    command = " ".join([".venv/bin/python -m bench.run", *map(shlex.quote, argv_given)])
    contenders.raise_fd_limit()
    started = datetime.now(UTC)
    t0 = time.monotonic()
    mach = machine()
    log("machine: " + "; ".join(f"{k} {v}" for k, v in mach.items()))
    res = Results()
    workdir = Path(tempfile.mkdtemp(prefix="hub-bench-"))
    site = Site(workdir / "hub")
    site.write()
    running: dict = {}
    try:
        log("control plane (embedded Hub):")
        service_ip, res.control = control_plane(site, profile.cold, profile.warm, log=log)
        cookie = site.mint_cookie()
        log(f"upstream at {service_ip}:{UPSTREAM_PORT}; starting contenders")
        running = start_contenders(
            site, service_ip, cookie, workdir, only, res, args.baseline and Path(args.baseline)
        )
        time.sleep(1)
        idle = {n: c.rss_kb() for n, c in running.items() if c.proc is not None}
        measure_rounds(running, profile, res, workloads)
        if not args.no_memory:
            log("memory:")
            measure_memory(running, profile, res, idle)
    finally:
        for c in running.values():
            c.stop()
        kept = None
        if res.failures:
            kept = Path(tempfile.mkdtemp(prefix="hub-bench-logs-"))
            for path in workdir.rglob("*.log"):
                shutil.copy(path, kept / f"{path.parent.name}-{path.name}")
            log(f"failures: the contenders' and environments' logs are in {kept}")
        log("cleaning up the benchmark users")
        with contextlib.suppress(Exception):
            destroy_all(site, logs_to=kept)
        shutil.rmtree(workdir, ignore_errors=True)
    if not args.no_resume:
        res.resume = run_resume(profile.name != "full")
    present = [c for c in only if c in running]
    text = report(res, present, profile, mach, command, started, time.monotonic() - t0)
    print()
    print(text)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "rounds": res.rounds,
                    "rss_growth": res.rss_growth,
                    "memory": res.memory,
                    "control": res.control,
                    "failures": res.failures,
                    "machine": mach,
                },
                indent=1,
            )
        )
    if not args.no_write:
        write_doc(Path(args.doc), text)
        log(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
