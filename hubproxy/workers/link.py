"""The link between the processes of ``hub start --workers N``: messages and pure decisions.

Worker 0 (the ``hub start`` process, owner of the control plane) listens on a Unix socket in the
state directory (``workers.sock``, mode 0600); workers 1..N-1 connect to it. Messages are JSON
objects, one per line, each with a type ``t``:

worker 0 -> worker
  ``welcome``  token, private_port, routes, sessions, progress, health (the first message)
  ``routes``   the whole route table, after every change (``routes_to_wire``)
  ``progress`` user -> progress of an environment being started
  ``health``   [status, body] of ``/_hub/health``, after every change: the worker's port
               answers plain probes with it (``adminapi.probe_answer``)
  ``sessions`` added sessions and removed session ids (logins, logouts, expiry)
  ``started``  a start a worker asked for has ended (error is None or a user message)

worker -> worker 0
  ``hello``    index and pid (worker 0 also checks the pid with SO_PEERCRED)
  ``ready``    its proxy listens
  ``start``    user, template: start this environment (worker 0 keeps one start per user)
  ``batch``    once a second: activity stamps [user, time, kind] and its metric samples

The hot path of a worker never waits on this link: routes, progress and sessions are read from
local copies, activity stamps and counters are plain stores sent in the next batch.
"""

from __future__ import annotations

import json
import math
import os
import socket
from collections.abc import Iterable, Mapping
from typing import Any

from hubcontrol import Route, RouteTable

LINK_FILE = "workers.sock"
# The largest message: a route table of tens of thousands of users still fits.
MAX_MESSAGE = 64 << 20
BATCH_INTERVAL = 1.0  # seconds between a worker's activity/metrics batches
PUBLISH_INTERVAL = 0.1  # seconds between worker 0's looks at the route table and progress
# Forwarded /_hub/ requests carry the browser's address and worker 0's token in these headers;
# worker 0 believes them only on its private listener with the right token.
CLIENT_HEADER = "x-hub-worker-client"
TOKEN_HEADER = "x-hub-worker-token"
# Worker 0's private listener for forwarded /_hub/ requests (port chosen by the kernel).
PRIVATE_MODE = "reverse:http://127.0.0.1:1@127.0.0.1:0"


class LinkError(ValueError):
    """A message on the link that is not what the protocol says."""


def encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except ValueError as e:
        raise LinkError(f"not JSON: {e}") from None
    if not isinstance(message, dict) or not isinstance(message.get("t"), str):
        raise LinkError("not a message object with a type 't'")
    return message


# -- routes (progress and sessions go as their types' to_json) -----------------------------------


def routes_to_wire(table: RouteTable) -> list[dict[str, Any]]:
    """Every route of a route table."""
    return [route.to_json() for route in table]


def routes_from_wire(rows: Iterable[Mapping[str, Any]]) -> RouteTable:
    """The ``RouteTable`` a worker reads: ``get(user)`` maps raw usernames as worker 0 does."""
    routes = (Route.from_json(row) for row in rows)
    return RouteTable({route.name: route for route in routes})


# -- activity and metrics ---------------------------------------------------------------------------


def newer(stamp: float, current: tuple[float, str] | None) -> bool:
    """Whether a worker's activity stamp beats the one the Hub holds (merged with max)."""
    return current is None or stamp > current[0]


Samples = list[tuple[tuple[str, ...], float]]


def samples_to_wire(samples: Samples) -> list[list[Any]]:
    return [[list(values), value] for values, value in samples]


def samples_from_wire(rows: Iterable) -> Samples:
    out = []
    for values, value in rows:
        number = float(value)
        if math.isfinite(number):
            out.append((tuple(str(v) for v in values), number))
    return out


def sum_samples(parts: Iterable[Samples]) -> Samples:
    """Samples of one metric family from several processes, summed per label values."""
    total: dict[tuple[str, ...], float] = {}
    for samples in parts:
        for values, value in samples:
            total[values] = total.get(values, 0.0) + value
    return sorted(total.items())


def backoff(failures: int) -> float:
    """Seconds to wait before restarting a worker that died ``failures`` times in a row."""
    return min(30.0, 0.5 * 2 ** max(0, failures - 1)) if failures else 0.5


MAX_SOCKET_PATH = 107  # bytes in a Unix socket path (sun_path, without the trailing NUL)


def link_path(state_dir: str | os.PathLike[str]) -> str:
    """The link's socket in ``state_dir``; ValueError when the path is too long to bind."""
    path = os.path.join(os.fspath(state_dir), LINK_FILE)
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ValueError(
            f"--state-dir={state_dir}: the workers' socket {path} is longer than "
            f"{MAX_SOCKET_PATH} bytes; use a shorter --state-dir, or --workers=1"
        )
    return path


def port_taken(port: int, host: str = "") -> OSError | None:
    """Whether something already listens on ``host:port`` (the error binding it gave), checked
    before this hub opens the port with ``SO_REUSEPORT``, which would otherwise silently share
    it with a stale hub of the same user."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no listener
        try:
            probe.bind((host or "0.0.0.0", port))
        except OSError as e:
            return e
    return None


def worker_command(
    python: str, optimize: int, index: int, link: str, start_args: Iterable[str]
) -> list[str]:
    """How worker 0 runs worker ``index``: the same interpreter and -O, the same flags."""
    command = [python, *(["-O"] if optimize else []), "-m", "hubproxy.workers"]
    return [*command, f"--index={index}", f"--link={link}", "--", *start_args]
