"""Disk usage of a user's directories, bounded so one user's files cannot take the hub's CPU.

The stats sampler measures every user's workspace and data-root every 30 seconds. Walked in the
hub process without a bound, a workspace of a million files cost 22% of a core continuously, and
the walk held the interpreter the proxy serves requests from. So a walk:

* runs in a child process (``measure``), at the lowest CPU priority (``nice 19``) and the idle I/O
  class (``ionice -c 3``), so it only uses what the proxy and the users leave over;
* stops after ``WALK_MAX_ENTRIES`` entries or ``WALK_MAX_SECONDS`` seconds per directory tree,
  whichever comes first, and then says so: the bytes it counted are a lower bound (``partial``),
  which the dashboard and ``hub status`` show as "at least".

Exact numbers for big trees are the filesystem's job: BTRFS quotas (``btrfs qgroup show``) on the
data-root subvolume, project quotas elsewhere (docs/operations.md).

This module imports only the standard library and ``hubcontrol.mounts`` (the mountinfo parser,
itself standard library only): the child (``python -m hubcontrol.du``) loads nothing else
(``hubcontrol/__init__.py`` imports lazily), so it starts in a few tens of milliseconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hubcontrol import mounts

# About 4 µs per entry here (scandir + lstat, warm cache): 100,000 entries are ~0.4 s of one core
# at nice 19 per tree and sample, against 4 s for a million-file workspace walked whole.
WALK_MAX_ENTRIES = 100_000
# A cold cache or a slow disk makes each entry an I/O: the time bound holds there.
WALK_MAX_SECONDS = 2.0
NICE = 19


@dataclass(frozen=True)
class Usage:
    """What a walk found: ``bytes`` allocated (like ``du -s``) in ``entries`` entries. When
    ``partial``, the walk stopped at a bound (``stopped_by``: "entries" or "time") and ``bytes``
    is a lower bound."""

    bytes: int = 0
    entries: int = 0
    partial: bool = False
    stopped_by: str | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Usage:
        return cls(
            bytes=int(data["bytes"]),
            entries=int(data["entries"]),
            partial=bool(data["partial"]),
            stopped_by=data.get("stopped_by"),
        )


def _mounts_under(path: str) -> set[str]:
    """Mount points strictly below ``path``."""
    with contextlib.suppress(OSError):
        return {m for m in mounts.mounts_under(path) if m != path.rstrip("/")}
    return set()


def walk(
    path: Path | str,
    *,
    max_entries: int = WALK_MAX_ENTRIES,
    max_seconds: float = WALK_MAX_SECONDS,
    clock: Callable[[], float] = time.monotonic,
) -> Usage:
    """Bytes allocated below ``path``, never following symlinks or other filesystems mounted
    below it (a self-bind and BTRFS subvolumes count), hard links once; stops at a bound."""
    path = str(path)
    try:
        top = os.lstat(path)
    except OSError:
        return Usage()
    total = top.st_blocks * 512
    if not os.path.isdir(path) or os.path.islink(path):
        return Usage(total, 1)
    deadline = clock() + max_seconds
    below = _mounts_under(path)
    seen: set[tuple[int, int]] = set()
    entries = 0
    stack = [(path, top.st_dev)]
    while stack:
        current, dev = stack.pop()
        try:
            with os.scandir(current) as it:
                listing = list(it)
        except OSError:
            continue
        for entry in listing:
            if entries >= max_entries:
                return Usage(total, entries, True, "entries")
            entries += 1
            if entries % 1024 == 0 and clock() > deadline:
                return Usage(total, entries, True, "time")
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if entry.path in below and st.st_dev != dev:
                continue
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            total += st.st_blocks * 512
            if entry.is_dir(follow_symlinks=False):
                stack.append((entry.path, st.st_dev))
    return Usage(total, entries)


def command(
    paths: Sequence[Path | str],
    *,
    max_entries: int = WALK_MAX_ENTRIES,
    max_seconds: float = WALK_MAX_SECONDS,
    python: str | None = None,
) -> list[str]:
    """The argv of a walk in a child process at the lowest CPU and I/O priority."""
    low = ["nice", "-n", str(NICE)] if shutil.which("nice") else []
    if shutil.which("ionice"):
        low += ["ionice", "-c", "3"]
    head = [python or sys.executable, "-m", "hubcontrol.du"]
    bounds = [f"--max-entries={max_entries}", f"--max-seconds={max_seconds}", "--"]
    return low + head + bounds + [str(p) for p in paths]


def measure(
    paths: Sequence[Path | str],
    *,
    max_entries: int = WALK_MAX_ENTRIES,
    max_seconds: float = WALK_MAX_SECONDS,
) -> list[Usage]:
    """Walk each of ``paths`` in one child process (see the module docstring); blocking.

    Raises OSError when the child cannot run or answers nonsense, and TimeoutError when it does
    not finish well past its own bounds (a hung filesystem): no number is better than a wrong one.
    """
    argv = command(paths, max_entries=max_entries, max_seconds=max_seconds)
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=max_seconds * len(paths) + 30,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"the disk usage walk of {', '.join(map(str, paths))} hung") from None
    if proc.returncode:
        raise OSError(f"the disk usage walk failed ({proc.returncode}): {proc.stderr.strip()}")
    try:
        return [Usage.from_json(d) for d in json.loads(proc.stdout)["usage"]]
    except (ValueError, KeyError, TypeError) as e:
        raise OSError(f"the disk usage walk answered {proc.stdout[:200]!r}: {e}") from None


def main(argv: Sequence[str]) -> None:
    """The child: ``--max-entries=N --max-seconds=S -- PATH...``; prints JSON on stdout."""
    max_entries, max_seconds = WALK_MAX_ENTRIES, WALK_MAX_SECONDS
    args = list(argv)
    while args and args[0] != "--":
        flag, _, value = args.pop(0).partition("=")
        if flag == "--max-entries":
            max_entries = int(value)
        elif flag == "--max-seconds":
            max_seconds = float(value)
        else:
            raise SystemExit(f"du: unknown option {flag}")
    paths = args[1:]
    usage = [walk(p, max_entries=max_entries, max_seconds=max_seconds) for p in paths]
    json.dump({"usage": [asdict(u) for u in usage], "nice": os.nice(0)}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
