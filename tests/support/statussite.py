"""A running proxy over a real ``hubcontrol.Hub`` whose users exist only as seeded records.

For the status API and CLI tests: the Hub's control thread, stats sampler and ``stop`` are real,
the lean mitmproxy master runs every addon of the pipeline, and no environment is started (so no
dockerd is needed; tests/e2e start real ones).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator

from hubcontrol import Hub
from hubcontrol.config import Template
from hubcontrol.names import safe_name
from hubproxy.addons.adminapi import TOKEN_FILE
from hubproxy.auth import cookies
from tests.support.oidc_provider import free_port
from tests.support.proxyfakes import make_config
from tests.support.proxyharness import RunningProxy, running_proxy

DOMAIN = "example.test"
ADMIN = "carol"
# Without a net_id, reconcile leaves a record as it is (nothing to adopt).
USERS = {
    "alice": {"state": "running", "template": "default"},
    "bob": {"state": "checkpointed", "template": "python"},
    ADMIN: {"state": "stopped", "template": "default"},
}


def seed(state_dir, users=USERS) -> None:
    d = state_dir / "users"
    d.mkdir(parents=True)
    for user, fields in users.items():
        name = safe_name(user)
        rec = {"name": name, "user": user, "per_user_docker": False, "mode": "persistent"}
        rec.update(fields, net_id=None)
        (d / f"{name}.json").write_text(json.dumps(rec))


@contextlib.contextmanager
def seeded_site(
    tmp_path, users=USERS, *, checkpoint: bool = False
) -> Iterator[tuple[RunningProxy, Hub, object]]:
    config = make_config(
        tmp_path,
        routes={"term": 7681, "code": 8080},
        base_domain=DOMAIN,
        admin_users=frozenset({ADMIN}),
        session_secret="a" * 64,
        templates={"default": Template("default", "img"), "python": Template("python", "py")},
        workspace_dir=tmp_path / "ws",
        state_dir=tmp_path / "state",
        checkpoint=checkpoint,
        idle_timeout=1800.0,
        # a pool of its own: other tests' per-user networks come and go in the default one
        user_subnet_pool="10.236.0.0/16",
    )
    seed(config.state_dir, users)
    hub = Hub(config)
    with running_proxy(config, hub, free_port()) as proxy:
        deadline = time.monotonic() + 10
        while hub.stats.view().refreshed_at is None and time.monotonic() < deadline:
            time.sleep(0.05)
        yield proxy, hub, config


def session_for(proxy: RunningProxy, user: str):
    """A server-side session for ``user`` and the Cookie header that names it."""
    session = proxy.context.sessions.create(user)
    token = cookies.make_session_token(
        cookies.SessionCookie(user, session.sid, session.exp), proxy.context.session_key
    )
    return session, {"Cookie": f"{cookies.SESSION_COOKIE}={token}"}


def admin_token(config) -> str:
    return (config.state_dir / TOKEN_FILE).read_text().strip()
