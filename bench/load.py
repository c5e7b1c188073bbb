"""Load held: logins, idle WebSockets and a terminal printing flat out, all at once, while the
hub's health and another user's requests are timed: ``.venv/bin/python -m bench.load``.

Root, docker, btrfs-progs, node (the OIDC provider), the environment image
(``scripts/build-image.sh``: ttyd and python3). Everything is real: ``hub start`` (the real Hub,
per-user dockerd and policy sockets, local supervisor) with its workspace dir on a BTRFS
filesystem of the run's own (a sparse loop file, as the quick start and an operator's
repositories have it, so new users get seeded data-roots), and the real npm OIDC provider
(tests/support/oidc_provider.py). The template runs ttyd on ``term.`` and ``python3 -m
http.server`` on ``code.``.

Three users log in first, one after the other: **steady** (whose plain requests are timed),
**idle** (who holds the idle WebSockets) and **firehose** (whose terminal prints). Then:

1. **baseline**: ``--baseline`` seconds of sampling with nothing else going on;
2. **load**, all started at once, each load in a process of its own so no client's work delays
   another's measurements:

   - ``--logins`` users who never logged in go through the whole login as a browser would
     (the hub's redirect, the provider's login form, the callback, the progress page's long
     polls) and
     each one's time to first byte is the time from their first request to the first byte of
     their own environment's answer; every one of them is a spawn;
   - ``--websockets`` WebSockets to the idle user's terminal (ttyd), opened at once and then held
     without a keystroke (answering ttyd's pings, as a browser tab does);
   - the firehose user's terminal runs ``yes``, read through the hub as fast as the client can
     (frame headers parsed, payload counted, pings answered: a browser's xterm would render far
     slower than this reads);

   and the sampler, as in the baseline, until every login has its answer (or ``--timeout``) and
   at least ``--min-load`` seconds have passed.

The sampler asks ``/_hub/health`` every ``--interval`` seconds on a new connection (as a load
balancer's probe does), and the steady user's ``code.`` page every ``--interval`` seconds with
their session cookie; each figure is one request's full answer time. Target (issue 16): health
within 100 ms at p99 under load; reported, not asserted.

``--workers N`` runs ``hub start --workers N``: connections, probes among them, land on any of
the N processes, as the kernel spreads them (``SO_REUSEPORT``).

``--logins 32 --websockets 0 --no-firehose`` is issue 14's measure of simultaneous first
logins (all served, p50/p95 time to first byte, target p95 under 15 s).

Everything the run made is removed at the end: the hub is stopped, every user destroyed through
``hubcontrol.embedded`` (daemon, bridge, isolation rules, network-ID claim, data-root), the host
checked for leftovers (``tests/support/leaks.py``: the run exits 1 naming them) and the BTRFS
filesystem unmounted. Prints a markdown table to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from tests.support.hubprocess import CLIENT_SECRET, HubSite, env_file, labels_file

if TYPE_CHECKING:
    import httpx


class EventLike(Protocol):
    """A multiprocessing Event as the role processes use it."""

    def is_set(self) -> bool: ...


TERM, CODE = "term", "code"
CLK_TCK = os.sysconf("SC_CLK_TCK")
COOKIE = "rediacc_hub_session"
# ttyd's client protocol (html/src/components/terminal/xterm): the first message is the JSON
# size/auth message, then every input message starts with "0".
TTYD_HELLO = json.dumps({"AuthToken": "", "columns": 160, "rows": 48}).encode()
TTYD_INPUT = b"0"


def say(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float | None:
    """The ``q`` quantile of ``values`` (nearest rank), or None when there are none."""
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


# -- the hub's side: a site (hub start + provider) ------------------------------------------


@dataclass
class LoadSite(HubSite):
    """``hub start`` (tests/support/hubprocess.py) with its workspace dir on ``workspaces``."""

    workspaces: Path | None = None
    own_session: bool = True  # as the quick start and systemd run it (HubSite)
    workers: int = 1  # hub start --workers N

    @property
    def flags(self) -> dict:
        flags = {**super().flags, "workspace_dir": str(self.workspaces)}
        return flags if self.workers == 1 else {**flags, "workers": self.workers}

    def host(self, prefix: str) -> str:
        return f"{prefix}.{self.domain}:{self.port}"


def new_site(root: Path, workspaces: Path, issuer: str, port: int, workers: int = 1) -> LoadSite:
    """The e2e template (ttyd on ``term.``, http.server on ``code.``), nothing else."""
    root.mkdir(parents=True, exist_ok=True)
    domain = "load.test"
    return LoadSite(root=root, port=port, domain=domain,
                    labels=labels_file(root / "hub.labels.yaml", extra=()),
                    env=env_file(root / "hub.env", issuer, domain), workspaces=workspaces,
                    workers=workers)  # fmt: skip


def destroy_all(site: LoadSite, workers: int = 4) -> list[str]:
    """Destroy every user the hub made (a few at a time), then list what is left on the host."""
    import gc
    import warnings

    from hubcontrol.config import load_config
    from hubcontrol.embed import embedded
    from tests.support import leaks

    root = site.root
    net_ids = leaks.net_ids_under(root) | leaks.net_ids_under(site.workspaces)
    errors: list[str] = []
    config = load_config(site.labels, env_file=site.env, flags=site.flags)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        with embedded(config) as hub:
            users = [row.user for row in hub.status()]
            say(f"destroying {len(users)} users ...")

            def destroy(user: str) -> None:
                try:
                    hub.destroy(user, remove_data=True)
                except Exception as e:  # any failure: destroy the others, report below
                    errors.append(f"destroying {user}: {e!r}")

            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(destroy, users))
        gc.collect()
    # A network ID this run released may already be another hub's on a shared host (a test
    # run's): what carries it now is theirs, not a leftover of this run.
    mine = [i for i in net_ids if not _claimed_elsewhere(i, (root, site.workspaces))]
    left = leaks.leftovers(site.workspaces, mine) + leaks.leftovers(root, mine)
    return errors + sorted(set(left))


def _claimed_elsewhere(net_id: int, roots: Iterable[Path]) -> bool:
    from hubcontrol import gc
    from hubcontrol.netids import DEFAULT_REGISTRY

    owner = gc.claim_owner(DEFAULT_REGISTRY, net_id)
    return owner is not None and not any(
        os.path.realpath(owner).startswith(os.path.realpath(r) + "/") for r in roots
    )


# -- a browser's login, timed ---------------------------------------------------------------


def login(domain: str, port: int, user: str, timeout: float) -> tuple[float, str]:
    """Log ``user`` in as a browser would, starting at ``code.``: the hub's redirect, the
    provider's form, the callback, the progress page's long polls, then the environment's own page.
    Returns (seconds from the first request to the first byte of the environment's answer, the
    session cookie). Raises RuntimeError naming the step that failed."""
    from bench.clients import progress_poll
    from tests.support.webclient import browser, provider_login

    base = f"http://{CODE}.{domain}:{port}"
    deadline = time.monotonic() + timeout
    with browser(domain, port) as client:
        client.timeout = 30
        started = time.monotonic()
        r = client.get(f"{base}/")
        r = provider_login(client, r, user)
        since = ""
        while r.status_code != 200:
            if r.status_code != 503 or "/_hub/api/progress" not in r.text:
                raise RuntimeError(f"{user}: HTTP {r.status_code} at {r.url}: {r.text[:200]!r}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{user}: environment not ready within {timeout:.0f} s")
            # as the progress page asks: a long poll the hub answers when the start moves on
            view = progress_poll(
                lambda params: client.get(
                    f"{base}/_hub/api/progress", params=params, headers={"Sec-Fetch-Mode": "cors"}
                ),
                since,
            )
            if view.get("state") == "failed":
                raise RuntimeError(f"{user}: start failed: {view.get('error')}")
            if view.get("ready"):
                with client.stream("GET", f"{base}/") as r:
                    for _first in r.iter_raw():
                        break  # the first bytes of the environment's own answer
                    took = time.monotonic() - started
                if r.status_code == 200:
                    return took, _cookie(client, domain)
                continue
            since = view.get("version", "")
        return time.monotonic() - started, _cookie(client, domain)


def _cookie(client: httpx.Client, domain: str) -> str:
    """The Cookie header a browser sends to the hub's hosts: the session and the browser
    binding it is tied to."""
    found = [
        f"{c.name}={c.value}" for c in client.cookies.jar if c.domain.lstrip(".").endswith(domain)
    ]
    if not any(f.startswith(f"{COOKIE}=") for f in found):
        raise RuntimeError("no session cookie after the login")
    return "; ".join(found)


def logins_process(domain: str, port: int, users: list[str], timeout: float) -> list:
    """All ``users`` log in at once (one thread each): [(user, seconds | None, error)]."""

    def one(user: str) -> tuple[str, float | None, str | None]:
        try:
            took, _ = login(domain, port, user, timeout)
            return user, took, None
        except Exception as e:  # any failure is a row of the report
            return user, None, f"{type(e).__name__}: {e}"[:300]

    with ThreadPoolExecutor(max_workers=max(1, len(users))) as pool:
        return list(pool.map(one, users))


# -- raw HTTP probes -------------------------------------------------------------------------


async def timed_get(
    port: int, host: str, path: str, cookie: str | None, deadline: float
) -> tuple[float, int | None]:
    """One request on a new connection, read to the end: (seconds, status or None)."""
    started = time.monotonic()
    head = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
    if cookie:
        head += f"Cookie: {cookie}\r\n"
    writer = None
    try:
        async with asyncio.timeout(deadline):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write((head + "\r\n").encode())
            data = await reader.read()
        m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
        return time.monotonic() - started, int(m.group(1)) if m else None
    except (OSError, TimeoutError):
        return time.monotonic() - started, None
    finally:
        if writer is not None:
            writer.close()


Probe = tuple[int, str, str, "str | None"]  # port, Host, path, Cookie header


def sampler_process(probes: dict[str, Probe], interval: float, stop: EventLike) -> dict:
    """Each probe (name -> one request) every ``interval`` s, all side by side, until ``stop``
    is set: {name: [(seconds, status or None, monotonic time asked)]}."""

    async def loop(probe: Probe, samples: list) -> None:
        port, host, path, cookie = probe
        while not stop.is_set():
            began = time.monotonic()
            took, status = await timed_get(port, host, path, cookie, deadline=10)
            samples.append((took, status, began))  # when it was asked: the phase it fell in
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - began)))

    async def main() -> dict:
        found: dict[str, list] = {name: [] for name in probes}
        await asyncio.gather(*(loop(probe, found[name]) for name, probe in probes.items()))
        return found

    return asyncio.run(main())


FLOOR_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def floor_process(port: int, stop: EventLike) -> dict:
    """A bare asyncio HTTP responder in a process of its own, probed beside the hub: what any
    Python server on this machine answers in at that moment, so a slow answer of the hub can be
    told from the machine's own scheduling delays (its cores are shared with the load)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(FLOOR_ANSWER)
            await writer.drain()
        writer.close()

    async def main() -> dict:
        server = await asyncio.start_server(answer, "127.0.0.1", port)
        async with server:
            while not stop.is_set():  # a multiprocessing Event: polled  # noqa: ASYNC110
                await asyncio.sleep(0.2)
        return {}

    return asyncio.run(main())


