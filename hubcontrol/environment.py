"""Environment containers: built from a template, on the user's daemon, at SERVICE_IP.

Pure decisions (command expansion, the container's create options) are module-level functions;
the rest are small blocking operations the hub runs in worker threads.
"""

from __future__ import annotations

import io
import os
import posixpath
import secrets
import tarfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container

from hubcontrol import network, shells
from hubcontrol.audit import HUB_ACTIONS
from hubcontrol.config import HubConfig, Template
from hubcontrol.errors import EnvironmentError_, HookError, NetworkError
from hubcontrol.network import UserNetwork
from hubcontrol.storage import CHECKPOINT_DIR

ENV_SOCKET_MOUNT = "/run/rediacc/env"  # where the env dir (with docker.sock) appears inside
LABEL_USER = "rediacc.hub.user"
LABEL_SAFE = "rediacc.hub.safe-name"
LABEL_TEMPLATE = "rediacc.hub.template"
LABEL_ROLE = "rediacc.hub.role"
LABEL_NET_ID = "rediacc.hub.net-id"
LABEL_MODE = "rediacc.hub.mode"
# The shell (absolute path) the command runs with and hooks run with, chosen from the image's
# files when the container is created (hubcontrol.shell).
LABEL_SHELL = "rediacc.hub.shell"
ROLE = "environment"
DROPPED_CAPABILITIES = frozenset({"MKNOD"})  # from Docker's default set, unless cap_add has them


@dataclass(frozen=True)
class Environment:
    """A user's environment as ``ensure_running`` returns it."""

    user: str  # the username as the OAuth provider gave it
    name: str  # its safe name
    template: str
    net_id: int
    service_ip: str
    ports: Mapping[str, int] = field(default_factory=dict)  # route prefix -> port
    state: str = "running"
    container_id: str = ""
    docker_url: str = ""  # the daemon the environment runs on
    per_user_docker: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "ports", MappingProxyType(dict(self.ports)))


def container_name(safe: str) -> str:
    return f"hub-{safe}"


def expand_command(command: str, service_ip: str) -> str:
    """Expand ``${SERVICE_IP}`` and ``__SERVICE_IP__`` (the seed's two spellings)."""
    return command.replace("${SERVICE_IP}", service_ip).replace("__SERVICE_IP__", service_ip)


def labels(
    username: str, safe: str, template: Template, net_id: int, shell: str | None = None
) -> dict[str, str]:
    out = {
        LABEL_USER: username,
        LABEL_SAFE: safe,
        LABEL_TEMPLATE: template.name,
        LABEL_ROLE: ROLE,
        LABEL_NET_ID: str(net_id),
        LABEL_MODE: template.mode,
    }
    if shell:
        out[LABEL_SHELL] = shell
    return out


def needs_shell(template: Template) -> bool:
    """Whether anything of ``template`` runs through a shell (its command or a hook)."""
    return any((template.command, template.on_create, template.pre_dump, template.post_restore))


def container_cpus(cpus: float | None, available: int) -> float | None:
    """The container's CPUs (NanoCPUs) for a template asking for ``cpus``, on a host with
    ``available`` CPUs.

    docker refuses more CPUs than the host has ("Range of CPUs is from 0.01 to 2.00"), so the
    seed's Jupyter example (``rediacc.hub.limits.cpu=400%``) could not start on a 2-core host. A
    quota above the host's CPUs limits nothing, so it is capped at ``available``; the user's
    cgroup keeps the quota as written (``Limits.cpu``), which the kernel accepts at any size.
    """
    if not cpus:
        return cpus
    return min(cpus, float(max(1, available)))


