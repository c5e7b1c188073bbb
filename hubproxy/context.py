"""What the request-path addons share: configuration, keys, sessions, the control plane.

One ``HubContext`` is created per proxy process and handed to every addon. Under ``hub start`` it
is filled before the proxy listens; under ``mitmdump -s addons/hub.py`` the bootstrap addon fills
it when options are set. Until then every request gets a 503 page (``ready`` is False).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from hubproxy.cookies import derive_key
from hubproxy.sessions import SessionStore

if TYPE_CHECKING:
    import asyncio

    from hubcontrol.config import HubConfig

# flow.metadata keys, set by one addon and read by the ones after it
TARGET = "hub.target"  # hosts.Target
ENDPOINT = "hub.endpoint"  # str: the /_hub/<endpoint>, or absent for environment traffic
SESSION = "hub.session"  # sessions.Session of a verified cookie
USER = "hub.user"  # the session's user name
ROUTED = "hub.routed"  # True once the router sent the flow to an environment
SCHEME = "hub.scheme"  # "http"/"https" as the browser sees it (X-Forwarded-Proto)


class ControlPlane(Protocol):
    """The hub's control plane as seen from the proxy's event loop (see ``runtime.py``).

    ``route``, ``touch`` and ``progress`` are cheap synchronous reads/stores; ``start`` returns an
    awaitable that resolves when the environment runs, and starts it at most once per user.
    """

    def route(self, user: str): ...

    def touch(self, user: str, kind: str) -> None: ...

    def progress(self, user: str): ...

    def start(self, user: str, template: str | None) -> asyncio.Future: ...

    def health(self) -> dict: ...


@dataclass
class HubContext:
    config: HubConfig | None = None
    control: ControlPlane | None = None
    sessions: SessionStore | None = None
    session_key: bytes = b""
    state_key: bytes = b""
    pkce_key: bytes = b""
    clock: Callable[[], float] = time.time
    # open WebSockets per session id, closed at logout: hubproxy.relay.Relay objects, and
    # mitmproxy WebSocket flows for connections the relay does not take (TLS, HTTP/2)
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
