"""What the request-path addons share: configuration, keys, sessions, the control plane.

One ``HubContext`` is created per proxy process and handed to every addon. Under ``hub start`` it
is filled before the proxy listens; under ``mitmdump -s addons/hub.py`` the bootstrap addon fills
it when options are set. Until then every request gets a 503 page (``ready`` is False).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from hubproxy.auth.cookies import derive_key
from hubproxy.auth.sessionstore import SessionStore

if TYPE_CHECKING:
    import asyncio

    from hubcontrol import (
        Counter,
        Histogram,
        HubConfig,
        Progress,
        Route,
        RouteTable,
        StatusView,
    )

# flow.metadata keys, set by one addon and read by the ones after it
TARGET = "hub.target"  # hosts.Target
ENDPOINT = "hub.endpoint"  # str: the /_hub/<endpoint>, or absent for environment traffic
SESSION = "hub.session"  # auth.sessionstore.Session of a verified cookie
USER = "hub.user"  # the session's user name
ROUTED = "hub.routed"  # True once the router sent the flow to an environment
SCHEME = "hub.scheme"  # "http"/"https" as the browser sees it (X-Forwarded-Proto)

Action = Literal["stop", "checkpoint", "restart", "checkpoint-reset"]


class UnknownUser(LookupError):
    """Raised when an action names a user the hub has no record of."""


@dataclass(frozen=True)
class ActionResult:
    """Where an environment stands after ``ControlPlane.act``: its user (the raw username of
    the record), state, and template (to start it again with)."""

    user: str
    state: str | None
    template: str | None = None


class ControlPlane(Protocol):
    """The hub's control plane as the proxy's event loop sees it, in ``hubcontrol``'s value types.

    Two implementations: ``server.controlthread.EmbeddedControlPlane`` over the ``Hub`` in this
    process's control thread, and ``workers.worker.RemoteControlPlane`` in workers 1..N-1 of
    ``hub start --workers N`` (local copies worker 0 keeps up to date). Tests use the same value
    types.

    Reads and stamps never wait for another thread: ``route``, ``snapshot``, ``touch``,
    ``activity``, ``progress``, ``status_view`` and ``metric_families`` are a reference read or a
    dict store. ``start`` and ``act`` hand slow work to the control plane and return an asyncio
    future; ``start`` starts an environment at most once per user at a time.
    """

    def route(self, user: str) -> Route | None:
        """The route of the raw username ``user`` (``RouteTable.get``), or None."""

    def snapshot(self) -> RouteTable:
        """The whole route table (immutable, replaced by reference on every change)."""

    def touch(self, user: str, kind: str) -> None:
        """Stamp activity: ``kind`` is "http", "ws-in" or "ws-out"."""

    def activity(self, user: str) -> tuple[float, str] | None:
        """The latest activity stamp ``(time, kind)`` of ``user``, or None."""

    def progress(self, user: str) -> Progress:
        """What ``user``'s environment is doing; ``Progress()`` ("stopped") when nothing is known."""

    def status_view(self) -> StatusView:
        """The sampled status rows, per-user numbers and checkpoint records."""

    def metric_families(self) -> Sequence[Counter | Histogram]:
        """The control plane's own metric families (spawns, restores, checkpoints, stops)."""

    def start(self, user: str, template: str | None) -> asyncio.Future[object]:
        """Start ``user``'s environment (with ``template``, None: the current or default one)."""

    def act(self, target: str, action: Action) -> asyncio.Future[ActionResult]:
        """Stop (``stop``, ``restart``) or checkpoint (``checkpoint``) the environment of
        ``target``, a username or a safe name; fails with ``UnknownUser`` or a ``HubError``."""

    def health(self) -> dict:
        """The control plane's part of ``/_hub/health``: ``ok``, ``control_plane``, ``starting``."""


@dataclass
class HubContext:
    config: HubConfig | None = None
    control: ControlPlane | None = None
    sessions: SessionStore | None = None
    session_key: bytes = b""
    state_key: bytes = b""
    pkce_key: bytes = b""
    clock: Callable[[], float] = time.time
    # open WebSockets per session id, closed at logout: hubproxy.addons.websocketrelay.Relay
    # objects, and mitmproxy WebSocket flows for connections the relay does not take (TLS, HTTP/2)
    websockets: dict[str, set] = field(default_factory=dict)
    # token endpoint client authentication that worked last ("client_secret_basic"/"_post")
    token_auth_method: str = "client_secret_basic"

    @property
    def ready(self) -> bool:
        return self.config is not None and self.control is not None and self.sessions is not None

    def setup(self, config: HubConfig, control: ControlPlane, secret: str) -> None:
        """Fill the context; ``secret`` is the session secret (configured or generated)."""
        self.session_key = derive_key(secret, "session")
        self.state_key = derive_key(secret, "state")
        self.pkce_key = derive_key(secret, "pkce")
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.sessions = SessionStore.open(config.state_dir / "sessions.json", clock=self.clock)
        self.config = config
        self.control = control
