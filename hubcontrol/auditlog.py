"""Audit log files: one JSON object per line in ``<audit-dir>/<user>.log``, plus per-user cursors.

Writing (the control plane) and reading (``hub audit``, scripts) live here, apart from the event
streams in ``hubcontrol.audit``, so that readers need neither anyio nor a docker daemon.

Write contract:

- The directory is created ``0750`` and files ``0640``: only root and the log group (``adm`` on
  Debian, set by the operator) can read what users did.
- Every line is written with one ``write(2)`` on a descriptor opened with ``O_APPEND``, so lines
  from concurrent writers never interleave and a ``logrotate`` ``copytruncate`` (which truncates
  the file in place) simply makes the next line land at offset 0. The file is opened per batch,
  so a ``create``-style rotation (rename) is picked up at the next event as well.
- A cursor (``<audit-dir>/.cursors/<user>.json``) records the newest event time written and the
  identities of the events just before it, so a stream resumed with ``since`` skips what is
  already in the log. It is replaced atomically (write to a temporary file, then ``rename``).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, TypeGuard

from hubcontrol import safefs
from hubcontrol.durations import parse_duration
from hubcontrol.names import safe_name
from hubcontrol.text import inert_json

DIR_MODE = 0o750
FILE_MODE = 0o640
CURSOR_DIR = ".cursors"
# Events up to this long before the newest one written are remembered by identity: the daemon
# stamps an event's time before it takes the lock that orders the stream, so two events can arrive
# slightly out of time order. A resumed stream starts this far back and drops what it has seen.
RESUME_OVERLAP_NS = 2_000_000_000


def file_stem(user: str) -> str:
    """The file name (without ``.log``) of ``user``'s audit log: the user's safe name.

    Usernames come from an OAuth provider and are untrusted; the safe name never contains a path
    separator or a dot, so ``<audit-dir>/<stem>.log`` always stays inside the audit directory.
    Raises UsernameError for a name that has no safe form.
    """
    return safe_name(user)


def format_record(record: dict[str, Any]) -> bytes:
    """One audit record as a compact JSON line (the seed's exact field order and separators).

    UTF-8, with every character that controls a display (C0, DEL, C1, bidi controls, ``U+2028``)
    as a ``\\uXXXX`` escape: the line is exact JSON and inert in ``tail -f`` or ``less -R``.
    """
    return (inert_json(record) + "\n").encode()


def _ensure_dir(path: Path) -> None:
    if not path.is_dir():
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(path, DIR_MODE)  # mkdir's mode is masked by the umask


def _open_append(path: Path) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        if os.fstat(fd).st_mode & 0o777 != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


# --- bounds: what one user can make the hub write (docs/audit.md, "Bounds") --------------------

# Characters kept of any one string in a record (an exec's command line, a refusal's reason):
# longer ones are cut, with a marker saying how much. dockerd puts an exec's whole command line
# in its event, and a user chooses it: 900 KB per exec is possible.
FIELD_LIMIT = 4096
# Bytes per user a writer (the hub; each policy socket) may append, as a token bucket: BURST at
# once, then RATE per second sustained, i.e. at most BURST + RATE * 86400 bytes a day (about
# 177 MB). Records past the budget are dropped and counted in an ``audit``/``dropped`` record.
BUDGET_RATE = 2048
BUDGET_BURST = 256 * 1024
# While records are being dropped, one ``dropped`` record at the first drop, then at most one
# per this many seconds, and one when the stream ends.
DROPPED_REPORT_SECONDS = 60.0


def truncate(value: str, limit: int = FIELD_LIMIT) -> str:
    """``value``, or its first ``limit`` characters and a marker saying how many were cut."""
    if len(value) <= limit:
        return value
    return f"{value[:limit]}...[{len(value) - limit} more characters cut by the hub]"


def cap_record(record: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``record`` with every string in it (nested in ``attrs`` too) ``truncate``d."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, str):
            out[key] = truncate(value)
        elif isinstance(value, dict):
            out[key] = cap_record(value)
        else:
            out[key] = value
    return out


def exempt_from_budget(record: dict[str, Any]) -> bool:
    """The hub's own records (``origin: hub``) and the trail's notes (gaps, drops) are written
    whatever a user did: a user cannot make them at will, and an operator needs them most when
    a user floods."""
    attrs = record.get("attrs")
    origin = attrs.get("origin") if isinstance(attrs, dict) else None
    return origin == "hub" or record.get("type") == "audit"


@dataclass(frozen=True)
class AuditBudget:
    """How much one user's activity may add to their log, per writer (see BUDGET_RATE)."""

    rate: float = BUDGET_RATE  # bytes per second, sustained
    burst: float = BUDGET_BURST  # bytes at once
    report_seconds: float = DROPPED_REPORT_SECONDS
    clock: Callable[[], float] = time.monotonic


DEFAULT_BUDGET = AuditBudget()


@dataclass
class _Spending:
    """One user's bucket and the records dropped since the last ``dropped`` record."""

    tokens: float
    stamp: float
    reported: float | None = None  # when the last ``dropped`` record was written
    events: int = 0
    size: int = 0
    first: str = ""
    last: str = ""
    net_id: object = None
    actions: dict[str, int] = field(default_factory=dict)

    def take(self, size: int, now: float, budget: AuditBudget) -> bool:
        self.tokens = min(budget.burst, self.tokens + (now - self.stamp) * budget.rate)
        self.stamp = now
        if size > self.tokens:
            return False
        self.tokens -= size
        return True

    def drop(self, record: dict[str, Any], size: int) -> None:
        self.events += 1
        self.size += size
        ts = str(record.get("ts", ""))
        self.first = self.first or ts
        self.last = ts
        self.net_id = record.get("net_id")
        what = f"{record.get('type', '')}/{record.get('action', '')}"
        self.actions[what] = self.actions.get(what, 0) + 1

    def report(self, user: str, budget: AuditBudget) -> dict[str, Any]:
        """The ``dropped`` record for what was dropped so far (resets the counts)."""
        record = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "user": user,
            "net_id": self.net_id,
            "type": "audit",
            "action": "dropped",
            "resource": "",
            "attrs": {
                "events": str(self.events),
                "bytes": str(self.size),
                "first": self.first,
                "last": self.last,
                "actions": " ".join(f"{k}={n}" for k, n in sorted(self.actions.items())),
                "budget": f"{budget.rate:.0f} bytes/s, burst {budget.burst:.0f} bytes",
            },
        }
        self.events = self.size = 0
        self.first = self.last = ""
        self.actions = {}
        return record


