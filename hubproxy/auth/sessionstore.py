"""Server-side sessions: who is logged in, with which groups and template.

The cookie only names a session (user, id, expiry, signature); this store holds the rest, so group
lists never travel to the browser and logout really ends a session (a copied cookie stops working).
The store is a small JSON file (0600) in the state directory, rewritten on every change, so a hub
restart keeps everyone logged in.

Changes made on the proxy's event loop are written behind, off that loop: the write (a temp file
and a rename, which on ext4 starts writing the new file's data out and can wait on the disk) runs
in a thread, and the changes that arrive while one is under way go out together in the next. The
loop keeps serving meanwhile; fifty logins at once used to wait for fifty such writes one after
another on it (docs/performance.md, "Sessions written off the proxy's thread"). A login answers
only once its session is written (``await saved()``), so a session a browser was given survives
the hub being killed. Ending sessions (logout) is written at once, before the answer, as is every
change made where no event loop runs (tests, tools).

Under ``hub start --workers N`` only worker 0 creates and ends sessions (every ``/_hub/`` request
is forwarded to it); ``listeners`` tell it what changed, and each other worker keeps a replica
(``SessionStore.replica``, no file) that ``apply`` updates from worker 0's broadcasts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hubcontrol import UnsafePathError, keep_aside, open_file, write_atomic, write_new

log = logging.getLogger(__name__)

SESSION_TTL = 7 * 24 * 3600  # one week, as oauth2-proxy's default cookie expiry
SECRET_FILE = "session.secret"
SESSIONS_FILE = "sessions.json"
MIN_SECRET_LENGTH = 32


@dataclass(frozen=True)
class Session:
    sid: str
    user: str
    exp: int
    created: int
    groups: tuple[str, ...] = ()
    template: str | None = None
    admin: bool = False
    # ``cookies.browser_binding`` of the browser cookie the login completed in: the session is
    # used only together with that cookie. None for sessions made before there was one.
    browser: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Session:
        """The session ``to_json`` wrote; TypeError on a field this version does not know."""
        return cls(**{**data, "groups": tuple(data.get("groups") or ())})


# ``listener(added, removed_sids)``: called after every change, on the caller's thread
Listener = Callable[[list[Session], list[str]], None]


@dataclass
class SessionStore:
    path: Path | None
    clock: Callable[[], float] = time.time
    _sessions: dict[str, Session] = field(default_factory=dict)
    listeners: list[Listener] = field(default_factory=list)
    # write-behind: every change bumps _changes; _written is the last change known on disk
    _changes: int = 0
    _written: int = 0
    _writer: asyncio.Task[None] | None = field(default=None, repr=False)
    _write_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def open(cls, path: Path | None, clock: Callable[[], float] = time.time) -> SessionStore:
        store = cls(path, clock)
        if path is None or not path.exists():
            return store
        try:
            rows = json.loads(path.read_text())
            if not isinstance(rows, list):
                raise ValueError(f"a list of sessions, not {type(rows).__name__}")
        except OSError as e:
            log.error("session store %s could not be read (%s); everyone logs in again", path, e)
            return store
        except ValueError as e:
            # truncated or corrupt: kept for the operator; the next login writes a fresh file
            aside = keep_aside(path)
            log.error(
                "session store %s is unreadable (%s); %s; everyone logs in again",
                path,
                e,
                f"kept as {aside}" if aside else "could not move it aside",
            )
            return store
        now, bad = clock(), 0
        for row in rows:
            try:
                s = Session.from_json(row)
                if not (isinstance(s.sid, str) and isinstance(s.user, str) and s.exp > 0):
                    raise TypeError("sid, user or exp of the wrong type")
            except (TypeError, ValueError, AttributeError):
                bad += 1  # one bad row costs its own session, not everyone's
                continue
            if s.exp > now:
                store._sessions[s.sid] = s
        if bad:
            log.error(
                "session store %s: %d unreadable session(s) skipped (those users log in again); "
                "the other %d are kept",
                path,
                bad,
                len(store._sessions),
            )
        return store

    def create(
        self,
        user: str,
        *,
        groups: tuple[str, ...] = (),
        template: str | None = None,
        admin: bool = False,
        ttl: int = SESSION_TTL,
        browser: str | None = None,
    ) -> Session:
        now = int(self.clock())
        session = Session(
            sid=secrets.token_urlsafe(18),
            user=user,
            exp=now + ttl,
            created=now,
            groups=tuple(groups),
            template=template,
            admin=admin,
            browser=browser,
        )
        self._sessions[session.sid] = session
        purged = self._purge(now)
        self._save()
        self._notify([session], purged)
        return session

    def get(self, sid: str, user: str) -> Session | None:
        """The live session ``sid`` if it belongs to ``user``."""
        session = self._sessions.get(sid)
        if session is None or session.user != user or session.exp <= self.clock():
            return None
        return session

    def revoke(self, sid: str) -> Session | None:
        session = self._sessions.pop(sid, None)
        if session is not None:
            # an ended session must not come back if the hub is killed (and logouts come in no storms)
            self._save(now=True)
            self._notify([], [sid])
        return session

    def revoke_user(self, user: str) -> list[Session]:
        """End every session of ``user`` (all prefixes, all browsers); returns them."""
        ended = [s for s in self._sessions.values() if s.user == user]
        for session in ended:
            del self._sessions[session.sid]
        if ended:
            self._save(now=True)  # as in revoke
            self._notify([], [s.sid for s in ended])
        return ended

    def __len__(self) -> int:
        return len(self._sessions)

    def sessions(self) -> list[Session]:
        """Every session held (live or not yet purged)."""
        return list(self._sessions.values())

    @classmethod
    def replica(
        cls, sessions: list[Session], clock: Callable[[], float] = time.time
    ) -> SessionStore:
        """A store without a file, kept in step with worker 0's by ``apply``."""
        store = cls(None, clock)
        store.apply(sessions, ())
        return store

    def apply(self, added: Iterable[Session], removed: Iterable[str]) -> None:
        """Take changes made elsewhere (worker 0's broadcast); never written, never notified."""
        for session in added:
            self._sessions[session.sid] = session
        for sid in removed:
            self._sessions.pop(sid, None)

    def _notify(self, added: list[Session], removed: list[str]) -> None:
        for listener in self.listeners:
            try:
                listener(added, removed)
            except Exception:  # a listener must not break a login or logout
                log.exception("session listener failed")

    def _purge(self, now: float) -> list[str]:
        expired = [sid for sid, s in self._sessions.items() if s.exp <= now]
        for sid in expired:
            del self._sessions[sid]
        return expired

    async def saved(self) -> bool:
        """Wait until every change made so far is on disk; False if writing it failed (logged).
        True at once for a store without a file."""
        target = self._changes
        while self._written < target:
            writer = self._writer
            if writer is None or writer.done():
                return False  # the write for it failed and nothing has retried since
            await asyncio.shield(writer)
        return True

    def _save(self, *, now: bool = False) -> None:
        """Persist the change just made: behind, off the event loop, or ``now`` (and where no loop
        runs) on this thread before returning."""
        if self.path is None:
            return
        self._changes += 1
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            now = True
        if now:
            self._write(self._snapshot(), self._changes)
            return
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_behind(), name="session-store-write")

    async def _write_behind(self) -> None:
        """Write until what is on disk is the latest change, each round taking every change made
        during the one before; a failed write is logged and left for the next change to retry."""
        while self._written < self._changes:
            upto = self._changes
            data = self._snapshot()  # on the loop, so no change lands halfway through it
            try:
                await asyncio.to_thread(self._write, data, upto)
            except OSError as e:
                log.error(
                    "session store %s could not be written (%s): sessions changed since the last "
                    "write are lost if the hub restarts (those users log in again)",
                    self.path,
                    e,
                )
                return

    def _snapshot(self) -> str:
        return json.dumps([s.to_json() for s in self._sessions.values()])

    def _write(self, data: str, upto: int) -> None:
        assert self.path is not None
        # one write at a time, and never an older state written last
        with self._write_lock:
            if upto <= self._written:
                return
            write_atomic(self.path, data, mode=0o600)
            self._written = upto