def create_options(
    *,
    username: str,
    safe: str,
    template: Template,
    net: UserNetwork,
    network_name: str,
    workspace: Path | None,
    env_dir: Path | None,
    cgroup_parent: str | None,
    cpus: float | None,
    memory: int | None,
    owner: tuple[int, int] | None = None,
    shell: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``docker.APIClient.create_container`` minus ``host_config`` objects.

    Returns ``{"container": {...}, "host": {...}, "endpoint": {...}}`` so the caller builds the
    host config and networking config with the API client of the target daemon. ``shell`` is the
    image's shell (``probe_image``) the command runs with, recorded for the hooks; a template with
    a command needs one.
    """
    service_ip = str(net.service_ip)
    mounts = []
    tmpfs = {}
    if template.ephemeral or workspace is None:
        # docker copies the image directory's mode onto a tmpfs (so "mode=" is lost): own it
        uid, gid = owner or (0, 0)
        tmpfs[template.workspace] = f"exec,uid={uid},gid={gid}"
    else:
        mounts.append(f"{workspace}:{template.workspace}:rw")
    # An empty read-only tmpfs over the checkpoint images, which CRIU restores as root.
    tmpfs[f"{template.workspace.rstrip('/')}/{CHECKPOINT_DIR}"] = "ro,size=4k,mode=0555"
    environment = {"SERVICE_IP": service_ip}
    if env_dir is not None:
        mounts.append(f"{env_dir}:{ENV_SOCKET_MOUNT}:ro")
        environment["DOCKER_HOST"] = f"unix://{ENV_SOCKET_MOUNT}/docker.sock"
    container = {
        "image": template.image,
        "name": container_name(safe),
        "user": template.user,
        "working_dir": template.workspace,
        "hostname": safe[:63],
        "labels": labels(username, safe, template, net.net_id, shell),
        "environment": environment,
        "detach": True,
    }
    if template.command:
        if not shell:
            raise ValueError("a template with a command needs the image's shell (probe_image)")
        container["entrypoint"] = [shell, "-c"]
        container["command"] = [expand_command(template.command, service_ip)]
    # CAP_MKNOD is Docker's default, but nothing in a development environment needs device
    # nodes, and one made in the workspace is a file on the host (docs/security.md, "The
    # environment container"); a template that needs it asks with rediacc.hub.cap_add=MKNOD.
    caps = set(template.cap_add)
    host = {
        "binds": mounts,
        "cap_drop": sorted(DROPPED_CAPABILITIES - caps),
        "tmpfs": tmpfs,
        "shm_size": template.shm_size,
        "init": True,
        "restart_policy": {"Name": "no"},
        "auto_remove": False,
    }
    if caps:
        host["cap_add"] = sorted(caps)
    if cgroup_parent:
        host["cgroup_parent"] = cgroup_parent
    if cpus:
        host["nano_cpus"] = int(cpus * 1e9)
    if memory:
        host["mem_limit"] = memory
    endpoint = {"network": network_name, "ipv4_address": service_ip}
    return {"container": container, "host": host, "endpoint": endpoint}


def ensure_env_network(client: docker.DockerClient, net: UserNetwork) -> str:
    """The environment network (``rdh<net_id>e``) in ``client``'s daemon, created if missing."""
    name = net.env_bridge
    for existing in client.networks.list(names=[name]):
        if existing.name != name:
            continue
        configs = (existing.attrs.get("IPAM") or {}).get("Config") or []
        if not any(c.get("Subnet") == str(net.env_subnet) for c in configs):
            why = (
                f"it has {configs}, expected subnet {net.env_subnet} (two hubs with different "
                "--user-subnet-pool on one daemon?)"
            )
        elif network.link_exists(name):
            return name
        else:
            # The daemon keeps a network whose bridge was deleted under it: on the host daemon
            # (a template without a per-user daemon), `hub gc` deletes a released network ID's
            # bridges, and the host daemon lives on. No container could join it again.
            why = f"its bridge {name} no longer exists"
        existing.reload()
        if existing.attrs.get("Containers"):
            raise NetworkError(
                "Your environment network is misconfigured; ask the operator.",
                f"network {name} has attached containers, but {why}",
            )
        # left over from an earlier owner of this network ID (another pool, or its bridge gone
        # with it): replace it
        existing.remove()
    ipam = docker.types.IPAMConfig(
        pool_configs=[
            docker.types.IPAMPool(subnet=str(net.env_subnet), gateway=str(net.env_gateway))
        ]
    )
    try:
        client.networks.create(
            name,
            driver="bridge",
            ipam=ipam,
            options={"com.docker.network.bridge.name": name},
            labels={LABEL_ROLE: "environment-network", LABEL_NET_ID: str(net.net_id)},
            check_duplicate=True,
        )
    except docker.errors.APIError as e:
        raise NetworkError(
            "The hub could not create your environment network.",
            f"creating network {name} ({net.env_subnet}): {e}",
        ) from None
    return name


def remove_env_network(client: docker.DockerClient, net: UserNetwork) -> None:
    for existing in client.networks.list(names=[net.env_bridge]):
        if existing.name == net.env_bridge:
            try:
                existing.remove()
            except docker.errors.NotFound:
                pass


def find(client: docker.DockerClient, safe: str) -> Container | None:
    """The environment container of ``safe`` on this daemon, or None."""
    try:
        return client.containers.get(container_name(safe))
    except docker.errors.NotFound:
        return None


def create(client: docker.DockerClient, options: dict[str, Any]) -> str:
    api = client.api
    host_config = api.create_host_config(**options["host"])
    endpoint = options["endpoint"]
    # types-docker says one EndpointConfig; docker-py takes {network name: EndpointConfig}
    networking = api.create_networking_config(
        {endpoint["network"]: api.create_endpoint_config(ipv4_address=endpoint["ipv4_address"])}  # type: ignore[arg-type]
    )
    try:
        # the audit trail tells the hub's container from users' by its ID (audit.HubActions)
        with HUB_ACTIONS.creating(options["container"]["name"]):
            created = api.create_container(
                **options["container"], host_config=host_config, networking_config=networking
            )
            HUB_ACTIONS.container_created(created["Id"])
    except docker.errors.APIError as e:
        raise EnvironmentError_(
            "Your environment could not be created.",
            f"create {options['container']['name']} from {options['container']['image']}: {e}",
        ) from None
    return str(created["Id"])


def install_socket_link(client: docker.DockerClient, container_id: str) -> None:
    """``/var/run/docker.sock`` -> the env dir's socket, so unconfigured docker clients find it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("docker.sock")
        info.type = tarfile.SYMTYPE
        info.linkname = f"{ENV_SOCKET_MOUNT}/docker.sock"
        tar.addfile(info)
    for directory in ("/var/run", "/run"):
        try:
            if client.api.put_archive(container_id, directory, buf.getvalue()):
                return
        except docker.errors.APIError:
            continue


def _read_file(client: docker.DockerClient, container_id: str, path: str) -> str:
    try:
        chunks, _ = client.api.get_archive(container_id, path)
    except docker.errors.APIError:
        return ""
    data = b"".join(chunks)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            if member.isfile():
                f = tar.extractfile(member)
                return f.read().decode(errors="replace") if f else ""
    return ""


def parse_user(spec: str, passwd: str, group: str) -> tuple[int, int] | None:
    """uid and gid of a docker ``--user`` value (``name``, ``uid``, ``name:group``, ``uid:gid``),
    looked up in the image's passwd and group files; None when the user is unknown."""
    name, _, grp = spec.partition(":")
    uid = gid = None
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and name in (fields[0], fields[2]) and fields[2].isdigit():
            uid, gid = int(fields[2]), int(fields[3])
            break
    if uid is None and name.isdigit():
        uid, gid = int(name), 0  # docker's default group for a uid without a passwd entry
    if uid is None or gid is None:  # (set together)
        return None
    if grp.isdigit():
        gid = int(grp)
    elif grp:
        for line in group.splitlines():
            fields = line.split(":")
            if len(fields) >= 3 and fields[0] == grp and fields[2].isdigit():
                gid = int(fields[2])
                break
        else:
            return None
    return uid, gid


@dataclass(frozen=True)
class ImageFacts:
    """What the hub reads from a template image's files before it creates an environment."""

    owner: tuple[int, int] | None  # uid and gid of the template's user; None when unknown
    shell: str | None  # hubcontrol.shell.choose_shell's pick; None when not asked or no shell


class ImageFactsCache:
    """``probe_image``'s answers by image ID: an image ID is the hash of the image's config,
    which names every layer's content, so the same ID means the same ``/etc/passwd``,
    ``/etc/group`` and shells, whichever daemon holds it. A probe creates a container and reads
    files out of it through the daemon; every new user of a template paid that, and 32 users
    logging in at once paid it 32 times over on a machine busy starting their daemons
    (bench/load.py). An image retagged in the user's daemon has another ID and is probed.
    Bounded: the oldest answers go first."""

    SIZE = 256

    def __init__(self) -> None:
        self._facts: dict[tuple[str, str, bool], ImageFacts] = {}
        self._lock = threading.Lock()

    def probe(
        self, client: docker.DockerClient, image: str, spec: str, *, want_shell: bool = True
    ) -> ImageFacts:
        try:
            image_id = client.api.inspect_image(image)["Id"]
        except docker.errors.ImageNotFound:
            image_id = None  # probe_image reports it the way it always has
        key = (image_id or "", spec, want_shell)
        if image_id:
            with self._lock:
                if (found := self._facts.get(key)) is not None:
                    return found
        facts = probe_image(client, image_id or image, spec, want_shell=want_shell)
        if image_id:
            with self._lock:
                self._facts[key] = facts
                while len(self._facts) > self.SIZE:
                    del self._facts[next(iter(self._facts))]
        return facts


def probe_image(
    client: docker.DockerClient, image: str, spec: str, *, want_shell: bool = True
) -> ImageFacts:
    """uid and gid of user ``spec`` in ``image`` and the shell commands and hooks run with, read
    from one created, never started, container (removed again)."""
    numeric = spec.partition(":")[0].isdigit() and spec.partition(":")[2].isdigit()
    if numeric and not want_shell:
        return ImageFacts(parse_user(spec, "", ""), None)
    name = f"rediacc-hub-probe-{secrets.token_hex(8)}"
    with HUB_ACTIONS.creating(name):
        probe = client.api.create_container(
            image, command=["true"], entrypoint=[], network_disabled=True, name=name
        )
        HUB_ACTIONS.container_created(probe["Id"])
    try:
        if numeric:
            owner = parse_user(spec, "", "")
        else:
            passwd = _read_file(client, probe["Id"], "/etc/passwd")
            group = _read_file(client, probe["Id"], "/etc/group")
            owner = parse_user(spec, passwd, group)
        shell = (
            shells.choose_shell(lambda p: _is_file(client, probe["Id"], p)) if want_shell else None
        )
    finally:
        client.api.remove_container(probe["Id"], force=True)
    return ImageFacts(owner, shell)


def template_facts(
    client: docker.DockerClient, template: Template, cache: ImageFactsCache | None = None
) -> ImageFacts:
    """``probe_image`` for ``template``: its user, and its shell when its command or a hook
    needs one. Raises EnvironmentError_ when one is needed and the image has none. With
    ``cache``, an image already probed (by its ID in this daemon) is not probed again."""
    wanted = needs_shell(template)
    if cache is None:
        facts = probe_image(client, template.image, template.user, want_shell=wanted)
    else:
        facts = cache.probe(client, template.image, template.user, want_shell=wanted)
    if wanted and facts.shell is None:
        raise EnvironmentError_(
            f"The image {template.image} has no shell, which this template's command and hooks "
            "need; ask the operator.",
            f"template {template.name}: image {template.image} has none of "
            f"{', '.join(shells.BASH_PATHS + shells.SH_PATHS)}; rediacc.hub.command and the "
            "hooks run with bash where the image has it, else sh",
        )
    return facts


def image_shell(client: docker.DockerClient, image: str) -> tuple[bool, str | None]:
    """(seen, shell) of ``image`` in ``client``'s daemon, never pulling it: (False, None) when
    the daemon does not have it, else whether and which shell ``probe_image`` finds."""
    try:
        client.api.inspect_image(image)
    except docker.errors.ImageNotFound:
        return False, None
    return True, probe_image(client, image, "0:0").shell


def template_shells(
    config: HubConfig, timeout: float = 10
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """For ``hub config check``: each template's shell as the hub will choose it, looked up in
    the host daemon (``--docker-socket``, where the hub takes images from) without pulling, and
    the warnings about commands and hooks (``shells.shell_warnings``).

    Returns ({template: {"image", "image_seen", "shell"}}, warnings)."""
    client = None
    why = ""
    try:
        if config.docker_url.startswith("unix://"):
            # a plain probe first, closed on every path: docker-py leaves the socket of a
            # refused unix connection to the garbage collector
            import socket as _socket

            with _socket.socket(_socket.AF_UNIX) as probe:
                probe.settimeout(timeout)
                probe.connect(config.docker_url[len("unix://") :])
        # types-docker says an int; docker-py hands it to requests, which takes float seconds
        client = docker.DockerClient(base_url=config.docker_url, version="1.41", timeout=timeout)  # type: ignore[arg-type]
        client.api.ping()
    except (docker.errors.DockerException, OSError) as e:
        why = f" (the daemon at {config.docker_socket} does not answer: {e})"
        if client is not None:
            client.close()
        client = None
    rows: dict[str, dict[str, Any]] = {}
    warnings: list[str] = []
    cache: dict[str, tuple[bool, str | None]] = {}
    try:
        for name, tpl in config.templates.items():
            if tpl.image not in cache:
                cache[tpl.image] = image_shell(client, tpl.image) if client else (False, None)
            seen, shell = cache[tpl.image]
            reason = why or f" (image {tpl.image} is not in the daemon at {config.docker_socket})"
            rows[name] = {"image": tpl.image, "image_seen": seen, "shell": shell}
            warnings += shells.shell_warnings(tpl, shell, seen, "" if seen else reason)
    finally:
        if client is not None:
            client.close()
    return rows, warnings


def resolve_user(client: docker.DockerClient, image: str, spec: str) -> tuple[int, int] | None:
    """uid and gid of ``spec`` in ``image`` (read from a created, never started, container)."""
    return probe_image(client, image, spec, want_shell=False).owner


_MODE_DIR = 1 << 31  # Go's fs.ModeDir and fs.ModeSymlink, as the archive stat header carries them
_MODE_SYMLINK = 1 << 27


def _stat(client: docker.DockerClient, container_id: str, path: str) -> dict[str, Any] | None:
    """The daemon's stat of ``path`` in the container (``HEAD /containers/{id}/archive``: the
    parents' links resolved, the last component not); None when it does not exist."""
    api = client.api
    # docker-py has no HEAD for the archive endpoint; get_archive would stream the whole file
    # (_url is docker-py's own versioned-URL builder, private but stable since 1.x)
    res = api.head(api._url("/containers/{0}/archive", container_id), params={"path": path})  # type: ignore[attr-defined]
    with res:
        if res.status_code != 200:
            return None
        header = res.headers.get("X-Docker-Container-Path-Stat")
        return docker.utils.decode_json_header(header) if header else None


def _is_file(client: docker.DockerClient, container_id: str, path: str, hops: int = 8) -> bool:
    """Whether ``path`` in the container is (a link to) a file, e.g. ``/bin/sh -> busybox``."""
    for _ in range(hops):
        stat = _stat(client, container_id, path)
        if stat is None:
            return False
        mode = int(stat.get("mode") or 0)
        if not mode & _MODE_SYMLINK:
            return not mode & _MODE_DIR
        target = stat.get("linkTarget") or ""
        if not target:
            return False
        path = target if target.startswith("/") else posixpath.join(posixpath.dirname(path), target)
    return False


def container_shell(client: docker.DockerClient, container_id: str) -> str | None:
    """The shell recorded on the container (``LABEL_SHELL``); for containers made before it was
    recorded, chosen from the container's files the same way."""
    info = client.api.inspect_container(container_id)
    recorded = ((info.get("Config") or {}).get("Labels") or {}).get(LABEL_SHELL)
    if recorded in (*shells.BASH_PATHS, *shells.SH_PATHS):  # not another value an image set
        return str(recorded)
    return shells.choose_shell(lambda p: _is_file(client, container_id, p))


def run_hook(
    client: docker.DockerClient,
    container_id: str,
    command: str,
    user: str,
    workdir: str,
    service_ip: str,
    shell: str | None = None,
) -> tuple[int, str]:
    """Run a hook as the container user with the container's shell (``shell``, else the one
    recorded on it: ``container_shell``); returns (exit code, last output). Raises HookError
    when the container has no shell at all.

    The exec is recorded as the hub's (``audit.HUB_ACTIONS``) before it starts, so its audit
    records carry ``origin: hub``; every other exec in the environment is the user's."""
    api = client.api
    shell = shell or container_shell(client, container_id)
    if not shell:
        raise HookError(
            "A lifecycle hook cannot run: the environment's image has no shell.",
            f"container {container_id[:12]} has none of {shells.BASH_PATHS + shells.SH_PATHS}",
        )
    exec_id = api.exec_create(
        container_id,
        shells.shell_argv(shell, expand_command(command, service_ip)),
        user=user,
        workdir=workdir,
        environment={"SERVICE_IP": service_ip},
    )["Id"]
    HUB_ACTIONS.exec_created(exec_id)
    output = api.exec_start(exec_id, stream=False, demux=False) or b""
    code = api.exec_inspect(exec_id).get("ExitCode")
    return (code if code is not None else -1), output.decode(errors="replace")[-4000:]


def logs_tail(client: docker.DockerClient, container_id: str, lines: int = 30) -> str:
    try:
        return client.api.logs(container_id, tail=lines).decode(errors="replace")
    except docker.errors.APIError:
        return "(no logs)"


def shows_workspace(info: Mapping[str, Any], workspace: Path | str) -> bool | None:
    """Whether the running container of ``info`` (its inspect) sees, at its workspace bind, the
    very directory now at ``workspace`` on the host: compared by device and inode, never by
    path. A workspace removed and made again, or its filesystem unmounted and a new one mounted,
    keeps its path while the container still shows the old directory (deleted, or of a
    filesystem no longer mounted there). None when it cannot tell (no such bind, no process)."""
    pid = (info.get("State") or {}).get("Pid") or 0
    real = os.path.realpath(workspace)
    target = next(
        (
            m.get("Destination")
            for m in info.get("Mounts") or []
            if m.get("Type") == "bind" and os.path.realpath(m.get("Source") or "/") == real
        ),
        None,
    )
    if not pid or not target:
        return None
    try:
        inside = os.stat(f"/proc/{pid}/root{target}")
        now = os.stat(real)
    except OSError:
        return None
    return (inside.st_dev, inside.st_ino) == (now.st_dev, now.st_ino)