# -- WebSockets: a minimal client (frame headers only) ---------------------------------------


async def ws_open(
    port: int, host: str, cookie: str, path: str = "/ws"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket to ttyd through the hub, as the terminal page opens it; returns the streams
    and whatever arrived after the 101's head."""
    import base64

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: tty\r\nCookie: {cookie}\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        writer.close()
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    return reader, writer


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (FIN set)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


async def ws_drain(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counter: list[int] | None = None
) -> None:
    """Read server frames until the connection ends: payload bytes counted into ``counter[0]``,
    pings answered with pongs, a close answered and ended."""
    while True:
        b0, b1 = await reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await reader.readexactly(8))
        opcode = b0 & 0x0F
        if opcode in (0x8, 0x9, 0xA):
            payload = await reader.readexactly(n)
            if opcode == 0x9:
                writer.write(ws_frame(0xA, payload))
            elif opcode == 0x8:
                writer.write(ws_frame(0x8, payload[:2]))
                return
            continue
        left = n
        while left:
            chunk = await reader.read(min(left, 1 << 20))
            if not chunk:
                raise asyncio.IncompleteReadError(b"", left)
            left -= len(chunk)
        if counter is not None:
            counter[0] += n


def websockets_process(port: int, host: str, cookie: str, count: int, stop: EventLike) -> dict:
    """Open ``count`` WebSockets at once, hold them idle until ``stop``; a summary."""

    async def main() -> dict:
        opened: list[float] = []
        failed: list[str] = []
        closed = [0]
        sem = asyncio.Semaphore(200)  # connects in flight: the listen backlog, not the hub

        async def one() -> None:
            async with sem:
                started = time.monotonic()
                try:
                    reader, writer = await ws_open(port, host, cookie)
                except (OSError, ConnectionError, asyncio.IncompleteReadError) as e:
                    failed.append(repr(e)[:120])
                    return
                opened.append(time.monotonic() - started)
            try:
                await ws_drain(reader, writer)
            except (OSError, asyncio.IncompleteReadError):
                pass
            if not stop.is_set():
                closed[0] += 1
            writer.close()

        began = time.monotonic()
        tasks = [asyncio.create_task(one()) for _ in range(count)]
        while len(opened) + len(failed) < count:  # noqa: ASYNC110 - counts, not one event
            await asyncio.sleep(0.05)
        open_at = time.monotonic()  # CLOCK_MONOTONIC: the sampler's clock too
        all_open = open_at - began
        while not stop.is_set():  # a multiprocessing Event: polled  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        held = len(opened) - closed[0]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return {"opened": len(opened), "failed": failed[:5], "n_failed": len(failed),
                "open_s": all_open, "open_at": open_at, "held": held,
                "p99_open": pct(opened, 0.99)}  # fmt: skip

    return asyncio.run(main())


