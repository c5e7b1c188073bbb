"""The OAuth ``state`` parameter and its browser binding: pure functions.

``state`` is a signed, short-lived token holding a nonce, the return URL and the template chosen
at ``/_hub/login?template=NAME``. The nonce is also stored in a SameSite=Lax cookie named after it
(``rediacc_hub_oauth_<nonce>``), so the callback only accepts a state this browser started (login
CSRF) and two tabs logging in at once do not overwrite each other. The PKCE verifier is derived
from the nonce with a server-side key: it never leaves the hub and needs no storage.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from hubproxy.auth.cookies import STATE_COOKIE_PREFIX, _b64, sign, unsign

STATE_TTL = 600  # seconds a login may take at the provider


@dataclass(frozen=True)
class LoginState:
    nonce: str
    return_to: str
    template: str | None
    exp: int


class StateError(Exception):
    """Raised when an OAuth callback's state is missing, forged, expired or not this browser's."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def new_nonce() -> str:
    return secrets.token_urlsafe(16)


def state_cookie_name(nonce: str) -> str:
    return STATE_COOKIE_PREFIX + nonce


def make_state(key: bytes, *, nonce: str, return_to: str, template: str | None, now: float) -> str:
    exp = int(now) + STATE_TTL
    return sign({"n": nonce, "r": return_to, "t": template, "exp": exp}, key)


def read_state(
    token: str | None, key: bytes, cookies: dict[str, list[str]], now: float
) -> LoginState:
    """The verified login state of a callback, bound to this browser's state cookie.

    ``cookies`` maps cookie names to the values the browser sent.
    """
    if not token:
        raise StateError("the provider sent no state")
    payload = unsign(token, key, now)
    if payload is None:
        raise StateError("the login state is invalid or expired")
    nonce, return_to, template = payload.get("n"), payload.get("r"), payload.get("t")
    if not isinstance(nonce, str) or not isinstance(return_to, str):
        raise StateError("the login state is malformed")
    if template is not None and not isinstance(template, str):
        raise StateError("the login state is malformed")
    sent = cookies.get(state_cookie_name(nonce), [])
    if not any(hmac.compare_digest(v, nonce) for v in sent):
        raise StateError("this browser did not start the login (its login cookie is missing)")
    return LoginState(nonce=nonce, return_to=return_to, template=template, exp=int(payload["exp"]))


def pkce_verifier(key: bytes, nonce: str) -> str:
    """The PKCE code verifier for a login (43+ characters of base64url, RFC 7636)."""
    return _b64(hmac.new(key, nonce.encode(), hashlib.sha256).digest() * 2)
