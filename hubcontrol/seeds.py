"""Seed data-roots: one docker data-root per template image, cloned copy-on-write for new users.

Without seeds every new user's daemon gets the template image by ``docker save | docker load``,
which costs the same for every user and grows with the image (11.6 s for 600 MB, minutes for
the 1-10 GB images development teams use). With seeds, the hub loads each template image once
into a **seed**: the data-root of a short-lived dockerd of the same binary, storage driver and
options as a user's daemon (``supervisor.daemon_config``), stopped once the image is in. A new
user's empty data-root is then a clone of the seed, which takes constant time:

* ``snapshot`` when ``<workspace-dir>`` is on BTRFS: ``btrfs subvolume snapshot`` (0.5 s for a
  600 MB seed here; the clone shares every extent until the user's daemon writes);
* ``reflink`` where ``cp --reflink=always`` works (XFS, other reflink filesystems): a file-level
  copy-on-write copy (metadata time, no data copied);
* elsewhere nothing is seeded: the image step loads the image as before (the measured fallback,
  docs/performance.md).

Layout, all root's (``<workspace-dir>`` is root's 0700; names starting with ``.`` are the hub's,
never a user's safe name, ``hubcontrol.names``)::

    <workspace-dir>/.seeds/                         0700
    <workspace-dir>/.seeds/<hex id>/                a complete seed (a read-only subvolume on BTRFS)
    <workspace-dir>/.seeds/<hex id>.lock            flock: exclusive to build or remove, shared to clone
    <workspace-dir>/.seeds/<hex id>.layers.json     the image's layer members in ``docker save``
    <workspace-dir>/.seeds/.build-<hex id>-<token>/ a build in progress: data/ and the daemon's files
    <workspace-dir>/.seeds/wanted.json              image IDs the hub's templates use now (hub gc)

A seed is built into ``.build-*/data`` and renamed to ``<hex id>`` only once its daemon has the
image and has stopped, under the exclusive lock: a seed by its final name is always complete, and
a half-built one (a crash) is only ever a ``.build-*`` directory, removed by the next build of
that image or by ``hub gc``. No user's environment, daemon or bind mount ever reaches ``.seeds``:
the user's daemon runs on its own clone, and the socket policy binds only the user's workspace.

When: at hub start and whenever a template's image on the host daemon changes (``Seeds.run``
looks every ``CHECK_INTERVAL`` seconds), in the background. A new user who arrives while their
template's seed is being built waits for that build rather than loading the image themselves:
the build is the one load their own would have been, and every user arriving meanwhile shares it
(16 users at once otherwise make 16 loads). A build that fails, or an image the host daemon does
not have (pulled from a registry), leaves users on the fallback.

Seeds serve new users. A returning user whose daemon lacks a template's new image gets only the
layers it lacks (``images.update``); the seed build records the image's layer members for that.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import docker

from hubcontrol import images, network, safefs, storage
from hubcontrol.errors import HubError, ImageError
from hubcontrol.netids import NetIdRegistry
from hubcontrol.supervisor import DaemonSpec, DaemonSupervisor, Limits

if TYPE_CHECKING:
    from hubcontrol.config import Template
    from hubcontrol.hub import Hub
    from hubcontrol.records import UserRecord

log = logging.getLogger(__name__)

SEEDS_DIR = ".seeds"
WANTED = "wanted.json"
BUILD_PREFIX = ".build-"
CHECK_INTERVAL = 10.0  # seconds between looks at the templates' images on the host daemon
LOAD_TIMEOUT = 1800  # seconds a seed daemon may take to answer a load of a very large image
# The seed daemon is configured as a user's daemon is, on a network ID of its own claimed from
# the host-wide registry for the build's life (a bridge rdh<id>, the user network options): a
# daemon without a bridge of its own ("bridge": "none") deletes the host's docker0 at start.
# What a stopped seed daemon leaves that is that daemon's, not the image's; the user's daemon
# makes its own (its networks, its containerd state, its build cache).
DAEMON_STATE = ("network", "containers", "tmp", "runtimes", "swarm", "buildkit", "containerd",
                "plugins", "engine-id")  # fmt: skip


class SeedError(HubError):
    """Raised when a seed cannot be built or cloned (the start then loads the image itself)."""


# -- pure decisions --------------------------------------------------------------------------


def clone_method(filesystem: str, reflink: bool) -> str | None:
    """How data-roots are cloned on ``<workspace-dir>``'s filesystem: "snapshot" on BTRFS,
    "reflink" where ``cp --reflink=always`` works, else None (no seeds: load the image)."""
    if filesystem == "btrfs":
        return "snapshot"
    if reflink:
        return "reflink"
    return None


def hex_id(image_id: str) -> str:
    """``sha256:<hex>`` -> ``<hex>``; ValueError for anything else (it becomes a path)."""
    value = image_id.removeprefix("sha256:")
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"{image_id!r} is not an image ID")
    return value


def seed_verdict(hexid: str, wanted: set[str] | None, busy: bool) -> tuple[bool, str]:
    """Whether ``hub gc`` removes the seed ``hexid``: (remove, reason for a person).
    ``wanted`` None: no hub has recorded what its templates use, so every seed is kept."""
    if busy:
        return False, "being built or cloned"
    if wanted is None:
        return False, f"no {WANTED}: the hub has not recorded which seeds its templates use"
    if hexid in wanted:
        return False, "a configured template's image"
    return True, "no configured template uses this image"


# -- paths and locks -------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedPaths:
    """Where seeds live under one ``<workspace-dir>`` (see the module docstring)."""

    workspace_dir: Path

    @property
    def dir(self) -> Path:
        return Path(self.workspace_dir) / SEEDS_DIR

    def seed(self, hexid: str) -> Path:
        return self.dir / hexid

    def lock(self, hexid: str) -> Path:
        return self.dir / f"{hexid}.lock"

    @property
    def wanted(self) -> Path:
        return self.dir / WANTED

    def ensure(self) -> Path:
        """Make ``.seeds`` (root's, 0700) without following a link; returns it."""
        storage.secure_workspace_dir(self.workspace_dir, traversable=None)
        safefs.ensure_dir(self.workspace_dir, SEEDS_DIR, mode=0o700)
        return self.dir

    def seeds(self) -> list[str]:
        """The hex IDs of the complete seeds."""
        try:
            entries = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        found = []
        for name in entries:
            with contextlib.suppress(ValueError):
                hex_id(name)
                found.append(name)
        return sorted(found)

    def builds(self) -> list[Path]:
        """Leftover and running builds (``.build-*``)."""
        with contextlib.suppress(FileNotFoundError):
            return sorted(self.dir / n for n in os.listdir(self.dir) if n.startswith(BUILD_PREFIX))
        return []

    def read_wanted(self) -> set[str] | None:
        try:
            data = json.loads(safefs.read_text(self.wanted, limit=1 << 20))
            return {hex_id(i) for i in data["images"]}
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write_wanted(self, image_ids: dict[str, list[str]]) -> None:
        """Record the image IDs (hex) the configured templates use, with the templates' names."""
        text = json.dumps({"images": image_ids, "updated_at": time.time()}, indent=2) + "\n"
        safefs.write_atomic(self.wanted, text, mode=0o600)


@contextlib.contextmanager
def seed_lock(path: Path, *, exclusive: bool, blocking: bool = True) -> Iterator[bool]:
    """Hold the flock ``path`` (created root's 0600, never through a link). Yields False when
    ``blocking`` is False and someone else holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        flags = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, flags)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def busy(paths: SeedPaths, hexid: str) -> bool:
    """True while a build, a clone or a removal holds the seed's lock."""
    if not os.path.lexists(paths.lock(hexid)):
        return False
    with seed_lock(paths.lock(hexid), exclusive=True, blocking=False) as got:
        return not got


# -- the filesystem work (blocking) ----------------------------------------------------------


def reflink_works(directory: Path) -> bool:
    """Whether ``cp --reflink=always`` works in ``directory`` (tried on a small file)."""
    probe = Path(directory) / f".reflink-probe-{secrets.token_hex(4)}"
    try:
        probe.write_bytes(b"seed")
        done = subprocess.run(
            ["cp", "--reflink=always", str(probe), f"{probe}.copy"], capture_output=True
        )
        return done.returncode == 0
    except OSError:
        return False
    finally:
        for p in (probe, Path(f"{probe}.copy")):
            p.unlink(missing_ok=True)


def detect_method(paths: SeedPaths) -> str | None:
    """``clone_method`` for this workspace dir (makes ``.seeds`` to try a reflink there)."""
    directory = paths.ensure()
    fs = storage.filesystem_type(directory)
    return clone_method(fs, fs != "btrfs" and reflink_works(directory))


def _run(*argv: str) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True)
    if done.returncode != 0:
        raise SeedError(
            "The hub could not prepare your storage.",
            f"{' '.join(argv)}: {done.stderr.strip() or f'exit {done.returncode}'}",
        )