def firehose_process(port: int, host: str, cookie: str, stop: EventLike) -> dict:
    """Run ``yes`` in the user's terminal and read it as fast as possible until ``stop``."""

    async def main() -> dict:
        reader, writer = await ws_open(port, host, cookie)
        writer.write(ws_frame(0x2, TTYD_HELLO))
        writer.write(ws_frame(0x2, TTYD_INPUT + b"yes\r"))
        counter = [0]
        drain = asyncio.create_task(ws_drain(reader, writer, counter))
        began = time.monotonic()
        while not stop.is_set() and not drain.done():  # noqa: ASYNC110 - two conditions
            await asyncio.sleep(0.1)
        took = time.monotonic() - began
        ended_early = drain.done()
        drain.cancel()
        with contextlib.suppress(BaseException):
            await drain
        writer.close()
        return {"bytes": counter[0], "seconds": took, "ended_early": ended_early}

    return asyncio.run(main())


# -- the hub process's own cost --------------------------------------------------------------


class ProcessWatch(threading.Thread):
    """CPU share and RSS of one process (the hub), sampled once a second."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.halt = threading.Event()
        self.rss: list[int] = []
        self.t0 = (time.monotonic(), self.ticks())

    def ticks(self) -> int:
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            return 0

    def run(self) -> None:
        while not self.halt.wait(1.0):
            with contextlib.suppress(OSError, ValueError, IndexError):
                status = Path(f"/proc/{self.pid}/status").read_text()
                self.rss.append(int(re.search(r"VmRSS:\s+(\d+)", status).group(1)))

    def stop(self) -> dict:
        self.halt.set()
        self.join()
        wall = time.monotonic() - self.t0[0]
        cpu = (self.ticks() - self.t0[1]) / CLK_TCK
        return {
            "cpu_share": cpu / wall if wall else 0.0,
            "rss_max_mib": max(self.rss or [0]) / 1024,
        }


# -- the run ---------------------------------------------------------------------------------


def _role(target: Callable[..., object], args: tuple, out: Connection) -> None:
    """A role process's body: ``target(*args)``'s result, or what it raised, sent to ``out``."""
    try:
        result = target(*args)
    except BaseException as e:  # reported as the role's result
        result = {"error": f"{type(e).__name__}: {e}"[:300]}
    out.send(result)
    out.close()


def start_role(target: Callable[..., object], *args: object) -> tuple[BaseProcess, Connection]:
    """Run ``target(*args)`` in a fresh process; returns (process, receiving end)."""
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_role, args=(target, args, send), daemon=True)
    proc.start()
    send.close()
    return proc, recv


def collect(proc: BaseProcess, recv: Connection, timeout: float) -> dict:
    """The role's result, or {"error": ...} when it sent none in ``timeout`` seconds."""
    try:
        if recv.poll(timeout):
            return recv.recv()
        return {"error": f"no result within {timeout:.0f} s"}
    except EOFError:
        return {"error": f"exited with {proc.exitcode} without a result"}
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()