class AuditLog:
    """Appends audit records to ``<directory>/<user>.log``; blocking: call it from a worker thread.

    Each string in a record is capped at ``FIELD_LIMIT`` characters, and each user's records
    (except the exempt ones, ``exempt_from_budget``) spend ``budget``; ``budget=None`` writes
    everything. The budget is this object's: keep one ``AuditLog`` per writer process.
    """

    def __init__(self, directory: Path | str, budget: AuditBudget | None = DEFAULT_BUDGET) -> None:
        self.directory = Path(directory)
        self.budget = budget
        self._lock = threading.Lock()
        self._spending: dict[str, _Spending] = {}

    def path(self, user: str) -> Path:
        return self.directory / f"{file_stem(user)}.log"

    def cursor_path(self, user: str) -> Path:
        return self.directory / CURSOR_DIR / f"{file_stem(user)}.json"

    def append(self, user: str, records: Iterable[dict[str, Any]]) -> None:
        """Append ``records`` to ``user``'s log, each line with a single ``write(2)``.

        Records over the user's budget are counted, not written; a ``dropped`` record reports
        them (at the first drop, then at most every ``report_seconds``, and at ``flush``).
        """
        lines = []
        report = None
        with self._lock:
            for record in records:
                record = cap_record(record)
                line = format_record(record)
                if self._admit(user, record, len(line)):
                    lines.append(line)
            report = self._due_report(user, force=False)
        if report is not None:
            lines.append(format_record(report))
        try:
            self._write(user, lines)
        except BaseException:
            if report is not None:
                self._unreport(user, report)
            raise

    def flush(self, user: str, *, force: bool = True) -> None:
        """Write the ``dropped`` record of ``user``'s records dropped since the last one, if any
        (with ``force=False``, only if the last one is ``report_seconds`` old)."""
        with self._lock:
            report = self._due_report(user, force=force)
        if report is not None:
            try:
                self._write(user, [format_record(report)])
            except BaseException:
                self._unreport(user, report)
                raise

    def flush_all(self, *, force: bool = True) -> None:
        """``flush`` every user: before the writer exits, and every ``report_seconds`` (with
        ``force=False``) so a flood that stopped is reported without waiting for more records."""
        for user in list(self._spending):
            self.flush(user, force=force)

    def _admit(self, user: str, record: dict[str, Any], size: int) -> bool:
        if self.budget is None or exempt_from_budget(record):
            return True
        now = self.budget.clock()
        spending = self._spending.get(user)
        if spending is None:
            spending = self._spending[user] = _Spending(self.budget.burst, now)
        if spending.take(size, now, self.budget):
            return True
        spending.drop(record, size)
        return False

    def _due_report(self, user: str, *, force: bool) -> dict[str, Any] | None:
        spending = self._spending.get(user)
        if self.budget is None or spending is None or not spending.events:
            return None
        now = self.budget.clock()
        if not force and spending.reported is not None:
            if now - spending.reported < self.budget.report_seconds:
                return None
        spending.reported = now
        return spending.report(user, self.budget)

    def _unreport(self, user: str, report: dict[str, Any]) -> None:
        # The report was not written: count its events again, for the next one.
        with self._lock:
            spending = self._spending[user]
            attrs = report["attrs"]
            spending.events += int(attrs["events"])
            spending.size += int(attrs["bytes"])
            spending.first = attrs["first"] or spending.first
            spending.last = spending.last or attrs["last"]
            for item in attrs["actions"].split():
                what, _, n = item.rpartition("=")
                spending.actions[what] = spending.actions.get(what, 0) + int(n)

    def _write(self, user: str, lines: list[bytes]) -> None:
        if not lines:
            return
        _ensure_dir(self.directory)
        fd = _open_append(self.path(user))
        try:
            for line in lines:
                view = memoryview(line)
                written = os.write(fd, view)
                # A regular file only writes short on a full disk; finish the line rather than
                # leave half a record for the next writer to append to.
                while written < len(view):
                    view = view[written:]
                    written = os.write(fd, view)
        finally:
            os.close(fd)

    def load_cursor(self, user: str) -> Cursor:
        return Cursor.load(self.cursor_path(user))

    def save_cursor(self, user: str, cursor: Cursor) -> None:
        path = self.cursor_path(user)
        _ensure_dir(self.directory)
        _ensure_dir(path.parent)
        cursor.save(path)


