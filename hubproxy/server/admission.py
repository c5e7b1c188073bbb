"""WebSocket upgrades wait their turn; everything else on the hub's port goes straight in.

When the hub restarts or the network blips, every open browser tab reconnects its terminals and
kernels at the same moment: a thousand WebSocket upgrades arrive in one second. Each one is a
request through mitmproxy's layers, the session check, the router and the relay's upstream
handshake, all on the proxy's one event loop. Taken all at once, every loop iteration runs a
step of each of them, and a load balancer's ``/_hub/health`` probe or another user's page, which
need a dozen such iterations, wait for the whole storm: 0.3-0.4 s for 1,000 upgrades on this
machine kind (docs/performance.md, "Load held").

So the hub's listening port gets a thin protocol in front of mitmproxy's. It reads the first
bytes of each new connection (the request head; mitmproxy gets them unchanged) and:

- a connection whose first request asks for an ``Upgrade`` waits for one of ``SLOTS`` slots,
  in arrival order. It holds the slot until the hub first writes to it (the ``101 Switching
  Protocols``, or a refusal) or closes it, until the relay has sent the request on to the
  environment (``give_back``: what is left is the environment's answer, which a user's own
  environment could delay at will), or for ``HOLD_MAX`` at most;
- a browser that leaves while it waits (a close, or a half-close, which a WebSocket client
  does not do before the answer) leaves the line;
- a load balancer's probe is answered here (below);
- anything else (pages, API calls, TLS, HTTP/2, a client that says nothing) is handed
  to mitmproxy at once.

Nothing is refused here: this only orders the work. The upgrades of a storm still
all open (the slots turn over in milliseconds), and pages and probes are served meanwhile.

One kind of request is answered here instead of handed over: a load balancer's probe
(``Admission.answer``, set to ``adminapi.probe_answer`` where this process answers
``/_hub/health`` itself), as HAProxy's ``monitor-uri`` is answered by HAProxy. Through
mitmproxy a probe needs a dozen turns of the loop, and while the loop has more work than a
core (50 logins and a thousand upgrades at once), each turn takes tens of milliseconds: a
load balancer then waited 100-300 ms for a hub that was serving everyone. Here it needs the
turn that reads it. The answer is the same document, made by the same function, as
mitmproxy's; anything the probe's parser does not fully understand goes to mitmproxy as before.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from hubcontrol import Counter, Gauge

log = logging.getLogger("hubproxy")

T = TypeVar("T")

# Upgrades being set up at once (each slot: one upgrade between its request's first bytes and
# the hub's first write back). Measured with 1,000 WebSockets opening at once
# (bench/load.py): see docs/performance.md.
SLOTS = 16
# The longest one upgrade holds a slot: an environment slow to answer its handshake waits
# outside the slots after this, as every upgrade did before.
HOLD_MAX = 0.25
# A connection that has sent nothing for this long is handed over as it is (mitmproxy's own
# timeouts then apply, as before).
SILENT_MAX = 1.0
# Bytes looked at for the end of the first request head: past this, the connection is handed
# over without a verdict.
PEEK_MAX = 16 * 1024

_METHOD_START = tuple(
    m + b" " for m in (b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"HEAD", b"OPTIONS")
)


def asks_upgrade(head: bytes) -> bool:
    """Whether the HTTP/1 request head ``head`` (up to its blank line) has an ``Upgrade``
    header."""
    for line in head.split(b"\r\n")[1:]:
        name, sep, _ = line.partition(b":")
        if sep and name.strip().lower() == b"upgrade":
            return True
    return False


# ``Admission.answer``: given a whole request head (without its blank line), the bytes to send
# and whether the connection stays open after them, or None to hand the connection to mitmproxy.
Answer = Callable[[bytes], "tuple[bytes, bool] | None"]


class Admission:
    """The slots of one event loop's hub port, and what it answers itself (``answer``)."""

    def __init__(self, slots: int = SLOTS, hold_max: float = HOLD_MAX) -> None:
        self.slots = slots
        self.hold_max = hold_max
        self.answer: Answer | None = None
        self.answered = 0  # requests answered here, not by mitmproxy (the tests look)
        self.busy = 0
        self.waiting: collections.deque[AdmittingProtocol] = collections.deque()
        self.queued_total = 0  # upgrades that had to wait
        # /_hub/metrics (``count_in``): how many wait now, and how many ever had to
        self._waiting_gauge: Gauge | None = None
        self._queued_counter: Counter | None = None
        self._answered_counter: Counter | None = None

    def count_in(self, waiting: Gauge, queued: Counter, answered: Counter | None = None) -> None:
        """Keep ``waiting`` (upgrades in line now) and ``queued`` (upgrades that had to wait)
        up to date, both without labels: what an operator sees of a reconnect storm; and
        ``answered``, the probes answered here without mitmproxy."""
        self._waiting_gauge, self._queued_counter = waiting, queued
        self._answered_counter = answered
        waiting.inc(amount=len(self.waiting))
        queued.inc(amount=self.queued_total)
        if answered is not None:
            answered.inc(amount=self.answered)

    def count_answer(self) -> None:
        """One request answered here, not by mitmproxy."""
        self.answered += 1
        if self._answered_counter is not None:
            self._answered_counter.inc()

    def wrap(self, factory: Callable[[], asyncio.BaseProtocol]) -> Callable[[], AdmittingProtocol]:
        return lambda: AdmittingProtocol(factory, self)

    def acquire(self, conn: AdmittingProtocol) -> bool:
        if self.busy < self.slots and not self.waiting:
            self.busy += 1
            return True
        self.waiting.append(conn)
        self.queued_total += 1
        if self._waiting_gauge is not None and self._queued_counter is not None:
            self._waiting_gauge.inc()
            self._queued_counter.inc()
        return False

    def release(self) -> None:
        self.busy -= 1
        if self.waiting and self.busy < self.slots:
            # on the next turn of the loop, not inside whoever gave the slot back (a write)
            self.busy += 1
            asyncio.get_running_loop().call_soon(self.waiting.popleft().admit_upgrade)
            self._left_the_line()

    def forget(self, conn: AdmittingProtocol) -> None:
        """``conn`` closed while it waited."""
        try:
            self.waiting.remove(conn)
        except ValueError:
            return
        self._left_the_line()

    def _left_the_line(self) -> None:
        if self._waiting_gauge is not None:
            self._waiting_gauge.dec()


