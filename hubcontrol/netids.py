"""Network-ID allocation for per-user daemons.

User IDs are ``32768 + 64*k`` (the seed's scheme: each ID owns 64 addresses). A user's ID is
recorded in ``<workspace-dir>/<u>-docker/.networkid`` so a returning user gets it back after any
restart. IDs are claimed host-wide, so several hubs (or test runs) on one host never share one:
a claim is a file ``<registry>/<net_id>`` created with ``O_EXCL`` that holds the data-root path it
belongs to, and every allocation runs under an ``flock`` on ``<registry>/.lock``. A claim is
stale, and may be taken over, only when its data-root no longer records that ID *and* nothing
uses the ID any more: no daemon answers on its socket and no interface is attached to its
bridges (a hub whose data-root was deleted under it may still run that user's daemon).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

from hubcontrol import safefs
from hubcontrol.config import USER_NETWORK_ID_BASE, USER_NETWORK_ID_STEP
from hubcontrol.errors import NetworkError

log = logging.getLogger(__name__)

DEFAULT_REGISTRY = Path("/var/lib/rediacc/netids")
RUN_DIR = Path("/run/rediacc/hub")  # exec-roots, /run/rediacc/hub/<net_id> (supervisor.RUN_DIR)
SYS_NET = Path("/sys/class/net")
MARKER = ".networkid"
MAX_USERS = 4096  # /24 blocks in the default /12 pool


def net_id_for_index(index: int) -> int:
    return USER_NETWORK_ID_BASE + USER_NETWORK_ID_STEP * index


def index_of(net_id: int) -> int:
    """The block index of a user network ID; ValueError for IDs outside the user range."""
    offset = net_id - USER_NETWORK_ID_BASE
    if offset < 0 or offset % USER_NETWORK_ID_STEP:
        raise ValueError(f"{net_id} is not a user network ID (32768 + 64*k)")
    return offset // USER_NETWORK_ID_STEP


def read_marker(data_root_dir: Path) -> int | None:
    """The network ID recorded in a data-root dir, or None when absent or unreadable."""
    try:
        text = safefs.read_text(Path(data_root_dir) / MARKER, limit=64).strip()
        net_id = int(text)
        index_of(net_id)
        return net_id
    except (OSError, ValueError):
        return None


def in_use(net_id: int, *, run_dir: Path = RUN_DIR, sys_net: Path = SYS_NET) -> bool:
    """Whether anything on this host still uses ``net_id``: a daemon answering on its socket, or
    an interface (a container's veth) attached to one of its bridges."""
    for sock in (
        run_dir / str(net_id) / "docker.sock",
        run_dir / str(net_id) / "env" / "docker.sock",
    ):
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
            probe.settimeout(0.5)
            probe.connect(str(sock))
            return True
    for bridge in (f"rdh{net_id}", f"rdh{net_id}e"):
        with contextlib.suppress(OSError):
            if any((sys_net / bridge / "brif").iterdir()):
                return True
    return False


def write_marker(data_root_dir: Path, net_id: int) -> None:
    safefs.write_atomic(Path(data_root_dir) / MARKER, f"{net_id}\n", mode=0o644)


class NetIdRegistry:
    """Host-wide claims on user network IDs (see the module docstring)."""

    def __init__(
        self,
        directory: Path = DEFAULT_REGISTRY,
        *,
        max_users: int = MAX_USERS,
        in_use: Callable[[int], bool] = in_use,
    ) -> None:
        self.directory = Path(directory)
        self.max_users = max_users
        self.in_use = in_use

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def owner(self, net_id: int) -> Path | None:
        try:
            return Path((self.directory / str(net_id)).read_text().strip())
        except (OSError, ValueError):  # ValueError: not text (a corrupt claim)
            return None

    def _claim(self, net_id: int, data_root_dir: Path) -> bool:
        path = self.directory / str(net_id)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            owner = self.owner(net_id)
            if owner == data_root_dir:
                return True
            if owner is not None and read_marker(owner) == net_id:
                return False  # a live claim by another data-root
            if (owner is None or not owner.is_absolute() or not owner.is_dir()) and read_marker(
                data_root_dir
            ) == net_id:
                # The claim is unreadable, truncated or names no directory, and this data-root's
                # own marker names the ID: it is this data-root's, whose daemon may be running
                # on it now. Handing it another ID would start a second daemon on the data-root.
                log.warning(
                    "network-ID claim %s was unreadable or named no data-root (%r); written "
                    "again for %s, whose marker names the ID",
                    path,
                    str(owner) if owner is not None else None,
                    data_root_dir,
                )
                safefs.write_atomic(path, f"{data_root_dir}\n", mode=0o600)
                return True
            if self.in_use(net_id):
                return False  # its data-root is gone, but its daemon or containers are not
            path.unlink(missing_ok=True)  # stale: nothing uses it any more
            return self._claim(net_id, data_root_dir)
        with os.fdopen(fd, "w") as f:
            f.write(f"{data_root_dir}\n")
        return True

    def allocate(self, data_root_dir: Path, *, reserved: frozenset[int] = frozenset()) -> int:
        """The network ID of ``data_root_dir``: its marker's ID if still ours, else a free one.

        ``reserved`` IDs (the hub's own ``--network-id``) are never handed out. Writes the marker,
        or refreshes its time for a returning user: ``hub gc`` judges age by the marker and takes
        the same lock, so a user logging in is never collected between this call and the start.
        """
        data_root_dir = Path(data_root_dir).resolve()
        data_root_dir.mkdir(parents=True, exist_ok=True)
        with self._locked():
            current = read_marker(data_root_dir)
            if (
                current is not None
                and current not in reserved
                and self._claim(current, data_root_dir)
            ):
                os.utime(data_root_dir / MARKER)
                return current
            for index in range(self.max_users):
                net_id = net_id_for_index(index)
                if net_id in reserved:
                    continue
                if self._claim(net_id, data_root_dir):
                    write_marker(data_root_dir, net_id)
                    return net_id
        raise NetworkError(
            "The hub has no free network for a new user; ask the operator.",
            f"all {self.max_users} user network IDs in {self.directory} are claimed",
        )

    def release(self, net_id: int, data_root_dir: Path) -> bool:
        """Drop the claim on ``net_id`` if ``data_root_dir`` holds it and nothing uses the ID.

        A daemon that failed to stop keeps its ID: handing it out again would put a second
        daemon on the same exec-root, bridges and addresses. Returns True when released.
        """
        with self._locked():
            if self.owner(net_id) != Path(data_root_dir).resolve() or self.in_use(net_id):
                return False
            (self.directory / str(net_id)).unlink(missing_ok=True)
            return True