def delete_tree(path: Path) -> None:
    """Remove a seed, a build or a cloned data-root: BTRFS subvolumes (read-only ones too) with
    ``btrfs subvolume delete``, the rest without following links."""
    path = Path(path)
    if safefs.is_link(path):
        path.unlink()
        return
    if not os.path.lexists(path):
        return
    storage.unmount_under(path)
    if storage.is_subvolume(path):
        done = subprocess.run(["btrfs", "subvolume", "delete", str(path)], capture_output=True)
        if done.returncode == 0:
            return
    if storage.filesystem_type(path) == "btrfs":
        for inner in _subvolumes_below(path):  # a build's data/; deleted whole, not walked
            _run("btrfs", "subvolume", "delete", str(inner))
    if storage.is_subvolume(path):
        _run("btrfs", "subvolume", "delete", str(path))
    else:
        safefs.remove_tree(path)


def _subvolumes_below(path: Path) -> list[Path]:
    """The subvolumes strictly below ``path``, not looking inside them."""
    found = []
    for root, dirs, _files in os.walk(path):
        for d in list(dirs):
            p = Path(root, d)
            if os.path.islink(p) or os.lstat(p).st_ino == 256:
                dirs.remove(d)
                if not os.path.islink(p):
                    found.append(p)
    return found


