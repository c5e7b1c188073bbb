"""Suspending idle environments: CRIU checkpoint/restore through the Docker Engine API, verified.

``Checkpointer`` is the contract; two implementations are chosen by name (``make_checkpointer``):

* ``CriuCheckpointer`` ("criu"): runs ``hook.checkpoint.pre_dump`` as the container user, freezes
  the container, fingerprints its processes, and has dockerd dump it with CRIU
  (``POST /containers/{id}/checkpoints``, ``Exit: true``) into ``<workspace-dir>/<u>/.checkpoint/``.
  The container's ``checkpoints`` directory in the daemon's data-root is a symlink there, because
  docker 20.10 refuses restores from a custom ``--checkpoint-dir``. The large images (memory pages)
  wait beside the rest, in ``.checkpoint/<id>.pages/``, and reach CRIU without dockerd's tar
  (``hubcontrol.criupages``). Restoring starts the container
  with ``?checkpoint=``, **verifies** that the processes are the dumped ones (see below), cleans
  containerd's ``$TMPDIR/ctrd-checkpoint*`` copies, and runs ``hook.checkpoint.post_restore``.
* ``RecreateCheckpointer`` ("recreate"): the seed's stop-and-recreate fallback. ``checkpoint``
  stops the container; ``restore`` restores nothing, and the hub starts the environment afresh
  on the same persistent workspace.

Verification. docker can report a successful restore while having started the container fresh,
and CRIU does not keep the start times the host sees (``/proc/<pid>/stat`` field 22 changes). What
CRIU does keep, and a fresh ``exec`` never reproduces, is each process's memory: the kernel puts 16
random bytes (``AT_RANDOM``) at a randomised stack address for every ``exec``. A process's *token*
is a hash of its auxiliary vector (randomised addresses) and those 16 bytes, read from
``/proc/<pid>/mem``. Before the dump the container is paused (cgroup freezer), so the recorded set
is exactly the set CRIU dumps; after the restore every recorded process must be back under its
PID-namespace PID with the same token. A fresh start fails this for PID 1 at least.

Failures. A failed dump, restore or verification is raised as ``CheckpointError`` whose
``log_message`` carries CRIU's own log lines (from the ``criu-dump.log``/``restore.log`` path
dockerd names in its error). Every failure is counted per user in ``<state-dir>/checkpoint/<u>.json``;
after ``MAX_FAILURES`` consecutive ones checkpointing is disabled for that user (the seed's rule)
until an operator re-enables it (``reset``). A verified restore resets the count. No path here
touches the workspace: a failed restore leaves a stopped container the hub starts fresh.

The blocking work runs in worker threads (``Engine.call``); the module never imports the proxy.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import docker
import docker.errors
import httpx
from docker.models.containers import Container

from hubcontrol import criupages, procs, safefs, storage
from hubcontrol.config import DEFAULT_USER, DEFAULT_WORKSPACE
from hubcontrol.engine import Engine, id_of
from hubcontrol.errors import CheckpointError

R = TypeVar("R")
log = logging.getLogger(__name__)

MAX_FAILURES = 3  # the seed: "If CRIU fails 3 times in a row for a user, checkpointing is disabled"
CHECKPOINT_DIR = storage.CHECKPOINT_DIR  # <workspace-dir>/<u>/.checkpoint/, root's, mode 0700
FINGERPRINT_FILE = "hub-fingerprint.json"  # beside CRIU's images, written before the dump
CHECKPOINT_PREFIX = "hub-"
RESTORE_TIMEOUT = (
    120.0  # seconds; CRIU can spin forever on damaged images (seen with empty pages-*.img)
)
RESTORE_RETRIES = 3  # "content ... already exists" right after a dump on the same daemon
RESTORE_RETRY_DELAY = 0.5
STOP_TIMEOUT = 10
VERIFY_ATTEMPTS = 5
VERIFY_RETRY_DELAY = 0.25
CRIU_LOG_LINES = 25
AT_RANDOM = 25  # <elf.h>

# dockerd names CRIU's log file in its error: "path= /run/.../criu-dump.log" or "log file: /.../restore.log"
_LOG_PATH = re.compile(r"(?:path=\s*|log file:\s*)(/\S+?\.log)")
_ALREADY_EXISTS = re.compile(r"already exists", re.IGNORECASE)


# --- the three-strike rule (pure) -------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointHealth:
    """What the hub knows about one user's checkpoints; shown in status."""

    failures: int = 0  # consecutive failed dumps, restores or verifications
    disabled: bool = False  # True after MAX_FAILURES in a row: stop-and-recreate from then on
    last_error: str | None = None  # user-facing summary of the latest failure
    last_failure_at: float | None = None
    checkpoint: str | None = None  # the checkpoint ID waiting to be restored, if any
    container: str | None = None  # the container that checkpoint belongs to
    checkpointed_at: float | None = None
    restored_at: float | None = None
    last_dump_seconds: float | None = None
    last_restore_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CheckpointHealth:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def after_failure(
    health: CheckpointHealth, error: str, now: float, limit: int = MAX_FAILURES
) -> CheckpointHealth:
    """The record after one more failure: counted, and disabled once ``limit`` are consecutive."""
    failures = health.failures + 1
    return dataclasses.replace(
        health,
        failures=failures,
        disabled=health.disabled or failures >= limit,
        last_error=error,
        last_failure_at=now,
    )


