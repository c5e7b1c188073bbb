"""Errors raised by the control plane.

Every error carries two audiences (as JupyterHub's ``SpawnException`` does): ``user_message`` is
safe to show a browser user or print on a CLI, ``log_message`` has the details an operator needs.

Exception tree::

    HubError
    ├── ConfigError          bad labels, flags, variables or files (one or more problems)
    ├── UsernameError        an OAuth username that cannot be mapped to a safe name
    ├── DaemonError          a per-user dockerd failed to start, stop or answer
    ├── StorageError         a user's directories could not be made, or overlap another account's
    ├── NetworkError         bridges, subnets or firewall rules could not be set up
    ├── ImageError           the template image could not be made available to a daemon
    ├── EnvironmentError_    the environment container failed to start or become ready
    ├── HookError            a lifecycle hook exited non-zero
    ├── CheckpointError      a CRIU dump or restore failed or could not be verified
    ├── PolicyError          a docker API request refused by the socket policy
    ├── GCError              garbage collection refused a path or failed to remove it
    ├── AuditError           a user's docker event stream could not be armed
    └── InstallError         hub install/uninstall could not write or remove a host artefact
"""

from __future__ import annotations


class HubError(Exception):
    """Raised when the control plane cannot do what was asked; root of all hub errors."""

    def __init__(self, user_message: str, log_message: str | None = None) -> None:
        super().__init__(user_message)
        self.user_message = user_message
        self.log_message = log_message or user_message


class ConfigError(HubError):
    """Raised when configuration (labels, flags, environment, files) is invalid.

    ``problems`` lists every problem found, each naming the label/flag/variable, the bad value
    and what would be accepted.
    """

    def __init__(self, problems: list[str] | str) -> None:
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class UsernameError(HubError):
    """Raised when an OAuth username cannot be mapped to a safe, collision-free name."""


class DaemonError(HubError):
    """Raised when a per-user dockerd fails to start, stop or answer."""


class StorageError(HubError):
    """Raised when a user's workspace or data-root dir cannot be made safely, or what is on disk
    overlaps another account's tree (the operator must decide; the hub never guesses)."""


class NetworkError(HubError):
    """Raised when a user's bridge, subnet or isolation rules cannot be set up."""


class ImageError(HubError):
    """Raised when a template image cannot be pulled or transferred into a user's daemon."""


class EnvironmentError_(HubError):  # avoid shadowing the builtin EnvironmentError
    """Raised when an environment container fails to start or its routes never answer."""


class HookError(HubError):
    """Raised when a lifecycle hook (on_create, pre_dump, post_restore) exits non-zero."""


class CheckpointError(HubError):
    """Raised when a CRIU dump or restore fails or a restore cannot be verified."""


class PolicyError(HubError):
    """Raised when the docker-socket policy refuses a request."""


class GCError(HubError):
    """Raised when garbage collection refuses a path or cannot remove it."""


class AuditError(HubError):
    """Raised when a user's docker event stream cannot be armed (the daemon does not answer)."""


class InstallError(HubError):
    """Raised when ``hub install``/``uninstall`` cannot write or remove a host artefact, or
    systemctl refuses it."""