def _read_secret(path: Path) -> tuple[str, int] | None:
    """The secret file's text and inode; None when there is none, "" for a link or anything but
    a regular file (``open_file``: never followed, its target's text is no secret of the hub's)."""
    try:
        fd = open_file(path)
    except FileNotFoundError:
        return None
    except UnsafePathError:
        try:
            return "", os.lstat(path).st_ino
        except FileNotFoundError:
            return None
    with os.fdopen(fd) as f:
        return f.read(4096).strip(), os.fstat(fd).st_ino


def load_session_secret(configured: str | None, state_dir: Path) -> tuple[str, bool]:
    """The secret cookies are signed with, and whether it was generated.

    ``HUB_SESSION_SECRET`` wins when set. Otherwise a random secret is read from (or written to)
    ``<state_dir>/session.secret`` with mode 0600, so sessions survive restarts; the caller warns,
    because several hub processes must share one configured secret.
    """
    if configured:
        if len(configured) < MIN_SECRET_LENGTH:
            from hubcontrol import ConfigError

            raise ConfigError(
                f"HUB_SESSION_SECRET is {len(configured)} characters; use at least "
                f"{MIN_SECRET_LENGTH} (e.g. `openssl rand -hex 32`)"
            )
        return configured, False
    path = state_dir / SECRET_FILE
    state_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        found = _read_secret(path)
        if found is not None and len(found[0]) >= MIN_SECRET_LENGTH:
            return found[0], True
        if found is not None:  # cut short (a full disk), or a link: kept for the operator
            try:
                same = os.lstat(path).st_ino == found[1]
            except FileNotFoundError:
                same = False
            if not same:  # another hub process moved it aside, or made a new one: read again
                continue
            aside = keep_aside(path)
            log.warning(
                "hub: %s cannot sign cookies (too short, or not a file); moved to %s", path, aside
            )
        secret = secrets.token_hex(32)
        # first writer wins: two hub processes starting at once sign with the same secret
        if write_new(path, secret + "\n", mode=0o600):
            return secret, True
    raise OSError(f"{path}: could not read or create the session secret; remove it and start again")
