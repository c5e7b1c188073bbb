"""OAuth2 authorization-code login (authlib, S256 PKCE), its callback, and logout.

Endpoints: ``/_hub/login?next=URL&template=NAME``, ``/_hub/oauth/callback``, ``/_hub/logout``
(GET: a page asking to confirm; POST with the session's CSRF token from that page, the dashboard
or the hub's index, same-origin: the logout itself, so no other site can log a user out).
Only the seed's ``HUB_OAUTH_*`` variables configure it:

- scopes: ``openid`` plus ``HUB_OAUTH_SCOPES`` (OIDC providers need ``openid`` for userinfo; plain
  OAuth2 providers such as GitHub and Nextcloud ignore a scope they do not know);
- redirect URI: ``HUB_OAUTH_REDIRECT_URI``, else ``<scheme>://<host>/_hub/oauth/callback`` of the
  host the login started on (register one per prefix host at the provider, or set the variable);
- user name: ``HUB_OAUTH_USERINFO_PATH``, a dot-path into the userinfo JSON (``ocs.data.id``);
- groups for ``HUB_ALLOWED_GROUPS``: the userinfo value at ``HUB_OAUTH_GROUPS_PATH`` (a dot-path,
  default ``groups``; Nextcloud ``ocs.data.groups``), a list of strings or one comma- or
  space-separated string; they are kept in the server-side session only;
- the token endpoint is called with HTTP Basic client authentication first and, if the provider
  answers ``invalid_client``/401, with the credentials in the form body (the way Go's oauth2
  package auto-detects), remembering what worked.

Every provider failure ends on a page that says what happened, never a 500 or a redirect loop.
"""

from __future__ import annotations

import logging
import ssl
from urllib.parse import urlsplit

import httpx
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from mitmproxy import exceptions, http

from hubcontrol import UsernameError
from hubproxy import hosts
from hubproxy.addons.router import large_body
from hubproxy.addons.sessioncheck import conflict_response, lookup
from hubproxy.auth import cookies, identity
from hubproxy.auth.csrf import CSRF_FIELD, CSRF_HEADER, csrf_problem, csrf_token, origin_problem
from hubproxy.auth.oauthstate import (
    STATE_TTL,
    LoginState,
    StateError,
    make_state,
    new_nonce,
    pkce_verifier,
    read_state,
    state_cookie_name,
)
from hubproxy.auth.sessionstore import SESSION_TTL, Session
from hubproxy.context import ENDPOINT, SCHEME, TARGET, HubContext
from hubproxy.guard import close_connection, fail_closed
from hubproxy.web import pages

log = logging.getLogger("hubproxy.oauth")

CALLBACK_PATH = "/_hub/oauth/callback"
GROUPS_CLAIM = "groups"
PROVIDER_TIMEOUT = 10.0
# flow.metadata: the session a logout POST names, checked once its form body has arrived
LOGOUT_PENDING = "hub.logout"
MAX_LOGOUT_BODY = 4096