def event_key(event: Mapping[str, Any]) -> str:
    """A docker event's identity: type, action, actor ID and time in nanoseconds."""
    actor = event.get("Actor") or {}
    return "{}|{}|{}|{}".format(
        event.get("Type", ""), event.get("Action", ""), actor.get("ID", ""), event_nano(event)
    )


def event_nano(event: Mapping[str, Any]) -> int:
    nano = event.get("timeNano")
    if isinstance(nano, int):
        return nano
    return int(event.get("time", 0)) * 1_000_000_000


@dataclass
class Cursor:
    """Where a user's stream is: the newest event time written and what was seen just before it."""

    nano: int = 0
    recent: dict[str, int] = field(default_factory=dict)  # event key -> its time in ns

    @classmethod
    def load(cls, path: Path) -> Cursor:
        try:
            data = json.loads(path.read_text())
            return cls(nano=int(data["nano"]), recent={str(k): int(v) for k, v in data["recent"]})
        except FileNotFoundError:
            return cls()
        except (ValueError, KeyError, TypeError):
            # A damaged cursor must not stop auditing: start over from the daemon's buffer, which
            # may repeat a few lines but never loses any.
            return cls()

    def save(self, path: Path) -> None:
        data = json.dumps({"nano": self.nano, "recent": sorted(self.recent.items())})
        safefs.write_atomic(path, data, mode=FILE_MODE)

    def since(self) -> str:
        """The ``since`` parameter for the daemon's ``/events``: from a little before the cursor.

        With no cursor, ``"1"`` (the epoch's first second) asks for everything the daemon still
        buffers: a new daemon's whole history, since the stream is armed right after it starts.
        """
        if self.nano <= 0:
            return "1"
        start = max(self.nano - RESUME_OVERLAP_NS, 1_000_000_000)
        return f"{start // 1_000_000_000}.{start % 1_000_000_000:09d}"

    def seen(self, key: str, nano: int) -> bool:
        """Whether the event was written already.

        Only identity counts, never age: a replay never reaches further back than ``since()``,
        and a live event older than the cursor (the host clock was set back) is still new.
        """
        return key in self.recent

    def advance(self, key: str, nano: int) -> None:
        self.recent[key] = nano
        self.nano = max(self.nano, nano)
        floor = self.nano - RESUME_OVERLAP_NS
        if any(n < floor for n in self.recent.values()):
            self.recent = {k: n for k, n in self.recent.items() if n >= floor}