def strip_daemon_state(data_root: Path) -> None:
    """Remove what belongs to the seed daemon rather than to its images (``DAEMON_STATE``)."""
    for name in DAEMON_STATE:
        target = Path(data_root) / name
        if os.path.lexists(target):
            safefs.remove_tree(target)


def build_seed(
    paths: SeedPaths,
    image: str,
    want: str,
    *,
    host: docker.DockerClient,
    supervisor: DaemonSupervisor,
    method: str,
    netids: NetIdRegistry,
    subnet_pool: str,
    reserved: frozenset[int] = frozenset(),
    layers: images.LayerIndex | None = None,
    abort: threading.Event | None = None,
) -> Path:
    """Build the seed of ``image`` (ID ``want`` on ``host``) unless it exists; returns its path.

    Under the seed's exclusive lock: a seed daemon on ``.build-<hex id>-<token>/data`` gets the
    image from ``host``, stops, loses its own state, and the data-root is renamed to the seed's
    name. ``abort`` set (the hub is shutting down) stops the seed daemon, which ends the load.
    Raises SeedError (the build is removed) when anything fails."""
    hexid = hex_id(want)
    paths.ensure()
    with seed_lock(paths.lock(hexid), exclusive=True):
        final = paths.seed(hexid)
        if os.path.isdir(final):
            return final
        for stale in paths.builds():  # we hold the lock: an earlier build of this ID is dead
            if build_image(stale) == hexid:
                delete_tree(stale)
        token = secrets.token_hex(4)
        build = paths.dir / f"{BUILD_PREFIX}{hexid}-{token}"
        os.mkdir(build, 0o700)
        data = build / "data"
        try:
            net_id = netids.allocate(build, reserved=reserved)
            try:
                _build_in(build, data, image, want, net_id, host, supervisor, method,
                          subnet_pool, layers, abort)  # fmt: skip
            finally:
                netids.release(net_id, build)
            os.rename(data, final)
            if method == "snapshot":  # nothing writes to a seed; a clone is writable
                subprocess.run(["btrfs", "property", "set", "-ts", str(final), "ro", "true"],
                               capture_output=True)  # fmt: skip
        except BaseException:
            with contextlib.suppress(Exception):
                delete_tree(build)
            raise
        delete_tree(build)  # the seed daemon's log, config and pidfile
        log.info("seed of %s (%s) built: %s", image, want, final)
        return final


