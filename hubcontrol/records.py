"""The persisted user record: what the hub remembers of each user across restarts.

One JSON file per user, ``<state-dir>/users/<safe name>.json``, mode 0600, written atomically
(``safefs.write_atomic``) by the Hub, its only writer. ``UserRecord`` is its typed form and
``RecordStore`` loads, caches and saves it. The file format is the one earlier versions wrote (a
flat JSON object; ``to_json``/``from_json``, as ``checkpoint.CheckpointHealth`` does):

- a field that is None is left out (earlier versions popped ``error``, ``restore_error`` ...);
- keys this version does not know (written by a later version, or by hand) are kept in
  ``unknown`` and written back unchanged, so a downgrade and an upgrade lose nothing;
- a file that is not valid JSON, not an object, has no safe ``name`` matching its file name, or
  has a field of the wrong type, is unreadable: the user is treated as having no record (as
  earlier versions did), with a warning naming the file and what was wrong.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from hubcontrol import safefs

log = logging.getLogger(__name__)

RECORD_MODE = 0o600
RECORDS_DIR_MODE = 0o700


@dataclass
class UserRecord:
    """One user's persisted state. Mutable: the Hub changes it under the user's lock and saves
    it (``RecordStore.save``); everyone else gets copies (``Hub.user_record``, listeners)."""

    name: str  # the safe name (names.safe_name), also the file's name
    user: str | None = None  # the username as the OAuth provider gave it
    state: str = "stopped"  # one of hub.STATES
    template: str | None = None  # the template of the current (or last) environment
    mode: str | None = None  # the template's mode: "persistent" or "ephemeral"
    per_user_docker: bool | None = None  # where it runs; None: never placed yet
    net_id: int | None = None  # the user's network ID (netids), once allocated
    service_ip: str | None = None  # SERVICE_IP of the environment
    docker_url: str | None = None  # the engine the environment runs on
    container_id: str | None = None  # the environment container
    subvolume: bool | None = None  # whether the data-root dir is a BTRFS subvolume
    error: str | None = None  # why the last start failed (cleared once running)
    checkpoint_error: str | None = None  # why the last checkpoint failed (the user's words)
    restore_error: str | None = None  # why the last restore failed; then started afresh
    # the last restore: {"checkpoint", "seconds", "detail", "hook_error"}
    restored: dict[str, Any] | None = None
    on_create: dict[str, Any] | None = None  # the on_create hook's {"exit_code", "output"}
    started_at: float | None = None  # when the environment last (re)started, epoch seconds
    image_id: str | None = None  # the template image's ID in the user's daemon (seeds, updates)
    stale_images: list[str] | None = None  # older template images left to remove once unused
    # where the last start's time went (hubcontrol.timings): {"outcome", "at", "seconds", "steps"}
    last_start: dict[str, Any] | None = None
    seeded: str | None = None  # how the data-root was cloned from a seed (snapshot, reflink)
    updated_at: float | None = None  # when the record was last saved
    # keys this version does not know, kept as they were (module docstring)
    unknown: dict[str, Any] = field(default_factory=dict)

    @property
    def username(self) -> str:
        """The raw username, or the safe name for records that never had one."""
        return self.user or self.name

    def to_json(self) -> dict[str, Any]:
        """The file's JSON object (None fields left out, unknown keys kept)."""
        out = dict(self.unknown)
        for f in _FIELDS:
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = copy.deepcopy(value)
        return out

    @classmethod
    def from_json(cls, data: object) -> UserRecord:
        """The record of a file's JSON; ValueError naming the field when it is not one."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a record is a JSON object, not {type(data).__name__}")
        known: dict[str, Any] = {}
        unknown: dict[str, Any] = {}
        for key, value in data.items():
            if key in _TYPES:
                if value is not None and not _TYPES[key](value):
                    raise ValueError(f"{key!r} has the wrong type: {value!r:.80}")
                known[key] = copy.deepcopy(value)
            else:
                unknown[str(key)] = copy.deepcopy(value)
        if not _file_name(known.get("name")):
            raise ValueError(f"'name' is not a user's name: {known.get('name')!r:.80}")
        if known.get("state") is None:
            known.pop("state", None)  # earlier records may lack it: stopped
        return cls(**known, unknown=unknown)

    def copy(self) -> UserRecord:
        """An independent copy (nested dicts included)."""
        return copy.deepcopy(self)

    def update(self, **values: Any) -> None:
        """Set fields by name; names this version does not know go to ``unknown``."""
        for key, value in values.items():
            if key in _TYPES and key != "name":
                setattr(self, key, value)
            elif key != "name":
                self.unknown[key] = value


_FIELDS = tuple(f for f in fields(UserRecord) if f.name != "unknown")


def _file_name(name: object) -> bool:
    """Whether ``name`` can name a record file: a safe name, or a name an earlier hub's rules
    made safe (``names.is_safe_name`` is the current rule; such records still load)."""
    return isinstance(name, str) and bool(name) and "/" not in name and not name.startswith(".")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# what each field's JSON value must be (None is always allowed: the field is unset)
_TYPES: dict[str, Callable[[object], bool]] = {
    "name": lambda v: isinstance(v, str),
    "user": lambda v: isinstance(v, str),
    "state": lambda v: isinstance(v, str),
    "template": lambda v: isinstance(v, str),
    "mode": lambda v: isinstance(v, str),
    "per_user_docker": lambda v: isinstance(v, bool),
    "net_id": _is_int,
    "service_ip": lambda v: isinstance(v, str),
    "docker_url": lambda v: isinstance(v, str),
    "container_id": lambda v: isinstance(v, str),
    "subvolume": lambda v: isinstance(v, bool),
    "error": lambda v: isinstance(v, str),
    "checkpoint_error": lambda v: isinstance(v, str),
    "restore_error": lambda v: isinstance(v, str),
    "restored": lambda v: isinstance(v, dict),
    "on_create": lambda v: isinstance(v, dict),
    "started_at": _is_number,
    "updated_at": _is_number,
    "image_id": lambda v: isinstance(v, str),
    "stale_images": lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
    "seeded": lambda v: isinstance(v, str),
    "last_start": lambda v: isinstance(v, dict),
}
assert set(_TYPES) == {f.name for f in _FIELDS}, "every field has its JSON type"


class RecordStore:
    """The user records of one state directory: ``<state-dir>/users/<name>.json``.

    Caches what it loaded or saved: the Hub is the only writer, so the cache is the truth while
    the hub runs; ``load`` re-reads a file (reconcile at start). Keys are safe names; mapping a
    username to its safe name is the caller's (``names.safe_name``). Not thread-safe: used on
    the Hub's event loop (its files are small; a save is one atomic write).
    """

    def __init__(self, directory: Path | str, clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self.clock = clock
        self._cache: dict[str, UserRecord] = {}

    def path(self, name: str) -> Path:
        return self.directory / f"{name}.json"

    def get(self, name: str) -> UserRecord | None:
        """The record of the safe name ``name`` (cached, else read), or None. The object itself:
        callers that are not the Hub take a ``copy()``."""
        rec = self._cache.get(name)
        return rec if rec is not None else self.load(name)

    def load(self, name: str) -> UserRecord | None:
        """Read ``name``'s record from disk (replacing the cached one); None when there is none
        or it is unreadable (logged)."""
        if not _file_name(name):
            return None
        path = self.path(name)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as e:
            return self._unreadable(path, e)
        except OSError as e:  # not the content: left where it is, read again next time
            log.warning("user record %s could not be read (%s); treating the user as new", path, e)
            return None
        try:
            rec = UserRecord.from_json(data)
            if rec.name != name:
                raise ValueError(f"it names {rec.name!r}, not {name!r}")
        except (TypeError, ValueError) as e:
            return self._unreadable(path, e)
        self._cache[name] = rec
        return rec

    @staticmethod
    def _unreadable(path: Path, error: Exception) -> None:
        """A record whose content is not a record (truncated, corrupt): kept aside for the
        operator, and the user treated as new. Their data-root keeps their network ID and their
        daemon and environment are adopted at their next start; what only the record held (the
        last start's times, a restore's result) is in the copy."""
        aside = safefs.keep_aside(path)
        log.error(
            "user record %s is unreadable (%s); %s; treating the user as new (their workspace, "
            "data-root and running environment are kept and adopted at their next start)",
            path,
            error,
            f"kept as {aside}" if aside else "could not move it aside",
        )

    def save(self, rec: UserRecord) -> None:
        """Stamp ``updated_at``, cache ``rec`` and write it (atomically, mode 0600)."""
        if not _file_name(rec.name):
            raise ValueError(f"not a user's name: {rec.name!r}")
        rec.updated_at = self.clock()
        self._cache[rec.name] = rec
        self.directory.mkdir(parents=True, exist_ok=True, mode=RECORDS_DIR_MODE)
        text = json.dumps(rec.to_json(), indent=2, sort_keys=True) + "\n"
        safefs.write_atomic(self.path(rec.name), text, mode=RECORD_MODE)

    def delete(self, name: str) -> None:
        """Forget ``name``'s record, on disk too."""
        self._cache.pop(name, None)
        if _file_name(name):
            self.path(name).unlink(missing_ok=True)

    def names(self) -> set[str]:
        """The safe names of every record, cached or on disk."""
        found = set(self._cache)
        if self.directory.is_dir():
            found.update(p.stem for p in self.directory.glob("*.json") if _file_name(p.stem))
        return found

    def all(self) -> Iterator[UserRecord]:
        """Every readable record, by name (cached ones as they are in memory)."""
        for name in sorted(self.names()):
            rec = self.get(name)
            if rec is not None:
                yield rec