# --- reading -----------------------------------------------------------------------------------


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``--since``: a duration back from now (``90s``, ``30m``, ``1h30m``, ``2d``) or an ISO time.

    A time without a zone is UTC, like the log's ``ts``. Raises ValueError naming accepted forms.
    """
    now = now or datetime.now(UTC)
    value = text.strip()
    try:
        return now - timedelta(seconds=parse_duration(value))
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--since {text!r} is neither a duration nor a time: use e.g. 30m, 1h, 2d or "
            "2026-04-16T05:53:12Z"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def record_time(record: dict[str, Any]) -> datetime | None:
    try:
        return datetime.strptime(record["ts"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except (KeyError, TypeError, ValueError):
        return None


def _parse_line(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _keep(record: dict[str, Any] | None, since: datetime | None) -> TypeGuard[dict[str, Any]]:
    if record is None:
        return False
    if since is None:
        return True
    ts = record_time(record)
    return ts is not None and ts >= since


def read_records(path: Path | str, since: datetime | None = None) -> Iterator[dict[str, Any]]:
    """The records in an audit log, oldest first; lines that are not JSON objects are skipped."""
    with open(path, "rb") as f:
        for line in f:
            if line.endswith(b"\n"):
                record = _parse_line(line)
                if _keep(record, since):
                    yield record


def follow(
    path: Path | str,
    since: datetime | None = None,
    *,
    poll: float = 0.5,
    stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[dict[str, Any]]:
    """Records already in the log, then new ones as they are appended, until ``stop()`` is true.

    Survives ``copytruncate`` (the file was truncated in place: read again from its start, also
    when it has grown past the old position since, which the bytes before that position tell)
    and ``create``/rename rotation (the path names a new file: finish the old one, reopen).
    Only whole lines are returned; a line being written is read once its newline arrives.
    """
    path = Path(path)
    f = None
    ino = None
    pending = b""
    tail = b""  # the last bytes read: still there at the same offset unless the file was rewritten
    try:
        while not stop():
            if f is None:
                with contextlib.suppress(FileNotFoundError):
                    f = open(path, "rb")  # held across yields, closed below
                    ino = os.fstat(f.fileno()).st_ino
                    pending = tail = b""
            if f is not None:
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    st = None
                if st is not None and st.st_ino != ino:
                    # Renamed away: drain the old file, then continue with the new one.
                    yield from _drain(f, pending, since)
                    f.close()
                    f = None
                    continue
                pos = f.tell()
                if st is not None and (
                    st.st_size < pos
                    or (tail and os.pread(f.fileno(), len(tail), pos - len(tail)) != tail)
                ):
                    f.seek(0)  # truncated in place (copytruncate)
                    pending = tail = b""
                chunk = f.read()
                if chunk:
                    tail = (tail + chunk)[-64:]
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        record = _parse_line(line)
                        if _keep(record, since):
                            yield record
                    continue
            sleep(poll)
    finally:
        if f is not None:
            f.close()


def _drain(f: IO[bytes], pending: bytes, since: datetime | None) -> Iterator[dict[str, Any]]:
    data = pending + f.read()
    for line in data.split(b"\n")[:-1]:
        record = _parse_line(line)
        if _keep(record, since):
            yield record


# Names for the package's flat API (``hubcontrol.read_audit_log``), where bare ``follow`` would be
# ambiguous.
read_audit_log = read_records
follow_audit_log = follow