def after_success(health: CheckpointHealth) -> CheckpointHealth:
    """The record after a verified restore: the run of failures is broken."""
    return dataclasses.replace(health, failures=0)


class HealthStore:
    """Per-user ``CheckpointHealth`` as JSON files under ``<state-dir>/checkpoint/``.

    The hub's state dir survives hub restarts and is not inside the user's workspace, so neither a
    restart nor a user can reset the count.
    """

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / "checkpoint"
        self._lock = threading.Lock()

    def _path(self, user: str) -> Path:
        if not user or "/" in user or user.startswith("."):
            raise ValueError(f"not a safe user name: {user!r}")
        return self.dir / f"{user}.json"

    def get(self, user: str) -> CheckpointHealth:
        path = self._path(user)
        try:
            return CheckpointHealth.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            return CheckpointHealth()
        except (ValueError, TypeError) as exc:
            aside = safefs.keep_aside(path)
            log.error(
                "checkpoint record %s of %s is unreadable (%s); %s; starting afresh: a checkpoint "
                "it named is not restored (the environment starts fresh on its workspace) and its "
                "failure count is back to 0",
                path,
                user,
                exc,
                f"kept as {aside}" if aside else "could not move it aside",
            )
            return CheckpointHealth()

    def put(self, user: str, health: CheckpointHealth) -> None:
        path = self._path(user)
        with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            safefs.write_atomic(path, json.dumps(health.to_json(), indent=1), mode=0o644)

    def update(
        self, user: str, fn: Callable[[CheckpointHealth], CheckpointHealth]
    ) -> CheckpointHealth:
        with self._lock:
            health = fn(self.get(user))
        self.put(user, health)
        return health


# --- fingerprints: is this the process CRIU dumped? ------------------------------------------


@dataclass(frozen=True)
class ProcessMark:
    """One process of a container: PID in its namespace, name, and memory token."""

    nspid: int
    comm: str
    token: str
    started: int = 0  # host clock ticks since boot (``/proc/<pid>/stat`` field 22)


def process_token(pid: int) -> str:
    """A hash of ``pid``'s auxiliary vector and the 16 ``AT_RANDOM`` bytes in its memory.

    Both are fixed at ``exec`` (randomised addresses, kernel random bytes) and restored verbatim by
    CRIU; a freshly started process gets new ones. Needs root (reads ``/proc/<pid>/mem``).
    """
    with open(f"/proc/{pid}/auxv", "rb") as f:
        auxv = f.read()
    digest = hashlib.sha256(auxv)
    usable = len(auxv) - len(auxv) % 16
    entries = dict(struct.iter_unpack("QQ", auxv[:usable]))
    address = entries.get(AT_RANDOM)
    if address:
        with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
            mem.seek(address)
            digest.update(mem.read(16))
    return digest.hexdigest()[:32]


