"""Talk to a running hub's API: ``hub status`` and ``hub stop`` use it.

The hub answers on ``--url`` (``HUB_URL``, default ``http://127.0.0.1:7112``); calls carry the
admin token read from ``--token-file`` (``HUB_TOKEN_FILE``, default
``/var/lib/rediacc/hub/admin.token``, written by the hub at its first start, root-only).

Every failure is a ``HubClientError`` with a message for the terminal and the exit code the
commands use (``hubcli.exitcodes``, docs/api.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import httpx

from hubcli.exitcodes import EXIT_AUTH, EXIT_FAILURE, EXIT_NO_HUB, EXIT_NO_USER, EXIT_USAGE
from hubcontrol.config import DEFAULT_PORT, DEFAULT_STATE_DIR
from hubcontrol.errors import UsernameError
from hubcontrol.names import safe_name

DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
DEFAULT_TOKEN_FILE = DEFAULT_STATE_DIR / "admin.token"
TIMEOUT = 200.0  # a stop waits for the container, a checkpoint and the daemon


_PATH_SAFE = re.compile(r"[A-Za-z0-9_.@+-]+")


class HubClientError(Exception):
    """Raised when a call to the hub fails; ``code`` is the command's exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def user_segment(user: str) -> str:
    """``user`` as a URL path segment: itself when plain, else its safe name (the hub accepts
    both, and refuses percent-encoded /_hub/ paths)."""
    if _PATH_SAFE.fullmatch(user) and user not in (".", ".."):
        return user
    try:
        return safe_name(user)
    except UsernameError as e:
        raise HubClientError(
            f"{user!r} is not a username the hub can have: {e}", EXIT_USAGE
        ) from None


def read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        raise HubClientError(
            f"no admin token at {path}: the hub writes it at its first start into its "
            "--state-dir; pass --token-file (or HUB_TOKEN_FILE) if the hub uses another one",
            EXIT_AUTH,
        ) from None
    except PermissionError:
        raise HubClientError(
            f"cannot read the admin token {path}: it is root-only; run this as root",
            EXIT_AUTH,
        ) from None
    except OSError as e:
        raise HubClientError(
            f"cannot read the admin token {path}: {e.strerror}", EXIT_AUTH
        ) from None
    if not token:
        raise HubClientError(f"the admin token file {path} is empty", EXIT_AUTH)
    return token


@dataclass
class HubClient:
    url: str = DEFAULT_URL
    token_file: Path = DEFAULT_TOKEN_FILE
    timeout: float = TIMEOUT
    transport: httpx.BaseTransport | None = None

    def _request(self, method: str, path: str) -> dict:
        token = read_token(self.token_file)
        base = self.url.rstrip("/")
        try:
            with httpx.Client(timeout=self.timeout, transport=self.transport) as client:
                response = client.request(
                    method, base + path, headers={"Authorization": f"Bearer {token}"}
                )
        except httpx.ConnectError:
            raise HubClientError(
                f"no hub answering at {base}; is `hub start` running? (set --url or HUB_URL "
                "if it listens elsewhere)",
                EXIT_NO_HUB,
            ) from None
        except httpx.TimeoutException:
            raise HubClientError(
                f"the hub at {base} did not answer in time", EXIT_FAILURE
            ) from None
        except httpx.HTTPError as e:
            raise HubClientError(f"talking to the hub at {base} failed: {e}", EXIT_NO_HUB) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise HubClientError(
                f"{base} answered {response.status_code} without the hub's JSON: is it the hub?",
                EXIT_NO_HUB,
            )
        if response.status_code == 401:
            raise HubClientError(
                f"the hub at {base} refused the admin token in {self.token_file}: is it the "
                "token of this hub (see --token-file)?",
                EXIT_AUTH,
            )
        if response.status_code == 404:
            raise HubClientError(body.get("error") or "not found", EXIT_NO_USER)
        if response.status_code >= 400:
            raise HubClientError(
                body.get("error") or f"the hub answered {response.status_code}", EXIT_FAILURE
            )
        return body

    def status(self) -> dict:
        return self._request("GET", "/_hub/api/status")

    def user(self, user: str) -> dict:
        return self._request("GET", f"/_hub/api/users/{user_segment(user)}")

    def act(self, user: str, action: str) -> dict:
        return self._request("POST", f"/_hub/api/users/{user_segment(user)}/{action}")