def probes(site: LoadSite, floor_port: int, steady_cookie: str) -> dict[str, Probe]:
    return {
        "health": (site.port, site.host(TERM), "/_hub/health", None),
        "steady": (site.port, site.host(CODE), "/", steady_cookie),
        "floor": (floor_port, "127.0.0.1", "/", None),
    }


def sample(probes: dict[str, Probe], seconds: float, interval: float, ctx: SpawnContext) -> dict:
    stop = ctx.Event()
    proc, recv = start_role(sampler_process, probes, interval, stop)
    time.sleep(seconds)
    stop.set()
    return collect(proc, recv, 30)


def run(args: argparse.Namespace, tmp: Path, workspaces: Path) -> dict:
    from tests.support.oidc_provider import free_port, npm_oidc_provider

    ctx = multiprocessing.get_context("spawn")
    port = free_port()
    redirect = [f"http://{p}.load.test:{port}/_hub/oauth/callback" for p in (TERM, CODE)]
    client = {"client_id": "hub", "client_secret": CLIENT_SECRET, "redirect_uris": redirect}
    tag = f"{os.getpid() % 10000}"
    results: dict = {"args": vars(args)}
    floor_port, floor_stop = free_port(), ctx.Event()
    floor = start_role(floor_process, floor_port, floor_stop)
    with contextlib.ExitStack() as stack:
        stack.callback(lambda: floor_stop.set() or collect(*floor, 10))
        issuer = stack.enter_context(npm_oidc_provider([client]))
        site = new_site(tmp / "hub", workspaces, issuer, port, args.workers)
        try:
            site.start(timeout=120)
            hub_pid = site.proc.pid
            say(f"hub start on :{port} (pid {hub_pid}); the first users log in one by one ...")
            cookies = {}
            for role in ("steady", "idle", "firehose"):
                took, cookies[role] = login(site.domain, port, f"{role}{tag}", 600)
                say(f"  {role}{tag}: {took:.1f} s")
            say(f"baseline: {args.baseline:.0f} s of health and steady-user samples ...")
            probed = probes(site, floor_port, cookies["steady"])
            results["load_average"] = {"baseline": os.getloadavg()[0]}
            results["baseline"] = sample(probed, args.baseline, args.interval, ctx)

            say(f"load: {args.logins} logins, {args.websockets} idle WebSockets"
                f"{', a terminal printing' if args.firehose else ''} ...")  # fmt: skip
            stop = ctx.Event()
            watch = ProcessWatch(hub_pid)
            watch.start()
            began = time.monotonic()
            roles = {"sampler": start_role(sampler_process, probed, args.interval, stop)}
            if args.firehose:
                roles["firehose"] = start_role(firehose_process, port, site.host(TERM),
                                               cookies["firehose"], stop)  # fmt: skip
            if args.websockets:
                roles["websockets"] = start_role(websockets_process, port, site.host(TERM),
                                                 cookies["idle"], args.websockets, stop)  # fmt: skip
            users = [f"new{tag}u{i:03d}" for i in range(args.logins)]
            logins = None
            if users:
                proc, recv = start_role(logins_process, site.domain, port, users, args.timeout)
                logins = collect(proc, recv, args.timeout + 120)
                say(f"  logins answered after {time.monotonic() - began:.1f} s")
            time.sleep(max(0.0, args.min_load - (time.monotonic() - began)))
            results["load_seconds"] = time.monotonic() - began
            results["load_average"]["load"] = os.getloadavg()[0]
            stop.set()
            for name, (proc, recv) in roles.items():
                results[name] = collect(proc, recv, 60)
            results["hub"] = watch.stop()
            results["logins"] = logins or []
        finally:
            say("stopping the hub ...")
            site.stop()
            if args.log:
                args.log.write_text(site.read_log())  # the run's dir goes: keep why a start failed
            left = destroy_all(site)
            results["leftovers"] = left
            if left:
                say("cleanup left:\n  " + "\n  ".join(left))
    return results


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _answered(samples: list, after: float | None = None) -> tuple[list[float], int]:
    """(times of the 200 answers, count of the others: errors, timeouts, refused connections),
    of the samples asked at ``after`` (monotonic) or later when given."""
    kept = [x for x in samples if after is None or x[2] >= after]
    ok = [x[0] for x in kept if x[1] == 200]
    return ok, len(kept) - len(ok)


