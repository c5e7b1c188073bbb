"""The exit status of every ``hub`` command, in one place.

Each command's docstring (its ``--help``) and docs/api.md, docs/operations.md and docs/audit.md
say which of these it uses; tests compare exit codes with these names, not with numbers.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1  # the operation failed: daemon down, docker error, the hub answered with an error
EXIT_USAGE = 2  # bad input: configuration, flags, arguments, a username that cannot exist
EXIT_NO_HUB = (
    3  # hub status / hub stop: nothing (or something that is not the hub) answers at --url
)
EXIT_NO_USER = 4  # hub stop: the hub has no such user
EXIT_AUTH = 5  # hub status / hub stop: the admin token is missing or unreadable, or was refused
EXIT_HOST = 6  # hub doctor / start / install: the host lacks a prerequisite (hub doctor)