def _build_in(
    build: Path,
    data: Path,
    image: str,
    want: str,
    net_id: int,
    host: docker.DockerClient,
    supervisor: DaemonSupervisor,
    method: str,
    subnet_pool: str,
    layers: images.LayerIndex | None,
    abort: threading.Event | None,
) -> None:
    """The seed daemon's life: its data-root, bridge and daemon made, the image loaded, all
    of the daemon's own undone, and its data-root stripped of the daemon's state."""
    net = network.user_network(net_id, subnet_pool)
    spec = DaemonSpec(
        user=f".seed-{build.name.rsplit('-', 1)[1]}",  # a leading "." is never a safe name
        net_id=net_id,
        data_root=data,
        daemon_dir=build,  # its config, pidfile, TMPDIR and log beside data/, as a user's
        network_config=network.daemon_network_config(net),
        limits=Limits(),
        env_socket=False,
    )
    if method == "snapshot":
        _run("btrfs", "subvolume", "create", str(data))
        os.chmod(data, 0o710)
    else:
        os.mkdir(data, 0o710)
    network.ensure_bridge(net.bridge, net.bridge_address)
    try:
        _load_into_seed(spec, image, want, host, supervisor, layers, abort)
    finally:
        network.delete_link(net.bridge)
    strip_daemon_state(data)


def _load_into_seed(
    spec: DaemonSpec,
    image: str,
    want: str,
    host: docker.DockerClient,
    supervisor: DaemonSupervisor,
    layers: images.LayerIndex | None,
    abort: threading.Event | None,
) -> None:
    finished = threading.Event()

    def stop_on_abort() -> None:
        while not finished.wait(0.2):
            if abort is not None and abort.is_set():
                with contextlib.suppress(Exception):
                    supervisor.stop(spec, timeout=5.0)
                return

    watcher = threading.Thread(target=stop_on_abort, name="seed-abort", daemon=True)
    try:
        supervisor.start(spec)
        watcher.start()
        client = docker.DockerClient(base_url=spec.url, version="1.41", timeout=LOAD_TIMEOUT)
        try:
            images.transfer(host, client, image, layers=layers)
            got = images.image_id(client, image)
        finally:
            client.close()
        if abort is not None and abort.is_set():
            raise SeedError("The hub is stopping.", f"seed build of {image} aborted")
        if got != want:
            raise SeedError(
                "The environment image changed while it was prepared; please retry.",
                f"seed of {image}: the host daemon's image became {got} while {want} was loaded",
            )
    except (docker.errors.DockerException, ImageError, OSError) as e:
        raise SeedError(
            "The environment image could not be prepared.", f"seed of {image}: {e}"
        ) from e
    finally:
        finished.set()
        try:
            supervisor.stop(spec)
        finally:
            with contextlib.suppress(OSError):
                storage.unmount_under(spec.exec_root)
                shutil.rmtree(spec.exec_root, ignore_errors=True)


def clone_seed(paths: SeedPaths, hexid: str, data_root: Path, method: str) -> None:
    """Make the empty directory ``data_root`` a clone of the seed ``hexid``, holding the seed's
    shared lock so ``hub gc`` cannot remove it meanwhile. SeedError when the seed is gone or the
    clone fails; ``data_root`` is then an empty directory again."""
    data_root = Path(data_root)
    with seed_lock(paths.lock(hexid), exclusive=False):
        seed = paths.seed(hexid)
        if not os.path.isdir(seed):
            raise SeedError("The environment image is not prepared.", f"seed {seed} is gone")
        if os.listdir(data_root):
            raise SeedError("Your storage is not empty.", f"{data_root} is not empty")
        mode = os.stat(data_root).st_mode & 0o7777
        try:
            if method == "snapshot":
                os.rmdir(data_root)
                _run("btrfs", "subvolume", "snapshot", str(seed), str(data_root))
                os.chmod(data_root, mode)
            else:
                _run("cp", "-a", "--reflink=always", f"{seed}/.", str(data_root))
        except BaseException:
            with contextlib.suppress(Exception):
                if os.path.lexists(data_root):
                    delete_tree(data_root)
                os.mkdir(data_root, mode)
            raise