def boot_ticks() -> int:
    """Now, in the clock ticks since boot that ``/proc/<pid>/stat`` start times use."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * os.sysconf("SC_CLK_TCK"))


def _start_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[19])


def _nspid(pid: int) -> int | None:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    return None


def container_processes(init_pid: int) -> dict[int, ProcessMark]:
    """Every process in the PID namespace of host PID ``init_pid``, keyed by namespace PID."""
    namespace = os.readlink(f"/proc/{init_pid}/ns/pid")
    marks: dict[int, ProcessMark] = {}
    for pid in procs.pids():
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") != namespace:
                continue
        except OSError:
            continue  # exited while we looked, or not ours to see (other user namespaces)
        try:
            nspid = _nspid(pid)
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
            token = process_token(pid)
            started = _start_ticks(pid)
        except (FileNotFoundError, ProcessLookupError):
            if pid == init_pid:
                raise
            continue  # exited while we looked
        if nspid is not None:
            marks[nspid] = ProcessMark(nspid, comm, token, started)
    if 1 not in marks:
        raise CheckpointError(
            "Your environment's processes could not be inspected.",
            f"host PID {init_pid} is not PID 1 of its namespace",
        )
    return marks


def compare_fingerprints(
    before: Mapping[int, ProcessMark],
    after: Mapping[int, ProcessMark],
    restored_by: int | None = None,
) -> tuple[bool, str]:
    """Whether ``after`` (read after a restore) is the process tree recorded in ``before``.

    ``before`` was recorded with the container frozen, so it is exactly what CRIU dumped.
    ``restored_by`` (``boot_ticks()`` when dockerd answered the restore) separates processes the
    restore created from ones forked since, which may reuse the PID of a recorded process that
    has exited meanwhile (a ``sleep`` in a loop). The rules:

    * PID 1 must be back with its token: it cannot exit without ending the container, and a
      fresh start always replaces it, so this alone exposes a fresh start;
    * every other recorded process that is back, and not forked after ``restored_by``, must have
      its token; recorded processes that are gone have exited since the restore, which is fine.
    """
    if 1 not in before:
        return False, "PID 1 was not recorded before the dump"
    if 1 not in after:
        return False, "PID 1 is missing after the restore"
    slack = 1  # start times are in ticks (10 ms): a fork in the same tick counts as restored
    candidates = {
        p: m
        for p, m in after.items()
        if p in before and (p == 1 or restored_by is None or m.started <= restored_by + slack)
    }
    changed = sorted(p for p, m in candidates.items() if before[p].token != m.token)
    if changed:
        shown = ", ".join(f"{p} ({before[p].comm})" for p in changed[:5])
        return False, f"process {shown} was started afresh, not restored"
    gone = len(before) - len(candidates)
    detail = f"{len(candidates)} processes restored with their memory"
    return True, detail + (f" ({gone} exited since)" if gone else "")


# --- CRIU's own log lines ----------------------------------------------------------------------

CAP_SYS_RESOURCE = 24


def host_can_dump_other_users(status: str | None = None) -> bool:
    """Whether this process (and so CRIU, started by the same root) has CAP_SYS_RESOURCE.

    CRIU reads each dumped process's rlimits with prlimit(), which for a process of another uid
    needs that capability. Some hosts (Firecracker VMs among them) withhold it from root: there
    only environments running as root can be checkpointed.
    """
    if status is None:
        with open("/proc/self/status") as f:
            status = f.read()
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_SYS_RESOURCE & 1)
    return False


def non_root_checkpoints(has_cap: bool, userns_remap: bool) -> tuple[bool, str]:
    """Whether environments that run as a non-root user can be checkpointed on a host, and the
    explanation an operator reads (``hub doctor``, the startup warning; docs/checkpoint.md,
    "Non-root environments without CAP_SYS_RESOURCE").

    ``has_cap``: the hub's root holds CAP_SYS_RESOURCE (``host_can_dump_other_users``);
    ``userns_remap``: per-user daemons run with ``--userns-remap``."""
    if has_cap:
        return True, "root holds CAP_SYS_RESOURCE: CRIU can dump environments of any user"
    if userns_remap:
        return True, (
            "root lacks CAP_SYS_RESOURCE, but --userns-remap puts each user's containers in a "
            "user namespace that root owns, where it holds every capability: CRIU can dump "
            "environments of any user (of per-user daemons; templates on the host's daemon "
            "still only as root)"
        )
    return False, (
        "root lacks CAP_SYS_RESOURCE (this host's capability bounding set withholds it, as "
        "Firecracker VMs do), and CRIU reads every dumped process's rlimits with prlimit(), "
        "which for a process of another uid needs that capability in the process's user "
        "namespace: only environments running as root (template user root or 0) can be "
        "checkpointed; others fail with CRIU's \"Can't get rlimit ... Operation not "
        'permitted". Fix: give root CAP_SYS_RESOURCE, or run the hub with --userns-remap '
        "(HUB_USERNS_REMAP=true; docs/checkpoint.md)"
    )


IO_URING_SYSCTL = Path("/proc/sys/kernel/io_uring_disabled")


def io_uring_open_to_containers(path: Path = IO_URING_SYSCTL) -> bool:
    """Whether container processes may create io_uring instances, which CRIU cannot dump.

    libuv (ttyd, node) and others open one by default. ``kernel.io_uring_disabled=1`` keeps it
    to processes with CAP_SYS_ADMIN (not containers), and they fall back to epoll silently;
    docker 25+ blocks io_uring in its default seccomp profile for the same effect.
    """
    try:
        return path.read_text().strip() == "0"
    except OSError:
        return False  # kernels before 6.6 have no switch: nothing to say here


def host_warnings() -> list[str]:
    """What on this host will make checkpoints fail, said once at startup rather than per dump."""
    out = []
    if not host_can_dump_other_users():
        out.append(
            "root lacks CAP_SYS_RESOURCE here, so CRIU can only dump environments whose "
            "processes run as root (template user root or 0), unless the hub runs with "
            "--userns-remap; others fail and count as strikes"
        )
    if io_uring_open_to_containers():
        out.append(
            "kernel.io_uring_disabled=0: environments whose programs open an io_uring (libuv: "
            "ttyd, node) cannot be dumped; set `sysctl kernel.io_uring_disabled=1`"
        )
    return out


def _hint(excerpt: str) -> str:
    if "Can't get rlimit" in excerpt and not host_can_dump_other_users():
        return (
            "\nhint: this host's root lacks CAP_SYS_RESOURCE, so CRIU cannot read the rlimits of "
            "processes running as another user; only environments running as root (template "
            "user root or 0) can be checkpointed here, unless the hub runs with --userns-remap "
            "(per-user daemons then put containers in user namespaces root owns)"
        )
    if "External socket is used" in excerpt:
        return (
            "\nhint: a process in the environment holds a connection to a unix socket outside "
            "the container, typically `docker events` or `docker logs -f` on the mounted docker "
            "socket; stop such processes in hook.checkpoint.pre_dump"
        )
    if "io_uring" in excerpt:
        return (
            "\nhint: a process in the environment uses io_uring, which CRIU cannot checkpoint; "
            "set `sysctl kernel.io_uring_disabled=1` on the host (containers then fall back to "
            "epoll) or run docker 25+, whose default seccomp profile blocks io_uring"
        )
    return ""


def criu_log_path(message: str) -> str | None:
    """The CRIU log file dockerd names in an error message, if any."""
    m = _LOG_PATH.search(message or "")
    return m.group(1) if m else None


def criu_log_excerpt(text: str, lines: int = CRIU_LOG_LINES) -> str:
    """The lines leading to CRIU's first ``Error`` and every error after it, else the last lines."""
    all_lines = text.splitlines()
    first = next((i for i, ln in enumerate(all_lines) if "Error (" in ln), None)
    if first is None:
        return "\n".join(all_lines[-lines:])
    context = all_lines[max(0, first - 8) : first]
    errors = [ln for ln in all_lines[first:] if "Error (" in ln]
    return "\n".join((context + errors)[:lines])