class ProviderError(Exception):
    """Raised when the OAuth provider refuses or fails; ``status`` and ``message`` are for the page."""

    def __init__(self, status: int, message: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.message = message
        self.detail = detail


def effective_scopes(extra: tuple[str, ...] | list[str]) -> str:
    """The scope parameter: ``openid`` plus the configured extra scopes, without duplicates."""
    scopes = ["openid"]
    for s in extra:
        if s and s not in scopes:
            scopes.append(s)
    return " ".join(scopes)


def redirect_uri(configured: str | None, scheme: str, host_header: str) -> str:
    return configured or f"{scheme}://{host_header.strip().lower()}{CALLBACK_PATH}"


def dot_path(data: object, path: str) -> object:
    """The value at a dot-separated ``path`` in JSON ``data`` (list items by index); KeyError if absent."""
    value = data
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise KeyError(part)
    return value


def username_from_userinfo(data: object, path: str) -> str:
    """The username at ``path``, exactly as the provider sent it (a number becomes its digits).

    Nothing is trimmed or normalised: ``identity.check_username`` refuses what would need it.
    """
    try:
        value = dot_path(data, path)
    except KeyError:
        raise ProviderError(
            502,
            "The login provider did not tell us who you are.",
            f"The userinfo answer has no value at HUB_OAUTH_USERINFO_PATH={path!r}"
            + (f"; its top-level keys are {sorted(data)}" if isinstance(data, dict) else ""),
        ) from None
    if isinstance(value, bool) or not isinstance(value, str | int) or str(value) == "":
        raise ProviderError(
            502,
            "The login provider did not tell us who you are.",
            f"The userinfo value at HUB_OAUTH_USERINFO_PATH={path!r} is not a non-empty "
            f"string or number (it is {type(value).__name__}).",
        )
    return str(value)


def groups_from_userinfo(data: object, path: str = GROUPS_CLAIM) -> tuple[str, ...]:
    try:
        value = dot_path(data, path)
    except KeyError:
        return ()
    if isinstance(value, str):
        return tuple(g for g in value.replace(",", " ").split() if g)
    if isinstance(value, list):
        return tuple(str(g) for g in value if isinstance(g, str | int) and str(g))
    return ()


def allowed(groups: tuple[str, ...], allowed_groups: frozenset[str]) -> bool:
    """True when no group restriction is configured or the user is in one of the allowed groups."""
    return not allowed_groups or bool(allowed_groups.intersection(groups))


class OAuthLogin:
    def __init__(
        self, context: HubContext, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.context = context
        self.transport = transport  # tests only: a provider behaviour no real provider here has
        self._tls_context: ssl.SSLContext | None = None

    def running(self) -> None:
        self._tls()  # at start-up, so no login pays for it

    def _tls(self) -> ssl.SSLContext:
        """httpx's default TLS settings for the provider (certifi's CA bundle, or
        ``SSL_CERT_FILE``/``SSL_CERT_DIR``), made once and shared by every login's client.
        Without it each login's client builds its own and reads the whole CA bundle on the event
        loop: tens of milliseconds of CPU per login, which 50 logins at once turned into
        half-second stalls of every request the hub serves (bench/load.py)."""
        if self._tls_context is None:
            self._tls_context = httpx.create_ssl_context()
        return self._tls_context

    @fail_closed
    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or TARGET not in flow.metadata:
            return
        endpoint = flow.metadata.get(ENDPOINT)
        if endpoint == "login":
            self.login(flow)
        elif endpoint == "oauth/callback":
            await self.callback(flow)
        elif endpoint == "logout":
            self.logout(flow)

    # -- helpers ---------------------------------------------------------------------------

    def _secure(self, flow: http.HTTPFlow) -> bool:
        return flow.metadata.get(SCHEME) == "https"

    def _domain(self) -> str | None:
        return cookies.cookie_domain(self.context.config.base_domain)

    def _browser(self, flow: http.HTTPFlow) -> tuple[str, list[str]]:
        """This browser's id, and the ``Set-Cookie`` that gives it one when it has none (or
        two: a page planted the other, and the new one replaces the hub's at ``Path=/``)."""
        ids = cookies.browser_ids(flow.request.headers.get_all("cookie"))
        if len(ids) == 1:
            return ids[0], []
        browser_id = cookies.new_browser_id()
        value = cookies.set_cookie(
            cookies.BROWSER_COOKIE,
            browser_id,
            max_age=cookies.BROWSER_TTL,
            secure=self._secure(flow),
            domain=self._domain(),
        )
        return browser_id, [value]

    def _client(self, redirect: str, auth_method: str | None = None) -> AsyncOAuth2Client:
        oauth = self.context.config.oauth
        return AsyncOAuth2Client(
            client_id=oauth.client_id,
            client_secret=oauth.client_secret,
            scope=effective_scopes(oauth.scopes),
            redirect_uri=redirect,
            code_challenge_method="S256",
            token_endpoint_auth_method=auth_method or self.context.token_auth_method,
            timeout=PROVIDER_TIMEOUT,
            verify=self._tls(),
            **({"transport": self.transport} if self.transport is not None else {}),
        )

    # -- /_hub/login ---------------------------------------------------------------------------

    def login(self, flow: http.HTTPFlow) -> None:
        config = self.context.config
        if config.oauth is None:
            flow.response = pages.page(
                503,
                "Login is not configured",
                "This hub has no OAuth provider configured.",
                detail="Set the HUB_OAUTH_* variables (see docs/configuration.md).",
            )
            return
        request = flow.request
        template = request.query.get("template") or None
        if template is not None and template not in config.templates:
            known = ", ".join(sorted(config.templates)) or "(none)"
            flow.response = pages.page(
                400,
                "Unknown template",
                f"There is no environment template called {template!r}.",
                detail=f"Templates on this hub: {known}.",
                links=[("Log in with the default", "/_hub/login")],
            )
            return
        scheme = flow.metadata[SCHEME]
        host_header = request.host_header or ""
        here = f"{scheme}://{host_header.lower()}"
        next_url = hosts.safe_return_url(
            request.query.get("next"), config.base_domain, config.routes
        )
        if next_url.startswith("/"):
            next_url = here + next_url
        if hosts.is_hub_path(urlsplit(next_url).path) and hosts.hub_endpoint(
            urlsplit(next_url).path
        ) in (None, "login", "oauth/callback", "logout"):
            next_url = here + "/_hub/"  # never back into the login itself (a loop)
        callback = redirect_uri(config.oauth.redirect_uri, scheme, host_header)
        callback_host = hosts.normalize_host(urlsplit(callback).netloc)
        if self._domain() is None and callback_host != hosts.normalize_host(host_header):
            flow.response = pages.page(
                500,
                "Login is misconfigured",
                "This hub cannot log you in from this address.",
                detail=(
                    f"HUB_OAUTH_REDIRECT_URI points at {callback_host}, but cookies for "
                    f"{config.base_domain} cannot be shared between hosts; leave it empty."
                ),
            )
            return
        nonce = new_nonce()
        now = self.context.clock()
        state = make_state(
            self.context.state_key, nonce=nonce, return_to=next_url, template=template, now=now
        )
        url = prepare_grant_uri(
            config.oauth.authorize_url,
            client_id=config.oauth.client_id,
            response_type="code",
            redirect_uri=callback,
            scope=effective_scopes(config.oauth.scopes),
            state=state,
            code_challenge=create_s256_code_challenge(pkce_verifier(self.context.pkce_key, nonce)),
            code_challenge_method="S256",
        )
        set_cookies = [
            cookies.set_cookie(
                state_cookie_name(nonce),
                nonce,
                max_age=STATE_TTL,
                secure=self._secure(flow),
                domain=self._domain(),
                path=CALLBACK_PATH,
            )
        ]
        _, new_browser = self._browser(flow)
        flow.response = pages.redirect(url, set_cookies + new_browser)

    # -- /_hub/oauth/callback ---------------------------------------------------------------

    async def callback(self, flow: http.HTTPFlow) -> None:
        config = self.context.config
        query = flow.request.query
        retry = [("Log in again", "/_hub/login")]
        if config.oauth is None:
            flow.response = pages.not_found("Login is not configured on this hub.")
            return
        if "error" in query:
            error = query.get("error", "")
            description = query.get("error_description", "")
            denied = error == "access_denied"
            flow.response = pages.page(
                403 if denied else 502,
                "Login was not completed",
                "You declined the login at the provider."
                if denied
                else "The login provider reported an error.",
                detail=f"{error}: {description}" if description else error,
                links=retry,
            )
            return
        jar: dict[str, list[str]] = {}
        for name, value in cookies.parse_cookie_header(flow.request.headers.get_all("cookie")):
            jar.setdefault(name, []).append(value)
        try:
            login = read_state(
                query.get("state"), self.context.state_key, jar, self.context.clock()
            )
        except StateError as e:
            flow.response = pages.page(
                400,
                "Login expired or invalid",
                "This login link cannot be used. Start the login again.",
                detail=e.reason,
                links=retry,
            )
            return
        # The state is single-use: its cookie is deleted whatever happens next.
        forget_state = cookies.set_cookie(
            state_cookie_name(login.nonce),
            "",
            max_age=0,
            secure=self._secure(flow),
            domain=self._domain(),
            path=CALLBACK_PATH,
        )
        flow.response = await self._finish_login(flow, login, query.get("code"))
        flow.response.headers.add("Set-Cookie", forget_state)

    async def _finish_login(
        self, flow: http.HTTPFlow, login: LoginState, code: str | None
    ) -> http.Response:
        config = self.context.config
        retry = [("Log in again", "/_hub/login")]
        if not code:
            return pages.bad_request("The provider sent no authorization code.")
        callback = redirect_uri(
            config.oauth.redirect_uri, flow.metadata[SCHEME], flow.request.host_header or ""
        )
        try:
            userinfo = await self._exchange(
                code, pkce_verifier(self.context.pkce_key, login.nonce), callback
            )
            user = username_from_userinfo(userinfo, config.oauth.userinfo_path)
        except ProviderError as e:
            log.warning("hub: login failed: %s", e.detail)
            return pages.page(e.status, "Login failed", e.message, detail=e.detail, links=retry)
        try:
            # the exact name, and one an environment can be made for; refused now otherwise
            identity.check_username(user)
        except UsernameError as e:
            log.warning("hub: login refused: %s", e.log_message)
            return pages.page(403, "Login refused", e.user_message, links=retry)
        groups = groups_from_userinfo(userinfo, config.oauth.groups_path)
        if not allowed(groups, config.allowed_groups):
            log.info(
                "hub: %s refused: not in HUB_ALLOWED_GROUPS (groups at HUB_OAUTH_GROUPS_PATH=%s: %s)",
                identity.shown(user),
                config.oauth.groups_path,
                ", ".join(groups) if groups else "none; check the path against the userinfo answer",
            )
            return pages.page(
                403,
                "Access denied",
                f"You are logged in as {identity.shown_with_provider_name(user)}, but your "
                "account is not in a group allowed to use this hub.",
                detail="Ask an administrator to add you to one of the allowed groups.",
            )
        browser_id, new_browser = self._browser(flow)
        session = self.context.sessions.create(
            user,
            groups=groups,
            template=login.template,
            admin=identity.is_admin(config, user),
            ttl=SESSION_TTL,
            browser=cookies.browser_binding(browser_id),
        )
        # the cookie goes out once the session is on disk (written off this loop meanwhile)
        await self.context.sessions.saved()
        log.info("hub: %s logged in (session %s…)", identity.shown(user), session.sid[:6])
        if login.template is not None:
            # A template picked at login (re)builds the environment now, while the browser follows
            # the redirect; the router shows progress until it answers.
            self.context.control.start(user, login.template)
        token = cookies.make_session_token(
            cookies.SessionCookie(user, session.sid, session.exp), self.context.session_key
        )
        return pages.redirect(
            login.return_to,
            [
                cookies.set_cookie(
                    cookies.SESSION_COOKIE,
                    token,
                    max_age=SESSION_TTL,
                    secure=self._secure(flow),
                    domain=self._domain(),
                ),
                *new_browser,
            ],
        )

    async def _exchange(self, code: str, verifier: str, callback: str) -> object:
        """Trade the code for a token and fetch the userinfo JSON."""
        oauth = self.context.config.oauth
        methods = [self.context.token_auth_method] + [
            m
            for m in ("client_secret_basic", "client_secret_post")
            if m != self.context.token_auth_method
        ]
        for attempt, method in enumerate(methods):
            async with self._client(callback, method) as client:
                try:
                    await client.fetch_token(oauth.token_url, code=code, code_verifier=verifier)
                except OAuthError as e:
                    if e.error == "invalid_client" and attempt == 0:
                        continue
                    raise ProviderError(
                        502 if e.error != "invalid_grant" else 400,
                        "The login provider did not accept the login.",
                        f"token endpoint: {e.error}: {e.description or ''}".strip(),
                    ) from None
                except httpx.HTTPStatusError as e:
                    if e.response.status_code == 401 and attempt == 0:
                        continue
                    raise ProviderError(
                        502,
                        "The login provider failed.",
                        f"token endpoint answered {e.response.status_code}",
                    ) from None
                except httpx.HTTPError as e:
                    raise ProviderError(
                        502,
                        "The login provider could not be reached.",
                        f"token endpoint {oauth.token_url}: {type(e).__name__}: {e}",
                    ) from None
                except ValueError:
                    raise ProviderError(
                        502,
                        "The login provider failed.",
                        "token endpoint did not answer with JSON",
                    ) from None
                if "access_token" not in (client.token or {}):
                    raise ProviderError(
                        502, "The login provider failed.", "token response has no access_token"
                    )
                self.context.token_auth_method = method
                try:
                    response = await client.get(
                        oauth.userinfo_url, headers={"Accept": "application/json"}
                    )
                except httpx.HTTPError as e:
                    raise ProviderError(
                        502,
                        "The login provider could not be reached.",
                        f"userinfo endpoint {oauth.userinfo_url}: {type(e).__name__}: {e}",
                    ) from None
                if response.status_code != 200:
                    raise ProviderError(
                        502,
                        "The login provider refused to say who you are.",
                        f"userinfo endpoint answered {response.status_code}",
                    )
                try:
                    return response.json()
                except ValueError:
                    raise ProviderError(
                        502,
                        "The login provider failed.",
                        "userinfo endpoint did not answer with JSON",
                    ) from None
        raise ProviderError(
            502,
            "The login provider did not accept this hub.",
            "token endpoint: invalid_client with both Basic and form-body client authentication; "
            "check HUB_OAUTH_CLIENT_ID and HUB_OAUTH_CLIENT_SECRET",
        )

    # -- /_hub/logout -------------------------------------------------------------------------

    def logout(self, flow: http.HTTPFlow) -> None:
        """GET: a page asking to confirm, with a form that POSTs the session's CSRF token.
        POST: end the session, if the token and the request's origin are the hub's own."""
        request = flow.request
        found = lookup(self.context, request)
        if found.conflict:
            flow.response = conflict_response(self.context, flow, found.conflict)
            return
        session = found.session
        if request.method in ("GET", "HEAD"):
            flow.response = self._logout_confirmation(session)
            return
        if request.method != "POST":
            flow.response = pages.page(
                405,
                "Use the logout button",
                "Logging out takes the button on the hub's logout page.",
                links=[("Log out", "/_hub/logout")],
                headers={"Allow": "GET, HEAD, POST"},
            )
            return
        problem = origin_problem(request, flow.metadata[SCHEME])
        if problem is None and session is not None and CSRF_HEADER not in request.headers:
            if large_body(request, MAX_LOGOUT_BODY):
                flow.response = pages.page(
                    413, "Request too large", "A logout form is a few bytes; this was not."
                )
                return
            # The token is in the form body, which mitmproxy reads before the ``request`` hook;
            # the addons after this one must not answer the request meanwhile.
            flow.metadata[LOGOUT_PENDING] = session
            raise exceptions.AddonHalt
        self._finish_logout(flow, session, None, problem)

    @fail_closed
    def request(self, flow: http.HTTPFlow) -> None:
        session = flow.metadata.pop(LOGOUT_PENDING, None)
        if session is None or flow.response:
            return
        form = flow.request.urlencoded_form if flow.request.content else {}
        given = form.get(CSRF_FIELD, "")
        live = self.context.sessions.get(session.sid, session.user)
        self._finish_logout(flow, live, given, None)

    def _finish_logout(
        self,
        flow: http.HTTPFlow,
        session: Session | None,
        given: str | None,
        problem: str | None,
    ) -> None:
        if problem is None and session is not None:
            problem = csrf_problem(
                flow.request, self.context.session_key, session.sid, flow.metadata[SCHEME], given
            )
        if problem is not None:
            log.warning(
                "hub: refused a logout of %s: %s",
                identity.shown(session.user) if session else "nobody",
                problem,
            )
            flow.response = pages.page(
                403,
                "Not logged out",
                "This logout did not come from the hub's own logout button, so the hub ignored "
                "it." + (" You are still logged in." if session is not None else ""),
                detail=problem,
                links=[("Log out", "/_hub/logout")],
            )
            return
        if session is not None:
            # Per-host cookies (e.g. on *.localhost) mean one browser holds a session per prefix;
            # logging out ends all of the user's sessions, so no prefix stays logged in.
            ended = self.context.sessions.revoke_user(session.user)
            closed = sum(close_websockets(self.context, s.sid) for s in ended)
            log.info(
                "hub: %s logged out (%d session(s), %d WebSocket(s) closed)",
                identity.shown(session.user),
                len(ended),
                closed,
            )
        expired = [
            cookies.set_cookie(cookies.SESSION_COOKIE, "", max_age=0, secure=self._secure(flow))
        ]
        if self._domain():
            expired.append(
                cookies.set_cookie(
                    cookies.SESSION_COOKIE,
                    "",
                    max_age=0,
                    secure=self._secure(flow),
                    domain=self._domain(),
                )
            )
        flow.response = pages.page(
            200,
            "Logged out",
            "You are logged out of the hub on every prefix and device. Your environment keeps "
            "running until it is idle."
            if session is not None
            else "You were not logged in.",
            links=[("Log in again", "/_hub/login")],
        )
        for c in expired:
            flow.response.headers.add("Set-Cookie", c)

    def _logout_confirmation(self, session: Session | None) -> http.Response:
        if session is None:
            return pages.page(
                200,
                "Not logged in",
                "You are not logged in to this hub.",
                links=[("Log in", "/_hub/login")],
            )
        return pages.page(
            200,
            "Log out?",
            f"You are logged in as {identity.shown_with_provider_name(session.user)}. Log out "
            "of the hub on every prefix and device? Your terminals and editors will close.",
            forms=[logout_form(self.context, session)],
            links=[("Back to the dashboard", "/_hub/dashboard")],
        )


def logout_form(context: HubContext, session: Session) -> tuple[str, str, dict[str, str]]:
    """The logout button for ``pages.page(forms=...)``: a POST carrying the session's token."""
    return ("Log out", "/_hub/logout", {CSRF_FIELD: csrf_token(context.session_key, session.sid)})


def close_websockets(context: HubContext, sid: str) -> int:
    """Close every WebSocket opened with session ``sid`` (relayed ones and mitmproxy WebSocket
    flows, see ``hubproxy.addons.websocketrelay``); returns how many."""
    from hubproxy.addons.websocketrelay import Relay

    live = context.websockets.pop(sid, set())
    for item in list(live):
        if isinstance(item, Relay):
            item.close()
        else:
            close_connection(item)
    return len(live)