def is_empty(directory: Path) -> bool:
    try:
        with os.scandir(directory) as entries:
            return next(entries, None) is None
    except FileNotFoundError:
        return True


def remove_seed(paths: SeedPaths, hexid: str) -> bool:
    """Remove the seed ``hexid`` (and its lock and layer record) unless it is busy; True when
    removed. The caller decided it is unused; the lock is taken without waiting."""
    lock = paths.lock(hexid)
    with seed_lock(lock, exclusive=True, blocking=False) as got:
        if not got:
            return False
        delete_tree(paths.seed(hexid))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(paths.dir / f"{hexid}.layers.json")
        # the lock file stays: one removed under a waiter would let two holders meet
    return True


def build_image(build: Path) -> str | None:
    """The hex image ID of a build directory ``.build-<hex id>-<token>`` (None: not one)."""
    name = Path(build).name
    if not name.startswith(BUILD_PREFIX):
        return None
    hexid = name[len(BUILD_PREFIX) :].rsplit("-", 1)[0]
    try:
        return hex_id(hexid)
    except ValueError:
        return None


def remove_build(paths: SeedPaths, build: Path) -> bool:
    """Remove a build that did not finish (the hub stopped or crashed during it) unless one is
    running: a running build holds its image's exclusive lock for its whole life. True when
    removed."""
    hexid = build_image(build)
    if hexid is None:
        return False
    with seed_lock(paths.lock(hexid), exclusive=True, blocking=False) as got:
        if not got:
            return False
        delete_tree(build)
    return True


# -- the hub's service ------------------------------------------------------------------------


@dataclass
class _Build:
    done: anyio.Event
    result: Path | None = None