def report(r: dict) -> str:
    """The markdown table of a run (``run``'s results)."""
    a = r["args"]
    errors = {k: v["error"] for k, v in r.items() if isinstance(v, dict) and "error" in v}
    cmd = (f"python -m bench.load --logins {a['logins']} --websockets {a['websockets']}"
           f"{'' if a['firehose'] else ' --no-firehose'}")  # fmt: skip
    lines = [f"Load held (`{cmd}`), {r.get('load_seconds', 0):.0f} s of load:\n",
             "| measure | baseline (no load) | under load |", "| --- | --- | --- |"]  # fmt: skip
    base, load = r.get("baseline") or {}, r.get("sampler") or {}
    labels = (
        ("health", "`/_hub/health`"),
        ("steady", "another user's page (`code.`)"),
        ("floor", "floor: a bare asyncio responder beside the hub"),
    )
    for key, label in labels:
        base_ok, base_bad = _answered(base.get(key, []))
        load_ok, load_bad = _answered(load.get(key, []))
        for q, name in ((0.5, "p50"), (0.99, "p99")):
            lines.append(f"| {label} {name} | {_ms(pct(base_ok, q))} | {_ms(pct(load_ok, q))} |")
        lines.append(f"| {label} max | {_ms(max(base_ok, default=None))} | {_ms(max(load_ok, default=None))} |")  # fmt: skip
        lines.append(f"| {label} answered / errors | {len(base_ok)} / {base_bad} | {len(load_ok)} / {load_bad} |")  # fmt: skip
    logins = r.get("logins") if isinstance(r.get("logins"), list) else []
    if logins:
        done = [t for _, t, err in logins if err is None]
        lines.append(f"| new users logging in at once, served | | {len(done)} of {len(logins)} |")
        lines.append(f"| their login to first byte, p50 / p95 / max | | {pct(done, 0.5) or 0:.1f} s / {pct(done, 0.95) or 0:.1f} s / {max(done, default=0):.1f} s |")  # fmt: skip
    ws = r.get("websockets")
    held_from = None
    if ws and "error" not in ws:
        lines.append(f"| idle WebSockets opened / failed / still open at the end | | {ws['opened']} / {ws['n_failed']} / {ws['held']} |")  # fmt: skip
        lines.append(f"| ... all of them answered after | | {ws['open_s']:.1f} s |")
        # the same run's samples from the moment every WebSocket was open: the load held
        # (logins and the printing terminal go on), without the burst of opening them all at once
        held_from = ws.get("open_at")
        for key, label in labels[:2]:
            ok, bad = _answered(load.get(key, []), held_from)
            lines.append(f"| {label} p99 / max / errors, once the WebSockets were open | | {_ms(pct(ok, 0.99))} / {_ms(max(ok, default=None))} / {bad} of {len(ok) + bad} |")  # fmt: skip
    fh = r.get("firehose")
    if fh and "error" not in fh:
        rate = fh["bytes"] / max(fh["seconds"], 0.001) / (1 << 20)
        early = " (the connection ended early)" if fh["ended_early"] else ""
        lines.append(f"| a terminal printing (`yes` through ttyd), read | | {rate:.1f} MiB/s for {fh['seconds']:.0f} s{early} |")  # fmt: skip
    hub = r.get("hub")
    if hub:
        lines.append(f"| the hub process: CPU, peak RSS | | {hub['cpu_share'] * 100:.0f}% of a core, {hub['rss_max_mib']:.0f} MiB |")  # fmt: skip
    if r.get("load_average"):
        la = r["load_average"]
        lines.append(f"| machine load average (1 min), at the start / the end | {la.get('baseline', 0):.1f} | {la.get('load', 0):.1f} |")  # fmt: skip
    p99 = pct(_answered(load.get("health", []))[0], 0.99)
    verdict = "met" if p99 is not None and p99 <= 0.1 else "MISSED"
    lines.append(f"\nTarget (issue 16): `/_hub/health` within 100 ms at p99 under load: {_ms(p99)}, {verdict}.")  # fmt: skip
    if held_from is not None:
        held = pct(_answered(load.get("health", []), held_from)[0], 0.99)
        verdict = "met" if held is not None and held <= 0.1 else "MISSED"
        lines.append(f"The same, from when all {ws['opened']} WebSockets were open: {_ms(held)}, {verdict}.")  # fmt: skip
    if logins and a["logins"] >= 32:
        done = [t for _, t, err in logins if err is None]
        p95 = pct(done, 0.95)
        verdict = "met" if len(done) == len(logins) and p95 is not None and p95 < 15 else "MISSED"
        lines.append(f"Target (issue 14): simultaneous first logins all served, p95 under 15 s: {len(done)} of {len(logins)}, p95 {p95 or 0:.1f} s, {verdict}.")  # fmt: skip
    failed = [f"{u}: {err}" for u, _, err in logins if err]
    if failed:
        lines.append("\nFailed logins (first ones):\n\n" + "\n".join(f"- {f}" for f in failed[:10]))
    if ws and ws.get("failed"):
        lines.append("\nWebSocket failures (first ones): " + "; ".join(ws["failed"]))
    for role, error in errors.items():
        lines.append(f"\nThe {role} role failed: {error}")
    if r.get("leftovers"):
        lines.append("\nCleanup left: " + "; ".join(r["leftovers"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--logins", type=int, default=50, help="new users logging in at once")
    parser.add_argument("--websockets", type=int, default=1000, help="idle WebSockets held")
    parser.add_argument("--no-firehose", dest="firehose", action="store_false")
    parser.add_argument("--workers", type=int, default=1, help="hub start --workers N")
    parser.add_argument("--baseline", type=float, default=20.0, help="seconds of baseline")
    parser.add_argument("--min-load", type=float, default=30.0, help="least seconds of load")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between probes")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds a login may take")
    parser.add_argument("--plain", action="store_true",
                        help="workspace dir on the ordinary filesystem (no seeds: image loaded per user)")  # fmt: skip
    parser.add_argument("--btrfs-size", default="16G")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--log", type=Path, help="keep the hub's log here")
    args = parser.parse_args(argv)

    from tests.support.btrfs import btrfs_loop

    tmp = Path(tempfile.mkdtemp(prefix="hub-load-", dir="/var/tmp"))
    try:
        with contextlib.ExitStack() as stack:
            if args.plain:
                workspaces = tmp / "workspaces"
            else:
                workspaces = stack.enter_context(btrfs_loop(tmp / "btrfs", args.btrfs_size)) / "ws"
            results = run(args, tmp, workspaces)
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(tmp)], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    print(report(results))
    return 1 if results["leftovers"] else 0


if __name__ == "__main__":
    sys.exit(main())
