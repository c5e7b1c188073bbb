from __future__ import annotations

import stat
import subprocess
import sys
import time
from pathlib import Path

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


def test_a_short_secret_file_is_kept_aside_and_replaced(tmp_path):
    """A secret file cut short (a full disk) is not signed with: it is moved aside for the
    operator, and a new secret is made."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "session.secret").write_text("abc\n")
    secret, generated = load_session_secret(None, state)
    assert generated and len(secret) == 64
    assert (state / "session.secret").read_text() == secret + "\n"
    assert [p.read_text() for p in state.glob("session.secret.corrupt-*")] == ["abc\n"]


@pytest.mark.parametrize("before", [None, "cut\n"], ids=["no-file", "cut-short-file"])
def test_hubs_starting_at_once_agree_on_one_generated_secret(tmp_path, before):
    """Several hub processes starting together without ``HUB_SESSION_SECRET`` sign cookies with
    the same secret: the first to write it wins, and the others read the winner's, so a cookie
    one signs is accepted by the others; also when they find a file cut short, which only one
    of them moves aside."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from hubproxy.auth.sessionstore import load_session_secret\n"
        "sys.stdin.readline()\n"  # all of them wait here, then race
        "print(load_session_secret(None, Path(sys.argv[1]))[0])\n"
    )
    root = Path(__file__).resolve().parents[2]
    for round in range(5):
        state = tmp_path / f"state{round}"
        if before is not None:
            state.mkdir()
            (state / "session.secret").write_text(before)
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, str(state)],
                cwd=root,
                text=True,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )  # fmt: skip
            for _ in range(6)
        ]
        time.sleep(0.5)  # all imported and waiting
        for proc in procs:
            proc.stdin.write("go\n")
            proc.stdin.flush()
        seen = {proc.communicate(timeout=60)[0].strip() for proc in procs}
        assert len(seen) == 1 and all(proc.returncode == 0 for proc in procs)
        assert (state / "session.secret").read_text().strip() in seen
        names = sorted(p.name for p in state.iterdir())
        assert names[0] == "session.secret" and len(names) == (1 if before is None else 2), names
        if before is not None:  # the file cut short, kept once for the operator
            assert (state / names[1]).read_text() == before


def test_generated_secret_is_persisted_0600(tmp_path):
    secret, generated = load_session_secret(None, tmp_path / "state")
    assert generated and len(secret) == 64
    path = tmp_path / "state" / "session.secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_session_secret(None, tmp_path / "state") == (secret, True)


# -- written behind, off the event loop ------------------------------------------------------


def slow_replace(monkeypatch, delay: float) -> list[float]:
    """os.replace as a loaded ext4 does it (the rename waits for the new file's data): ``delay``
    seconds per call; returns the times the store's writes finished."""
    import os as os_module
    import time

    real, done = os_module.replace, []

    def replace(src, dst, *args, **kwargs):
        time.sleep(delay)
        real(src, dst, *args, **kwargs)
        done.append(time.monotonic())

    monkeypatch.setattr("hubcontrol.safefs.os.replace", replace)
    return done


@pytest.mark.anyio
async def test_logins_on_the_event_loop_do_not_wait_for_the_disk(tmp_path, monkeypatch):
    """Fifty sessions made on the loop while each write takes 200 ms: the loop keeps ticking,
    the writes are taken together, and once ``saved()`` says so all fifty are on disk."""
    import asyncio
    import itertools
    import time

    path = tmp_path / "sessions.json"
    store = SessionStore.open(path)
    writes = slow_replace(monkeypatch, 0.2)
    ticks: list[float] = []
    stop = asyncio.Event()

    async def ticker():
        while not stop.is_set():
            ticks.append(time.monotonic())
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    made = []
    for i in range(50):
        made.append(store.create(f"user{i}"))
        await asyncio.sleep(0)  # other requests in between, as on a hub
    t0 = time.monotonic()
    assert await store.saved()
    waited = time.monotonic() - t0
    stop.set()
    await task
    on_disk = SessionStore.open(path)
    assert all(on_disk.get(s.sid, s.user) == s for s in made)
    assert len(writes) < 10, f"{len(writes)} writes for 50 logins: changes were not taken together"
    # the loop ran throughout: no gap near one write's 200 ms (a write on the loop would block it)
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert max(gaps) < 0.1, f"the event loop stalled {max(gaps) * 1000:.0f} ms"
    assert waited >= 0.15  # saved() really waited for the disk


@pytest.mark.anyio
async def test_a_failed_write_is_logged_and_the_next_change_writes_everything(
    tmp_path, monkeypatch, caplog
):
    import os as os_module

    path = tmp_path / "sessions.json"
    store = SessionStore.open(path)
    real = os_module.replace
    fail = [True]

    def replace(src, dst, *args, **kwargs):
        if fail[0]:
            raise OSError(28, "No space left on device")
        real(src, dst, *args, **kwargs)

    monkeypatch.setattr("hubcontrol.safefs.os.replace", replace)
    first = store.create("alice")
    assert not await store.saved()
    assert "could not be written (" in caplog.text and "No space left on device" in caplog.text
    assert store.get(first.sid, "alice") == first  # still logged in on this hub
    fail[0] = False
    second = store.create("bob")
    assert await store.saved()
    on_disk = SessionStore.open(path)
    assert on_disk.get(first.sid, "alice") == first and on_disk.get(second.sid, "bob") == second


@pytest.mark.anyio
async def test_a_logout_is_on_disk_before_it_returns_even_on_the_loop(tmp_path):
    path = tmp_path / "sessions.json"
    store = SessionStore.open(path)
    s = store.create("alice")
    assert await store.saved()
    assert store.revoke_user("alice") == [s]
    # no await: an ended session must not come back if the hub dies right after the answer
    assert SessionStore.open(path).get(s.sid, "alice") is None


@pytest.mark.anyio
async def test_a_link_at_the_store_is_replaced_never_written_through(tmp_path):
    """The store and the secret are written as every file root writes (``safefs.write_atomic``):
    a link planted where they go is replaced by the file, and what it points at is untouched."""
    target = tmp_path / "elsewhere"
    target.write_text("keep" * 20)  # long enough to be a secret: a link's target never is one
    state = tmp_path / "state"
    state.mkdir()
    (state / "sessions.json").symlink_to(target)
    (state / "session.secret").symlink_to(target)
    store = SessionStore.open(state / "sessions.json")
    store.create("alice")
    assert await store.saved()
    secret, generated = load_session_secret(None, state)
    assert generated and target.read_text() == "keep" * 20 and secret != "keep" * 20
    for name in ("sessions.json", "session.secret"):
        assert not (state / name).is_symlink()
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600
    assert (state / "session.secret").read_text().strip() == secret