class Seeds:
    """The hub's seeds: built ahead (``run``, one of the hub's services) and cloned into a new
    user's data-root (``provide``, from ``PerUserDaemon.prepare``)."""

    def __init__(self, hub: Hub, interval: float = CHECK_INTERVAL) -> None:
        self.hub = hub
        self.interval = interval
        self.paths = SeedPaths(Path(hub.config.workspace_dir))
        self.layers = images.LayerIndex()
        self._method: str | None = None
        self._detected = False
        self._builds: dict[str, _Build] = {}
        self._failed: dict[str, float] = {}  # hex ID -> when its build last failed
        self._wanted: dict[str, list[str]] | None = None  # what wanted.json says now

    @classmethod
    def attach(cls, hub: Hub) -> Seeds | None:
        """A Seeds service for ``hub`` when a template uses per-user daemons, else None."""
        if not any(t.per_user_docker for t in hub.config.templates.values()):
            return None
        seeds = cls(hub)
        hub.add_service(seeds.run)
        return seeds

    async def method(self) -> str | None:
        """The clone method of this workspace dir (detected once)."""
        if not self._detected:
            self._method = await self.hub.engine.call(detect_method, self.paths)
            self._detected = True
            if self._method is not None:
                self.layers.directory = self.paths.dir
            log.info(
                "seed data-roots: %s",
                f"cloned by {self._method}"
                if self._method
                else "off (no snapshots or reflinks "
                f"on {self.paths.workspace_dir}: each new user loads the image)",
            )
        return self._method

    async def run(self) -> None:
        """Build every per-user template's seed ahead, then again whenever its image changes."""
        while True:
            try:
                await self.refresh()
            except (HubError, OSError, docker.errors.DockerException) as e:
                log.warning("seed data-roots: %s", getattr(e, "log_message", e))
            except Exception:  # a seed is an optimisation: never take the hub down for it
                log.exception("seed data-roots")
            await anyio.sleep(self.interval)

    async def refresh(self) -> None:
        """Record which images the templates use now, then build the seeds that are missing."""
        host = self.hub._host_client()
        if host is None or await self.method() is None:
            return
        wanted: dict[str, list[str]] = {}
        refs: dict[str, str] = {}
        for tpl in self.hub.config.templates.values():
            if not tpl.per_user_docker or not tpl.image:
                continue
            want = await self.hub.engine.call(images.image_id, host, tpl.image)
            if want is None:
                continue
            wanted.setdefault(hex_id(want), []).append(tpl.name)
            refs[want] = tpl.image
        if wanted != self._wanted:  # written when it changes (and once per hub process)
            await self.hub.engine.call(self.paths.write_wanted, wanted)
            self._wanted = wanted
        for want, image in refs.items():
            if time.monotonic() - self._failed.get(hex_id(want), -1e9) > 10 * self.interval:
                await self.seed(image, want)

    async def seed(self, image: str, want: str) -> Path | None:
        """The seed of ``image`` (ID ``want``): there, or built now (others asking meanwhile
        wait for the same build). None when it cannot be built (logged)."""
        hexid = hex_id(want)
        path = self.paths.seed(hexid)
        if await self.hub.engine.call(os.path.isdir, path):
            return path
        build = self._builds.get(hexid)
        if build is not None:
            await build.done.wait()
            return build.result
        build = self._builds[hexid] = _Build(anyio.Event())
        try:
            build.result = await self._build(image, want)
            self._failed.pop(hexid, None)
        except (HubError, OSError, docker.errors.DockerException) as e:
            self._failed[hexid] = time.monotonic()
            log.error("seed of %s not built: %s", image, getattr(e, "log_message", e))
        except Exception:
            self._failed[hexid] = time.monotonic()
            log.exception("seed of %s not built", image)
        finally:
            build.done.set()
            del self._builds[hexid]
        return build.result

    async def _build(self, image: str, want: str) -> Path:
        abort = threading.Event()
        method = await self.method()
        host = self.hub._host_client()
        if method is None or host is None:
            raise SeedError("Seeds are off.", "no clone method or no host daemon")
        started = time.monotonic()

        async def abort_when_cancelled() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                abort.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(abort_when_cancelled)
            try:
                path = await self.hub.engine.call(
                    build_seed, self.paths, image, want, host=host,
                    supervisor=self.hub.supervisor, method=method, netids=self.hub.netids,
                    subnet_pool=self.hub.config.user_subnet_pool,
                    reserved=self.hub._reserved(), layers=self.layers, abort=abort,
                )  # fmt: skip
            finally:
                tg.cancel_scope.cancel()
        log.info("seed of %s ready in %.1f s", image, time.monotonic() - started)
        return path

    async def provide(self, rec: UserRecord, template: Template, spec: DaemonSpec) -> str | None:
        """Clone the seed of ``template``'s image into ``spec.data_root`` when that data-root
        is empty (a new user, or one whose data was removed); returns the clone method, or None
        when nothing was cloned (the image step then loads the image). Waits for a seed that is
        being built. Never raises for a seed problem: the fallback is always there."""
        call = self.hub.engine.call
        if not template.image or not await call(is_empty, spec.data_root):
            return None
        method = await self.method()
        host = self.hub._host_client()
        if method is None or host is None:
            return None
        try:
            want = await call(images.image_id, host, template.image)
        except docker.errors.DockerException:
            return None
        if want is None:
            return None
        hexid = hex_id(want)
        if time.monotonic() - self._failed.get(hexid, -1e9) < 10 * self.interval:
            return None  # its build failed just now: load the image rather than wait again
        if not await call(os.path.isdir, self.paths.seed(hexid)):
            self.hub._step(rec, "daemon", f"Preparing {template.image} once for every user of it")
        if await self.seed(template.image, want) is None:
            return None
        self.hub._step(rec, "daemon", "Starting your Docker daemon")
        try:
            await call(clone_seed, self.paths, hexid, spec.data_root, method)
        except (SeedError, OSError) as e:
            log.error("clone of seed %s for %s failed: %s", hexid[:12], rec.name,
                      getattr(e, "log_message", e))  # fmt: skip
            return None
        log.info("data-root of %s cloned from seed %s (%s)", rec.name, hexid[:12], method)
        return method