def read_criu_log(message: str, *more: Path) -> str:
    """An excerpt of the CRIU log named in ``message`` (or the first of ``more`` that exists)."""
    candidates = [Path(p) for p in (criu_log_path(message),) if p] + list(more)
    for path in candidates:
        try:
            with open(path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - (1 << 20)))  # logs can be huge
                text = f.read().decode(errors="replace")
        except OSError:
            continue
        return f"{path}:\n{criu_log_excerpt(text)}"
    return "(CRIU's log was removed with the task; see dockerd's log)"


# --- targets and results -----------------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointTarget:
    """Which container to suspend or resume, and where its checkpoint lives."""

    user: str  # the safe name
    docker_url: str  # the daemon the container runs on, "unix:///..."
    container: str  # name or ID
    checkpoint_dir: Path  # <workspace-dir>/<u>/.checkpoint
    daemon_tmpdir: Path | None = None  # dockerd's (and containerd's) TMPDIR
    # the daemon runs CRIU through a wrapper with criupages.RESTORE_PRELUDE, so a dump's large
    # images can stay out of dockerd's restore path (hubcontrol.criupages); needs daemon_tmpdir
    pages_aside: bool = False
    container_user: str = DEFAULT_USER  # hooks run as this user
    workdir: str = DEFAULT_WORKSPACE
    service_ip: str = ""
    pre_dump: str | None = None
    post_restore: str | None = None
    # called (in the restore's thread) before post_restore runs; the hub waits there for the
    # environment's docker socket, started beside the restore (Hub._ensure_container)
    before_hooks: Callable[[], object] | None = None


@dataclass(frozen=True)
class CheckpointResult:
    method: str  # "criu" or "stop"
    container: str
    checkpoint: str | None = None
    seconds: float = 0.0
    image_bytes: int = 0
    processes: int = 0


@dataclass(frozen=True)
class RestoreResult:
    checkpoint: str
    container: str
    seconds: float
    detail: str  # what verification found
    hook_error: str | None = None  # post_restore failed (the restore itself is good)
    processes: Mapping[int, ProcessMark] = field(default_factory=dict)
    # where ``seconds`` went, in order: ("criu", 0.41), ("verify", 0.02) ... (hubcontrol.timings)
    phases: tuple[tuple[str, float], ...] = ()


def _socket_path(url: str) -> str:
    return url.removeprefix("unix://")


