"""Who is asking: signed cookies, the OAuth ``state``, CSRF tokens, identities and sessions.

Pure functions and the session store; the addons that use them are in ``hubproxy.addons``
(``OAuthLogin``, ``SessionCheck``).

- ``cookies.py``: signed tokens and the hub's cookies (names, domains, stripping);
- ``oauthstate.py``: the OAuth ``state`` parameter, its browser binding and the PKCE verifier;
- ``csrf.py``: CSRF tokens of sessions and the check every cookie-authenticated POST passes;
- ``identity.py``: the provider's exact username, how the hub shows it, who is an admin;
- ``sessionstore.py``: ``Session`` and ``SessionStore`` (server-side sessions), the session secret.
"""