class _SlotTransport:
    """The client transport as mitmproxy sees it for an upgrade holding a slot: the first write,
    or a close, gives the slot back. Everything else is the transport's own."""

    def __init__(self, transport: asyncio.Transport, done: Callable[[], None]) -> None:
        self.transport = transport
        self.done = done

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.done()
        self.transport.write(data)

    def writelines(self, lines: Iterable[bytes | bytearray | memoryview]) -> None:
        self.done()
        self.transport.writelines(lines)

    def close(self) -> None:
        self.done()
        self.transport.close()

    def abort(self) -> None:
        self.done()
        self.transport.abort()

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401 (the transport's own, as they are)
        return getattr(self.transport, name)


def give_back(transport: object) -> None:
    """The slot of the connection behind ``transport`` (mitmproxy's client transport) is given
    back now: for an upgrade whose own work is done and that only waits for its environment's
    answer (the relay, once it sent the request on). A user's environment that never answers
    then holds no slot, and cannot hold up other users' upgrades."""
    if isinstance(transport, _SlotTransport):
        transport.done()


def underlying(transport: T) -> T:
    """The socket's own transport behind ``transport`` (a connection mitmproxy was handed), the
    slot given back: for whoever takes the connection over (the WebSocket relay), so its every
    write is the transport's own."""
    if isinstance(transport, _SlotTransport):
        transport.done()
        return cast(T, transport.transport)
    return transport


class AdmittingProtocol(asyncio.Protocol):
    """Reads a new connection's first request head, then hands the connection (and the bytes)
    to mitmproxy's protocol: at once, or for an upgrade once it has a slot."""

    def __init__(self, factory: Callable[[], asyncio.BaseProtocol], admission: Admission) -> None:
        self.factory = factory
        self.admission = admission
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.state = "peeking"  # -> "waiting" -> "holding" / "passed", or "closed"
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.timer = asyncio.get_running_loop().call_later(SILENT_MAX, self._hand_over)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.state != "peeking":
            # waiting: a browser sends nothing more before the 101 (RFC 6455 4.1); bytes it
            # sends anyway are kept for mitmproxy, up to a bound
            if len(self.buffer) > PEEK_MAX and self.transport is not None:
                self.transport.pause_reading()
            return
        buf = self.buffer
        end = buf.find(b"\r\n\r\n")
        # Only a request alone in its read, on a connection whose last answer has gone out: a
        # probe does not pipeline and reads its answers, and a client that sends thousands of
        # requests in one go, or never reads, is mitmproxy's to pace as any other.
        answer = self.admission.answer
        assert self.transport is not None
        if (
            answer is not None
            and end + 4 == len(buf)
            and not self.transport.get_write_buffer_size()
            and (reply := answer(bytes(buf[:end]))) is not None
        ):
            response, keep_open = reply
            buf.clear()
            self.admission.count_answer()
            self.transport.write(response)
            self._cancel_timer()
            if keep_open:  # the connection's next request is looked at afresh: its own wait
                self.timer = asyncio.get_running_loop().call_later(SILENT_MAX, self._hand_over)
            else:
                self.state = "closed"
                self.transport.close()
            return
        if end < 0:
            start = bytes(buf[:8])
            if len(buf) < PEEK_MAX and any(
                m.startswith(start) or start.startswith(m) for m in _METHOD_START
            ):
                return  # an HTTP/1 request head still coming (at most SILENT_MAX)
            self._hand_over()
            return
        if asks_upgrade(bytes(buf[:end])):
            self._cancel_timer()
            if self.admission.acquire(self):
                self.admit_upgrade()
            else:
                # still reading, so a browser that gives up is noticed and leaves the queue
                self.state = "waiting"
            return
        self._hand_over()

    def eof_received(self) -> bool | None:
        self.eof = True
        if self.state == "waiting":
            # A WebSocket client sends nothing before the 101, and does not half-close: this
            # one has left. Setting its upgrade up would be work for nobody.
            self.admission.forget(self)
            self.state = "closed"
            return False  # the transport closes
        if self.state == "peeking":
            self._hand_over()
        return True  # keep the transport open: mitmproxy decides once it has the connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self.state == "waiting":
            self.admission.forget(self)
        self.state = "closed"

    def admit_upgrade(self) -> None:
        """Called with a slot taken for this connection."""
        if self.state == "closed" or self.transport is None or self.transport.is_closing():
            self.admission.release()
            self.state = "closed"
            return
        loop = asyncio.get_running_loop()
        released = False

        def release_once() -> None:
            nonlocal released
            if not released:
                released = True
                hold.cancel()
                self.admission.release()

        hold = loop.call_later(self.admission.hold_max, release_once)
        self.state = "holding"
        if not self.transport.is_reading():
            self.transport.resume_reading()
        self._pass_to(cast(asyncio.Transport, _SlotTransport(self.transport, release_once)))

    def _hand_over(self) -> None:
        if self.state != "peeking":
            return
        self._cancel_timer()
        self.state = "passed"
        assert self.transport is not None
        self._pass_to(self.transport)

    def _pass_to(self, transport: asyncio.BaseTransport) -> None:
        inner = self.factory()
        real = self.transport
        assert real is not None
        real.set_protocol(inner)
        inner.connection_made(transport)
        if self.buffer:
            data, self.buffer = bytes(self.buffer), bytearray()
            inner.data_received(data)  # type: ignore[attr-defined]
        if self.eof and not real.is_closing():
            keep = inner.eof_received()  # type: ignore[attr-defined]
            if not keep:
                real.close()

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
