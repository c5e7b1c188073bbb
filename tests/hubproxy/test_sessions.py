from __future__ import annotations

import stat

import pytest

from hubcontrol.errors import ConfigError
from hubproxy.auth.sessionstore import SessionStore, load_session_secret


def test_store_persists_and_revokes(tmp_path):
    now = [1000.0]
    path = tmp_path / "sessions.json"
    store = SessionStore.open(path, clock=lambda: now[0])
    s = store.create("alice", groups=("dev",), template="python", ttl=100)
    assert store.get(s.sid, "alice") == s
    assert store.get(s.sid, "bob") is None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    reopened = SessionStore.open(path, clock=lambda: now[0])
    assert reopened.get(s.sid, "alice").groups == ("dev",)
    reopened.revoke(s.sid)
    assert SessionStore.open(path, clock=lambda: now[0]).get(s.sid, "alice") is None
    t = store.create("carol", ttl=10)
    now[0] += 11
    assert store.get(t.sid, "carol") is None


def test_browser_binding_persists_and_older_stores_still_load(tmp_path):
    import json

    path = tmp_path / "sessions.json"
    store = SessionStore.open(path, clock=lambda: 1000.0)
    s = store.create("alice", browser="digest")
    assert SessionStore.open(path, clock=lambda: 1000.0).get(s.sid, "alice").browser == "digest"
    rows = json.loads(path.read_text())
    del rows[0]["browser"]  # written by a hub from before the binding
    path.write_text(json.dumps(rows))
    assert SessionStore.open(path, clock=lambda: 1000.0).get(s.sid, "alice").browser is None


def test_store_ignores_corrupt_file(tmp_path):
    path = tmp_path / "sessions.json"
    path.write_text("{not json")
    assert len(SessionStore.open(path)) == 0


def test_configured_secret_wins(tmp_path):
    assert load_session_secret("a" * 64, tmp_path) == ("a" * 64, False)
    assert not (tmp_path / "session.secret").exists()


def test_short_secret_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="HUB_SESSION_SECRET"):
        load_session_secret("short", tmp_path)


def test_generated_secret_is_persisted_0600(tmp_path):
    secret, generated = load_session_secret(None, tmp_path / "state")
    assert generated and len(secret) == 64
    path = tmp_path / "state" / "session.secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_session_secret(None, tmp_path / "state") == (secret, True)