def daemon_answers(url: str, timeout: float = 5.0) -> bool:
    """Whether the dockerd at ``url`` answers ``GET /_ping`` (a plain socket: docker-py and
    httpcore leak the socket of a refused unix-socket connect)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(_socket_path(url))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            answer = b""
            while len(answer) < 65536 and (chunk := sock.recv(4096)):  # 1.0: closed after it
                answer += chunk
        except OSError:
            return False
    return answer.startswith(b"HTTP/1.") and b" 200 " in answer[:16] and answer.endswith(b"OK")


def _dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def clean_containerd_copies(tmpdir: Path | None) -> int:
    """Remove containerd's ``ctrd-checkpoint*`` copies (full memory images) from a daemon's TMPDIR."""
    if tmpdir is None:
        return 0
    removed = criupages.clean_stages(tmpdir)  # staged images a restore did not take
    with contextlib.suppress(FileNotFoundError), os.scandir(tmpdir) as entries:
        for entry in entries:
            if entry.name.startswith("ctrd-checkpoint"):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
    return removed


def _kill_restore(container_id: str) -> int:
    """SIGKILL the CRIU processes of a hanging ``runc restore`` for ``container_id``.

    runc's argv ends with the full 64-hex container ID, so the match is exact; only CRIU (its
    children) is killed, runc then fails the restore and dockerd answers.
    """
    killed = 0
    for runc in procs.pids():
        argv = procs.cmdline(runc)
        if not argv or not argv[0].endswith("runc") or "restore" not in argv:
            continue
        if container_id not in argv:
            continue
        for pid in _descendants(runc):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
    return killed


def _descendants(pid: int) -> list[int]:
    """Every descendant of ``pid``; children are listed per thread (Go forks from any thread)."""
    out: list[int] = []
    children: list[int] = []
    try:
        with os.scandir(f"/proc/{pid}/task") as tasks:
            for task in tasks:
                with contextlib.suppress(OSError), open(f"{task.path}/children") as f:
                    children.extend(int(c) for c in f.read().split())
    except OSError:
        return out
    for child in children:
        out.append(child)
        out.extend(_descendants(child))
    return out


# --- the contract --------------------------------------------------------------------------------


class Checkpointer(abc.ABC):
    """How an idle environment is suspended and resumed.

    * ``checkpoint(target)`` leaves the container not running, its state kept as well as the
      implementation can; the caller then stops the user's daemon. Raises ``CheckpointError``
      (already counted) when it could not, with the container still running.
    * ``restore(target)`` runs with the daemon started again: returns a ``RestoreResult`` when the
      container runs its restored processes (verified), None when there was nothing to restore
      (the caller starts the environment normally), and raises ``CheckpointError`` (counted) when
      a restore failed; the container is then stopped and the images discarded, and the caller
      starts the environment afresh on the same workspace.
    * ``health(user)`` is the user's failure count and state, for the idle arbiter and status.
    * ``discard(target)`` drops a waiting checkpoint (template switch, destroy).
    """

    name: ClassVar[str]
    registry: ClassVar[dict[str, type[Checkpointer]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not isinstance(getattr(cls, "name", None), str):
            raise TypeError(f"{cls.__name__} must set a class attribute `name`")
        # Only a class that names itself is registered: a subclass that merely overrides a method
        # (a test double, a site customisation) must not replace "criu" for every Hub.
        if "name" in cls.__dict__:
            known = Checkpointer.registry.get(cls.name)
            if known is not None and known is not cls:
                raise TypeError(f"checkpointer name {cls.name!r} is taken by {known.__name__}")
            Checkpointer.registry[cls.name] = cls

    def __init__(
        self,
        state_dir: Path,
        engine: Engine | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = HealthStore(state_dir)
        self.engine = engine or Engine()
        self.clock = clock

    def health(self, user: str) -> CheckpointHealth:
        return self.store.get(user)

    def reset(self, user: str) -> CheckpointHealth:
        """Re-enable checkpointing for ``user`` (an operator's decision after fixing the cause)."""
        return self.store.update(
            user, lambda h: dataclasses.replace(h, failures=0, disabled=False, last_error=None)
        )

    def has_checkpoint(self, user: str) -> bool:
        return self.store.get(user).checkpoint is not None

    @abc.abstractmethod
    async def checkpoint(self, target: CheckpointTarget) -> CheckpointResult: ...

    @abc.abstractmethod
    async def restore(self, target: CheckpointTarget) -> RestoreResult | None: ...

    async def discard(self, target: CheckpointTarget) -> None:
        def run() -> None:
            _remove_images(target.checkpoint_dir, keep=None)
            self.store.update(
                target.user, lambda h: dataclasses.replace(h, checkpoint=None, container=None)
            )

        await self.engine.call(run)

    def _fail(self, user: str, user_message: str, log_message: str) -> CheckpointError:
        health = self.store.update(user, lambda h: after_failure(h, user_message, self.clock()))
        if health.disabled:
            log_message += (
                f"\n{user}: {health.failures} consecutive checkpoint failures; checkpointing is "
                "disabled for this user (stop-and-recreate from now on)"
            )
        log.error("%s", log_message)
        return CheckpointError(user_message, log_message)


def make_checkpointer(name: str, state_dir: Path, engine: Engine | None = None) -> Checkpointer:
    """The checkpointer called ``name`` ("criu" or "recreate")."""
    try:
        cls = Checkpointer.registry[name]
    except KeyError:
        known = ", ".join(sorted(Checkpointer.registry))
        raise ValueError(f"unknown checkpointer {name!r}; known: {known}") from None
    return cls(state_dir, engine)


def _remove_images(checkpoint_dir: Path, keep: str | None) -> list[str]:
    """Delete every checkpoint image set in ``checkpoint_dir`` except ``keep``, through a
    descriptor of ``.checkpoint`` reached without following links (``storage.checkpoint_dir``);
    nothing a link points at is ever removed."""
    removed: list[str] = []
    try:
        with storage.checkpoint_dir(checkpoint_dir, create=False) as fd:
            if fd is None:
                return removed
            with os.scandir(fd) as entries:
                names = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
            for name in names:
                if name != keep:
                    shutil.rmtree(name, dir_fd=fd, ignore_errors=True)
                    removed.append(name)
    except FileNotFoundError:
        pass
    except OSError as exc:  # a link where the workspace should be: leave it, say so
        log.warning("checkpoint images in %s not removed: %s", checkpoint_dir, exc)
    return removed


def _run_hook(
    client: docker.DockerClient, container_id: str, target: CheckpointTarget, command: str
) -> tuple[int, str]:
    from hubcontrol.environment import run_hook

    return run_hook(
        client, container_id, command, target.container_user, target.workdir, target.service_ip
    )


class RecreateCheckpointer(Checkpointer):
    """Stop-and-recreate: processes end on checkpoint and start afresh on the next visit."""

    name = "recreate"

    async def checkpoint(self, target: CheckpointTarget) -> CheckpointResult:
        def run() -> CheckpointResult:
            client = self.engine.client(target.docker_url)
            start = time.monotonic()
            container = client.containers.get(target.container)
            cid = id_of(container)
            if container.status in ("running", "paused", "restarting"):
                if container.status == "paused":
                    container.unpause()
                container.stop(timeout=STOP_TIMEOUT)
            return CheckpointResult("stop", cid, seconds=time.monotonic() - start)

        return await self.engine.call(run)

    async def restore(self, target: CheckpointTarget) -> RestoreResult | None:
        return None


class CriuCheckpointer(Checkpointer):
    """CRIU via dockerd's checkpoint API, with images in the user's workspace dir."""

    name = "criu"
    restore_timeout = RESTORE_TIMEOUT

    def __init__(
        self,
        state_dir: Path,
        engine: Engine | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(state_dir, engine, clock=clock)
        for warning in host_warnings():
            log.warning("checkpointing: %s", warning)

    # -- dump --

    async def checkpoint(self, target: CheckpointTarget) -> CheckpointResult:
        return await self.engine.call(self._guarded, self._checkpoint, target, "suspended")

    def _guarded(
        self, fn: Callable[[CheckpointTarget], R], target: CheckpointTarget, what: str
    ) -> R:
        """Run ``fn(target)``; an unexpected docker or OS error becomes a counted CheckpointError,
        so the Hub's fallback (stop, or start afresh) runs instead of a half-done operation."""
        try:
            if not daemon_answers(target.docker_url):
                raise OSError(f"the daemon at {target.docker_url} does not answer /_ping")
            return fn(target)
        except CheckpointError:
            raise
        except (docker.errors.DockerException, httpx.HTTPError, OSError, ValueError) as exc:
            if what == "restored":
                with contextlib.suppress(Exception):
                    self._discard_now(target)
            raise self._fail(
                target.user,
                f"Your environment could not be {what}; "
                + ("it was stopped instead." if what == "suspended" else "a fresh one was started.")
                + " Your workspace files are kept.",
                f"{target.user}: checkpoint{'' if what == 'suspended' else ' restore'} of "
                f"{target.container} failed: {exc!r}",
            ) from exc

    def _checkpoint(self, target: CheckpointTarget) -> CheckpointResult:
        user = target.user
        if self.store.get(user).disabled:
            raise CheckpointError(
                "Checkpointing is disabled for your environment after repeated failures.",
                f"{user}: checkpointing disabled after {MAX_FAILURES} consecutive failures",
            )
        client = self.engine.client(target.docker_url)
        container = client.containers.get(target.container)
        cid = id_of(container)
        if container.status != "running":
            raise CheckpointError(
                "Your environment is not running, so it cannot be suspended.",
                f"{user}: container {container.name} is {container.status}, not running",
            )
        started = time.monotonic()
        if target.pre_dump:
            code, output = _run_hook(client, cid, target, target.pre_dump)
            if code != 0:
                raise self._fail(
                    user,
                    "Your environment's pre-dump hook failed, so it was stopped instead of "
                    "suspended.",
                    f"{user}: hook.checkpoint.pre_dump exited {code}: {output[-2000:]}",
                )
        checkpoint_id = f"{CHECKPOINT_PREFIX}{int(self.clock() * 1000)}"
        images = target.checkpoint_dir / checkpoint_id
        data_root = _docker_root(client, container)
        self._link_checkpoints(data_root, cid, target.checkpoint_dir)
        # A failed dump leaves the container running and its old images useless either way.
        _remove_images(target.checkpoint_dir, keep=None)
        clean_containerd_copies(target.daemon_tmpdir)  # left by a restore a crash interrupted
        self.store.update(user, lambda h: dataclasses.replace(h, checkpoint=None, container=None))

        container.pause()  # freeze, so the fingerprint is exactly the set CRIU will dump
        try:
            marks = container_processes(container.attrs["State"]["Pid"])
            with self._api(target) as api:
                response = api.post(
                    f"/containers/{cid}/checkpoints",
                    json={"CheckpointID": checkpoint_id, "Exit": True},
                    timeout=self.restore_timeout,
                )
        except BaseException:
            self._unpause(container)
            raise
        if response.status_code >= 300:
            message = _error_message(response)
            self._unpause(container)
            excerpt = read_criu_log(message)
            _remove_images(target.checkpoint_dir, keep=None)
            raise self._fail(
                user,
                "Your environment could not be suspended (CRIU dump failed); it was stopped "
                "instead, and your workspace files are kept.",
                f"{user}: CRIU dump of {container.name} failed: {message}\n{excerpt}"
                f"{_hint(excerpt)}",
            )
        container.reload()
        if container.status == "running":  # "Exit": true must stop it; never leave two copies
            container.stop(timeout=STOP_TIMEOUT)
        _write_fingerprint(images, cid, marks)
        size = _dir_bytes(images)
        if target.pages_aside and target.daemon_tmpdir is not None:
            try:
                criupages.set_aside(target.checkpoint_dir, checkpoint_id)
            except OSError as exc:  # the images still restore through dockerd's tar
                log.warning("%s: checkpoint images not set aside: %s", user, exc)
                with contextlib.suppress(OSError):
                    criupages.put_back(target.checkpoint_dir, checkpoint_id)
        seconds = time.monotonic() - started
        now = self.clock()
        self.store.update(
            user,
            lambda h: dataclasses.replace(
                h,
                checkpoint=checkpoint_id,
                container=cid,
                checkpointed_at=now,
                last_dump_seconds=round(seconds, 3),
            ),
        )
        log.info(
            "%s: checkpointed %s as %s in %.2f s (%d bytes, %d processes)",
            user,
            container.name,
            checkpoint_id,
            seconds,
            size,
            len(marks),
        )
        return CheckpointResult("criu", cid, checkpoint_id, seconds, size, len(marks))

    @staticmethod
    def _unpause(container: Container) -> None:
        with contextlib.suppress(docker.errors.APIError):
            container.reload()
            if container.status == "paused":
                container.unpause()

    @staticmethod
    def _link_checkpoints(data_root: Path, container_id: str, checkpoint_dir: Path) -> None:
        """Point ``<data-root>/containers/<id>/checkpoints`` at the user's ``.checkpoint``, made
        root's and 0700 first; neither end is reached through a link."""
        with storage.checkpoint_dir(checkpoint_dir):
            pass
        with safefs.open_dir(data_root, f"containers/{container_id}") as fd:
            try:
                st = os.stat("checkpoints", dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISLNK(st.st_mode):
                if os.readlink("checkpoints", dir_fd=fd) == str(checkpoint_dir):
                    return
                os.unlink("checkpoints", dir_fd=fd)
            elif st is not None and stat.S_ISDIR(st.st_mode):
                shutil.rmtree("checkpoints", dir_fd=fd)
            elif st is not None:
                os.unlink("checkpoints", dir_fd=fd)
            os.symlink(checkpoint_dir, "checkpoints", dir_fd=fd)

    def _api(self, target: CheckpointTarget) -> httpx.Client:
        transport = httpx.HTTPTransport(uds=_socket_path(target.docker_url))
        return httpx.Client(transport=transport, base_url="http://docker/v1.41")

    # -- restore --

    async def restore(self, target: CheckpointTarget) -> RestoreResult | None:
        return await self.engine.call(self._guarded, self._restore, target, "restored")

    def _restore(self, target: CheckpointTarget) -> RestoreResult | None:
        user = target.user
        health = self.store.get(user)
        if health.checkpoint is None:
            return None
        checkpoint_id = health.checkpoint
        images = target.checkpoint_dir / checkpoint_id
        client = self.engine.client(target.docker_url)
        started = time.monotonic()
        phases: list[tuple[str, float]] = []  # RestoreResult.phases
        lap = started

        def phase(name: str) -> None:
            nonlocal lap
            now = time.monotonic()
            phases.append((name, now - lap))
            lap = now

        try:
            container = client.containers.get(health.container or target.container)
        except docker.errors.NotFound:
            self._discard_now(target)
            raise self._fail(
                user,
                "Your suspended environment could not be restored; a fresh one was started on "
                "your workspace.",
                f"{user}: container {health.container} of checkpoint {checkpoint_id} is gone",
            ) from None
        cid = id_of(container)
        try:
            before = _read_fingerprint(images, cid)
        except (OSError, ValueError) as exc:
            self._discard_now(target)
            raise self._fail(
                user,
                "Your suspended environment could not be restored; a fresh one was started on "
                "your workspace.",
                f"{user}: checkpoint {checkpoint_id} has no usable fingerprint: {exc}",
            ) from None
        if container.status != "exited" and container.status != "created":
            # Something started it without the checkpoint (a restart policy, a person): its
            # processes are fresh, so the checkpoint no longer describes the container.
            self._discard_now(target)
            raise self._fail(
                user,
                "Your suspended environment had been restarted without its saved state; it "
                "keeps running fresh on your workspace.",
                f"{user}: container {container.name} was {container.status} before restore of "
                f"{checkpoint_id}; not restoring over it",
            )
        data_root = _docker_root(client, container)
        self._link_checkpoints(data_root, cid, target.checkpoint_dir)
        phase("prepare")  # container, fingerprint, images linked
        self._stage_pages(target, checkpoint_id)
        phase("pages staged")
        try:
            message = self._start_from_checkpoint(target, cid, checkpoint_id)
            restored_by = boot_ticks()
            phase("criu")  # dockerd -> containerd -> runc restore -> CRIU, until dockerd answers
        finally:
            clean_containerd_copies(target.daemon_tmpdir)
        if message is not None:
            excerpt = read_criu_log(message)
            self._stop_quietly(container)
            self._discard_now(target)
            raise self._fail(
                user,
                "Your suspended environment could not be restored (CRIU restore failed); a fresh "
                "one was started on your workspace.",
                f"{user}: CRIU restore of {container.name} from {checkpoint_id} failed: "
                f"{message}\n{excerpt}",
            )
        phase("containerd copies")
        container.reload()
        ok, detail, after = self._verify(container.attrs["State"]["Pid"], before, restored_by)
        phase("verify")
        if not ok:
            evidence = _restore_evidence(target, cid, before, after, restored_by)
            self._stop_quietly(container)
            self._discard_now(target)
            raise self._fail(
                user,
                "Your suspended environment could not be restored faithfully; a fresh one was "
                "started on your workspace.",
                f"{user}: restore of {container.name} from {checkpoint_id} not verified: {detail}"
                f"\n{evidence}",
            )
        hook_error = None
        if target.post_restore:
            if target.before_hooks is not None:
                target.before_hooks()
                phase("docker socket")
            code, output = _run_hook(client, cid, target, target.post_restore)
            if code != 0:
                hook_error = f"hook.checkpoint.post_restore exited {code}: {output[-2000:]}"
                log.warning("%s: %s", user, hook_error)
            phase("post_restore hook")
        now = self.clock()
        _remove_images(target.checkpoint_dir, keep=None)  # restored: the images are stale now
        phase("images removed")
        seconds = time.monotonic() - started
        self.store.update(
            user,
            lambda h: dataclasses.replace(
                after_success(h),
                checkpoint=None,
                container=None,
                restored_at=now,
                last_restore_seconds=round(seconds, 3),
                last_error=hook_error if hook_error else h.last_error,
            ),
        )
        log.info(
            "%s: restored %s from %s in %.2f s, verified: %s",
            user,
            container.name,
            checkpoint_id,
            seconds,
            detail,
        )
        return RestoreResult(checkpoint_id, cid, seconds, detail, hook_error, after, tuple(phases))

    @staticmethod
    def _stage_pages(target: CheckpointTarget, checkpoint_id: str) -> None:
        """Hand the checkpoint's aside images to the daemon's CRIU wrapper (criupages); where that
        cannot be done they go back beside the images, into dockerd's tar, as before."""
        tmpdir = target.daemon_tmpdir
        if target.pages_aside and tmpdir is not None:
            try:
                criupages.stage(target.checkpoint_dir, checkpoint_id, tmpdir)
                return
            except OSError as exc:  # e.g. a copy across filesystems that ran out of space
                log.warning(
                    "%s: checkpoint images not staged, restoring through dockerd: %s",
                    target.user,
                    exc,
                )
                criupages.clean_stages(tmpdir)
        criupages.put_back(target.checkpoint_dir, checkpoint_id)

    @staticmethod
    def _verify(
        init_pid: int, before: Mapping[int, ProcessMark], restored_by: int
    ) -> tuple[bool, str, dict[int, ProcessMark]]:
        """Compare the restored processes with the recorded ones; a mismatch is read again a few
        times over a second, in case a process was read while CRIU was still finishing it."""
        after: dict[int, ProcessMark] = {}
        ok, detail = False, "not read"
        for attempt in range(VERIFY_ATTEMPTS):
            if attempt:
                time.sleep(VERIFY_RETRY_DELAY)
            try:
                after = container_processes(init_pid)
                ok, detail = compare_fingerprints(before, after, restored_by)
            except (OSError, CheckpointError) as exc:
                ok, detail = False, f"cannot read the restored processes: {exc}"
            if ok:
                if attempt:
                    detail += f" (matched on read {attempt + 1})"
                break
        return ok, detail, after

    def _start_from_checkpoint(
        self, target: CheckpointTarget, container_id: str, checkpoint_id: str
    ) -> str | None:
        """Start ``container_id`` from its checkpoint; None on success, else dockerd's message."""
        watchdog = threading.Timer(self.restore_timeout, _kill_restore, [container_id])
        watchdog.daemon = True
        watchdog.start()
        try:
            with self._api(target) as api:
                for attempt in range(RESTORE_RETRIES):
                    response = api.post(
                        f"/containers/{container_id}/start",
                        params={"checkpoint": checkpoint_id},
                        timeout=self.restore_timeout + 30,
                    )
                    if response.status_code < 300:
                        return None
                    message = _error_message(response)
                    if not _ALREADY_EXISTS.search(message) or attempt == RESTORE_RETRIES - 1:
                        return message
                    time.sleep(RESTORE_RETRY_DELAY)
        finally:
            watchdog.cancel()
        return "unreachable"

    @staticmethod
    def _stop_quietly(container: Container) -> None:
        with contextlib.suppress(docker.errors.APIError):
            container.reload()
            if container.status in ("running", "paused", "restarting"):
                container.stop(timeout=STOP_TIMEOUT)

    def _discard_now(self, target: CheckpointTarget) -> None:
        _remove_images(target.checkpoint_dir, keep=None)
        self.store.update(
            target.user, lambda h: dataclasses.replace(h, checkpoint=None, container=None)
        )


def _docker_root(client: docker.DockerClient, container: Container) -> Path:
    """The daemon's ``DockerRootDir`` (with ``--userns-remap``, the remapped root's directory in
    the data-root), read from where dockerd keeps the container's own files
    (``<root>/containers/<id>/hostname``) instead of asking ``/info``, which costs a restore
    about 12 ms; ``/info`` only when that path is not of this shape."""
    cid = id_of(container)
    path = Path(str(container.attrs.get("HostnamePath") or ""))
    if path.is_absolute() and path.name == "hostname" and path.parent.name == cid:
        if path.parent.parent.name == "containers":
            return path.parent.parent.parent
    return Path(client.info()["DockerRootDir"])


def _restore_evidence(
    target: CheckpointTarget,
    container_id: str,
    before: Mapping[int, ProcessMark],
    after: Mapping[int, ProcessMark],
    restored_by: int,
) -> str:
    """Recorded and found tokens and start times (a process started long before the restore
    answered was not created by it), and CRIU's restore log if containerd kept one (it removes
    the log after a restore it considers successful)."""
    lines = [f"restore answered at boot tick {restored_by}"]
    for pid in sorted(set(before) | set(after))[:8]:
        b, a = before.get(pid), after.get(pid)
        lines.append(
            f"  pid {pid}: recorded {b.comm if b else '-'} {b.token[:8] if b else '-'}, "
            f"now {a.comm if a else '-'} {a.token[:8] if a else '-'} started at tick "
            f"{a.started if a else '-'}"
        )
    exec_root = Path(_socket_path(target.docker_url)).parent
    logs = sorted(exec_root.glob(f"containerd/daemon/*/*/{container_id}/work/restore.log"))
    if logs:
        lines.append(f"CRIU restore log {logs[0]}:")
        lines.append(criu_log_excerpt(logs[0].read_text(errors="replace"), lines=6))
    return "\n".join(lines)


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message", response.text))
    except ValueError:
        return response.text


def _write_fingerprint(images: Path, container_id: str, marks: Mapping[int, ProcessMark]) -> None:
    data = {
        "container": container_id,
        "processes": [dataclasses.asdict(m) for m in marks.values()],
    }
    # written and read from <workspace-dir> down without following a link (safefs)
    safefs.write_atomic(
        images / FINGERPRINT_FILE, json.dumps(data), mode=0o600, base=images.parents[2]
    )


def _read_fingerprint(images: Path, container_id: str) -> dict[int, ProcessMark]:
    data = json.loads(safefs.read_text(images / FINGERPRINT_FILE, base=images.parents[2]))
    if data.get("container") != container_id:
        raise ValueError(f"fingerprint belongs to container {data.get('container')}")
    return {p["nspid"]: ProcessMark(**p) for p in data["processes"]}
