"""The docker-socket policy: which Docker Engine API requests a user's environment may make.

A per-user dockerd runs as root on the host, so its raw socket is a path to host root
(``docker run --privileged -v /:/host``). The environment gets a policy socket instead
(``hubcontrol.policysocket``), which asks this module about every request.

Everything here is data plus small pure functions:

- ``ENDPOINTS`` is the allow-list of API endpoints (method, path pattern) with what each needs
  checked; an endpoint that is not listed is refused. ``DENIED`` lists whole API areas refused
  with a reason (swarm, plugins, checkpoints).
- ``FORBIDDEN_FIELDS``, ``SAFE_CAPABILITIES``, ``NAMESPACED_SYSCTLS`` and the other tables hold
  the rules; every refusal carries the reason shown to the user.
- ``classify(method, target)`` parses a request line into an ``ApiRequest`` (or a ``Refusal``),
  ``read_json(body)`` parses a body the way Go's ``encoding/json`` would (case-insensitive keys,
  last duplicate wins), ``references(request)`` names the containers and networks the decision
  depends on, and ``check(request, context, facts)`` decides, returning the body to forward.

The proxy re-serializes every inspected body from the parsed value, so the daemon sees exactly
what was checked (no duplicate keys, no case variants). See docs/security.md for the reasons.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import posixpath
import re
import socket
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import parse_qsl, unquote

from hubcontrol.storage import CHECKPOINT_DIR  # the checkpoint images in a workspace

# --- limits -------------------------------------------------------------------------------------

MAX_JSON_BODY = 1 << 20  # inspected bodies (create, update, exec, networks, volumes) are small
MIN_API_VERSION = (1, 24)  # older versions accept a HostConfig at start and other legacy forms
RESERVED_LABEL_PREFIX = "rediacc."  # labels the hub sets; users may not set them
HUB_LABEL_PREFIX = "rediacc.hub."  # a container with such a label is managed by the hub

# Capabilities a container may add: Kubernetes' "baseline" Pod Security Standard plus NET_RAW
# (both are Docker's defaults). Anything else (SYS_ADMIN, NET_ADMIN, SYS_PTRACE, SYS_MODULE, ...)
# either is host root outright or widens the kernel attack surface for root in the container.
SAFE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "NET_RAW",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)

# Sysctls that live in a container's own IPC or network namespace (what runc accepts for a
# non-host container). Everything else is host-wide.
NAMESPACED_SYSCTLS = frozenset(
    {
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    }
)
NAMESPACED_SYSCTL_PREFIXES = ("fs.mqueue.", "net.")

SAFE_SECURITY_OPTS = frozenset(
    {"no-new-privileges", "no-new-privileges=true", "no-new-privileges:true"}
)
SAFE_LOG_DRIVERS = frozenset({"", "json-file", "local", "none"})
SAFE_BIND_PROPAGATION = frozenset({"", "private", "rprivate", "slave", "rslave"})
BIND_OPTIONS = (
    frozenset({"ro", "rw", "z", "Z", "nocopy", "consistent", "cached", "delegated"})
    | SAFE_BIND_PROPAGATION
)
SAFE_TMPFS_VOLUME_OPTIONS = frozenset({"size", "mode", "uid", "gid", "nr_inodes", "nr_blocks"})
SAFE_NETWORK_OPTIONS = frozenset(
    {
        "com.docker.network.bridge.enable_icc",
        "com.docker.network.bridge.enable_ip_masquerade",
        "com.docker.network.driver.mtu",
    }
)
# The env's view of its docker socket: binding it into a container gives that container the same
# policy socket (rewritten to the policy socket's host path), never the host's daemon.
DOCKER_SOCKET_PATHS = frozenset(
    {"/var/run/docker.sock", "/run/docker.sock", "/run/rediacc/env/docker.sock"}
)
# On containers the policy created with pinned binds: which workspace path each pin holds
# (hubcontrol.policysocket.pins). Under rediacc. (users cannot set it) but not rediacc.hub. (not an environment).
BINDS_LABEL = "rediacc.binds"


# --- types --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """A refused request: ``message`` says what was refused and why (shown by the docker CLI)."""

    message: str
    status: int = 403

    def body(self) -> bytes:
        return json.dumps({"message": self.message}).encode()


@dataclass(frozen=True)
class Endpoint:
    """One allowed API endpoint. ``checks`` name the checks ``check`` runs for it."""

    name: str
    method: str
    pattern: re.Pattern[str]
    body: bool = False  # the JSON body must be read and inspected (capped at MAX_JSON_BODY)
    checks: tuple[str, ...] = ()
    hijack: bool = False  # the response may turn into a raw bidirectional stream


@dataclass(frozen=True)
class ApiRequest:
    """A parsed request: ``path`` is decoded and without the ``/v1.xx`` prefix."""

    method: str
    path: str
    version: tuple[int, int] | None
    query: Mapping[str, str]
    endpoint: Endpoint
    params: Mapping[str, str]
    body: Any = None

    def with_body(self, body: Any) -> ApiRequest:
        return ApiRequest(
            self.method, self.path, self.version, self.query, self.endpoint, self.params, body
        )


@dataclass(frozen=True)
class ContainerFacts:
    """What the policy needs to know about an existing container on the user's daemon."""

    id: str
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def hub_managed(self) -> bool:
        return any(k.startswith(HUB_LABEL_PREFIX) for k in self.labels)


@dataclass(frozen=True)
class NetworkFacts:
    id: str
    driver: str


@dataclass(frozen=True)
class PolicyContext:
    """Per-user facts the policy decides against (fixed for the life of a policy socket)."""

    workspace: str  # host path of the user's workspace, <workspace-dir>/<u>; "" when ephemeral
    container_workspace: str = "/workspace"  # where the environment sees its workspace
    # Pins a checked path inside the workspace: (relpath, readonly, create missing dirs) -> the
    # source to hand the daemon (hubcontrol.policysocket.pins.BindPins.pin). None: binds are refused.
    pin: Callable[[str, bool, bool], str] | None = None
    policy_socket: str | None = None  # host path of this policy socket (for nested docker.sock)
    user_networks: tuple[str, ...] = ()  # CIDRs the user may give their own networks
    forbidden_registry_networks: tuple[str, ...] = (
        "127.0.0.0/8",
        "::1/128",
        "169.254.0.0/16",
        "fe80::/10",
        "0.0.0.0/8",
        "10.208.0.0/12",
    )
    allowed_registries: frozenset[str] = frozenset()  # host[:port] allowed despite the above
    # The address the daemon binds published ports to (its daemon.json "ip": the user's own
    # bridge address); None refuses publishing, since the default is every host interface.
    publish_ip: str | None = None
    realpath: Callable[[str], str] = os.path.realpath


Facts = Mapping[tuple[str, str], Any]  # ("container"|"network", ref) -> *Facts or None


class _Refused(Exception):
    def __init__(self, message: str, status: int = 403) -> None:
        self.refusal = Refusal(message, status)


def _refuse(what: str, why: str) -> _Refused:
    return _Refused(f"hub policy refused {what}: {why}")


# --- endpoints ----------------------------------------------------------------------------------

_ID = r"(?P<id>[^/]+)"
_NAME = r"(?P<name>.+)"


def _ep(name: str, method: str, path: str, **kw: Any) -> Endpoint:
    return Endpoint(name, method, re.compile(f"^{path}$"), **kw)


ENDPOINTS: tuple[Endpoint, ...] = (
    _ep("ping", "GET", "/_ping"),
    _ep("ping", "HEAD", "/_ping"),
    _ep("version", "GET", "/version"),
    _ep("info", "GET", "/info"),
    _ep("events", "GET", "/events"),
    _ep("df", "GET", "/system/df"),
    _ep("auth", "POST", "/auth", body=True, checks=("auth",)),
    # containers
    _ep("container list", "GET", "/containers/json"),
    _ep("container create", "POST", "/containers/create", body=True, checks=("create",)),
    _ep("container prune", "POST", "/containers/prune"),
    _ep("container inspect", "GET", f"/containers/{_ID}/json"),
    _ep("container top", "GET", f"/containers/{_ID}/top"),
    _ep("container logs", "GET", f"/containers/{_ID}/logs"),
    _ep("container changes", "GET", f"/containers/{_ID}/changes"),
    _ep("container export", "GET", f"/containers/{_ID}/export"),
    _ep("container stats", "GET", f"/containers/{_ID}/stats"),
    _ep("container resize", "POST", f"/containers/{_ID}/resize"),
    _ep("container start", "POST", f"/containers/{_ID}/start", checks=("start",)),
    _ep("container stop", "POST", f"/containers/{_ID}/stop", checks=("not-hub",)),
    _ep("container restart", "POST", f"/containers/{_ID}/restart", checks=("not-hub",)),
    _ep("container kill", "POST", f"/containers/{_ID}/kill", checks=("not-hub",)),
    _ep("container pause", "POST", f"/containers/{_ID}/pause", checks=("not-hub",)),
    _ep("container unpause", "POST", f"/containers/{_ID}/unpause", checks=("not-hub",)),
    _ep("container rename", "POST", f"/containers/{_ID}/rename", checks=("not-hub",)),
    _ep(
        "container update",
        "POST",
        f"/containers/{_ID}/update",
        body=True,
        checks=("not-hub", "update"),
    ),
    _ep("container remove", "DELETE", f"/containers/{_ID}", checks=("not-hub",)),
    _ep("container attach", "POST", f"/containers/{_ID}/attach", hijack=True),
    _ep("container attach", "GET", f"/containers/{_ID}/attach/ws", hijack=True),
    _ep("container wait", "POST", f"/containers/{_ID}/wait"),
    # docker cp mounts a container's volumes without its tmpfs mounts: on the environment it
    # would reach the checkpoint images that a tmpfs hides inside it
    _ep("container archive", "GET", f"/containers/{_ID}/archive", checks=("not-hub",)),
    _ep("container archive", "HEAD", f"/containers/{_ID}/archive", checks=("not-hub",)),
    _ep("container archive", "PUT", f"/containers/{_ID}/archive", checks=("not-hub",)),
    _ep("container exec", "POST", f"/containers/{_ID}/exec", body=True, checks=("exec",)),
    _ep("exec start", "POST", f"/exec/{_ID}/start", hijack=True),
    _ep("exec resize", "POST", f"/exec/{_ID}/resize"),
    _ep("exec inspect", "GET", f"/exec/{_ID}/json"),
    _ep("commit", "POST", "/commit", checks=("commit",)),
    # images
    _ep("image list", "GET", "/images/json"),
    _ep("image build", "POST", "/build", checks=("build",)),
    _ep("build prune", "POST", "/build/prune"),
    _ep("build cancel", "POST", "/build/cancel"),
    # BuildKit: the CLI's session (its files, credentials and secrets, served to the daemon) and
    # buildx's gRPC control API, both HTTP/2 after an upgrade, relayed as they are. What they
    # carry (LLB, entitlements, exporters) is not inspected: the daemon refuses the network.host
    # and security.insecure entitlements itself (supervisor.BUILDER_ENTITLEMENTS), build steps
    # run on the user's bridge in the user's cgroup, and what the daemon fetches meets
    # RDH-OUTPUT (docs/security.md, "BuildKit").
    _ep("buildkit session", "POST", "/session", hijack=True),
    _ep("buildkit grpc", "POST", "/grpc", hijack=True),
    _ep("image create", "POST", "/images/create", checks=("image-create",)),
    _ep("image search", "GET", "/images/search", checks=("search",)),
    _ep("image prune", "POST", "/images/prune"),
    _ep("image export", "GET", "/images/get"),
    _ep("image load", "POST", "/images/load"),
    _ep("image inspect", "GET", f"/images/{_NAME}/json"),
    _ep("image history", "GET", f"/images/{_NAME}/history"),
    _ep("image export", "GET", f"/images/{_NAME}/get"),
    _ep("image push", "POST", f"/images/{_NAME}/push", checks=("push",)),
    _ep("image tag", "POST", f"/images/{_NAME}/tag"),
    _ep("image remove", "DELETE", f"/images/{_NAME}"),
    _ep("distribution inspect", "GET", f"/distribution/{_NAME}/json", checks=("distribution",)),
    # networks
    _ep("network list", "GET", "/networks"),
    _ep("network create", "POST", "/networks/create", body=True, checks=("network-create",)),
    _ep("network prune", "POST", "/networks/prune"),
    _ep("network inspect", "GET", f"/networks/{_ID}"),
    _ep("network remove", "DELETE", f"/networks/{_ID}"),
    _ep("network connect", "POST", f"/networks/{_ID}/connect", body=True, checks=("connect",)),
    _ep(
        "network disconnect", "POST", f"/networks/{_ID}/disconnect", body=True, checks=("connect",)
    ),
    # volumes
    _ep("volume list", "GET", "/volumes"),
    _ep("volume create", "POST", "/volumes/create", body=True, checks=("volume-create",)),
    _ep("volume prune", "POST", "/volumes/prune"),
    _ep("volume inspect", "GET", f"/volumes/{_NAME}"),
    _ep("volume remove", "DELETE", f"/volumes/{_NAME}"),
    # plugins: listing is harmless; installing, enabling or configuring one is not
    _ep("plugin list", "GET", "/plugins"),
    _ep("plugin inspect", "GET", f"/plugins/{_NAME}/json"),
)

# Whole areas refused with a reason, matched on the first path segment(s).
DENIED: tuple[tuple[re.Pattern[str], str, str], ...] = tuple(
    (re.compile(p), what, why)
    for p, what, why in (
        (
            r"^/(swarm|nodes|services|tasks|secrets|configs)(/|$)",
            "swarm mode",
            "a swarm manager runs services as root on the host and opens ports to the network",
        ),
        (
            r"^/plugins(/|$)",
            "plugin management",
            "a plugin runs as root on the host with the privileges it asks for",
        ),
        (
            r"^/containers/[^/]+/checkpoints(/|$)",
            "container checkpoints",
            "CRIU runs as root on the host; the hub alone checkpoints environments",
        ),
    )
)

_VERSION = re.compile(r"^/v(\d+)\.(\d+)(/.*)$")


def classify(method: str, target: str) -> ApiRequest | Refusal:
    """Parse a request line's method and target into an ``ApiRequest``, or refuse it.

    The path is percent-decoded the way Go's ``net/url`` does before the daemon's router sees it;
    paths with ``.``/``..``/empty segments are refused rather than normalized (the daemon's router
    would redirect them, and no client sends them).
    """
    raw_path, _, raw_query = target.partition("?")
    if not raw_path.startswith("/") or "#" in target:
        return Refusal(f"hub policy refused request target {target!r}: not an absolute path", 400)
    try:
        path = unquote(raw_path, errors="strict")
    except UnicodeDecodeError:
        return Refusal("hub policy refused a request path that is not valid UTF-8", 400)
    if any(c in path for c in "\x00\r\n\\") or any(
        seg in ("", ".", "..") for seg in path.split("/")[1:]
    ):
        return Refusal(
            f"hub policy refused request path {path!r}: empty, '.' or '..' segments", 400
        )
    version = None
    m = _VERSION.match(path)
    if m:
        version = (int(m.group(1)), int(m.group(2)))
        path = m.group(3)
        if version < MIN_API_VERSION:
            v = ".".join(map(str, MIN_API_VERSION))
            return Refusal(
                f"hub policy refused API version {m.group(1)}.{m.group(2)}: older than {v}, "
                "whose legacy forms (a HostConfig at start) bypass checks; upgrade the client",
                400,
            )
    query = _parse_query(raw_query)
    if isinstance(query, Refusal):
        return query
    method = method.upper()
    for pattern, what, why in DENIED:
        if pattern.match(path) and not (
            method == "GET" and re.match(r"^/plugins(/[^/]+/json)?$", path)
        ):
            return Refusal(f"hub policy refused {what} ({method} {path}): {why}")
    for ep in ENDPOINTS:
        if ep.method == method:
            m = ep.pattern.match(path)
            if m:
                params = {k: v for k, v in m.groupdict().items() if v is not None}
                return ApiRequest(method, path, version, query, ep, params)
    return Refusal(
        f"hub policy refused {method} {path}: not an endpoint the hub's docker socket serves"
    )


def _parse_query(raw: str) -> dict[str, str] | Refusal:
    """Query parameters as Go's ``r.FormValue`` sees them: first value wins, ``;`` is not a
    separator. A parameter given twice with different values is refused: not worth guessing."""
    out: dict[str, str] = {}
    try:
        pairs = parse_qsl(raw, keep_blank_values=True, strict_parsing=False, errors="strict")
    except (UnicodeDecodeError, ValueError):
        return Refusal("hub policy refused a query string that is not valid UTF-8", 400)
    for k, v in pairs:
        if k in out and out[k] != v:
            return Refusal(f"hub policy refused query parameter {k!r} given twice", 400)
        out.setdefault(k, v)
    return out


# --- JSON as the daemon reads it --------------------------------------------------------------


def fold(key: str) -> str:
    """Case-fold a JSON key at least as loosely as Go's ``encoding/json`` field matching does
    (ASCII case, the Kelvin sign and long s included), so no spelling escapes a rule."""
    if key.isascii():
        return key.lower()  # the same as NFKC + casefold for ASCII, and far cheaper
    return unicodedata.normalize("NFKC", key).casefold()


class JObject:
    """A JSON object as its key/value pairs, in order, with Go's struct-field lookup on top.

    Go matches a JSON key to a struct field case-insensitively and the last matching key wins,
    while map keys (labels, sysctls, network names) are exact. So pairs are kept as sent, and
    reading a field with ``field(name)`` collapses every spelling of it into one canonical pair
    holding the last value: after the checks, what the daemon reads is exactly what was checked
    (this folding is looser than Go's, so a key Go would not match is dropped, never kept beside).
    """

    __slots__ = ("_folded", "pairs")

    def __init__(self, pairs: Iterable[tuple[str, Any]] = ()) -> None:
        self.pairs = list(pairs)
        self._folded: list[str] | None = None  # fold() of each key, computed once

    def _folds(self) -> list[str]:
        if self._folded is None:
            self._folded = [fold(k) for k, _ in self.pairs]
        return self._folded

    def field(self, name: str, default: Any = None) -> Any:
        target = fold(name)
        found = [i for i, f in enumerate(self._folds()) if f == target]
        if not found:
            return default
        value = self.pairs[found[-1]][1]
        if len(found) > 1 or self.pairs[found[0]][0] != name:
            self.set_field(name, value)
        return value

    def set_field(self, name: str, value: Any) -> None:
        target = fold(name)
        kept = [(p, f) for p, f in zip(self.pairs, self._folds(), strict=True) if f != target]
        self.pairs = [p for p, _ in kept] + [(name, value)]
        self._folded = [f for _, f in kept] + [target]

    def keys(self) -> list[str]:
        return [k for k, _ in self.pairs]

    def __bool__(self) -> bool:
        return bool(self.pairs)


def read_json(body: bytes) -> Any | Refusal:
    """Parse an inspected request body; a body that is not one JSON value is refused."""
    if len(body) > MAX_JSON_BODY:
        return Refusal(f"hub policy refused a request body over {MAX_JSON_BODY} bytes", 413)
    if not body.strip():
        return None
    try:
        return json.loads(
            body.decode("utf-8"), object_pairs_hook=JObject, parse_constant=_no_constants
        )
    except (UnicodeDecodeError, ValueError) as e:
        return Refusal(f"hub policy refused a request body that is not valid JSON: {e}", 400)
    except RecursionError:
        return Refusal("hub policy refused a request body nested too deeply", 400)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def to_wire(value: Any) -> bytes:
    """Serialize a parsed (and possibly rewritten) body for the daemon."""
    return _dump(value).encode()


def _dump(value: Any) -> str:
    if isinstance(value, JObject):
        return "{" + ",".join(f"{json.dumps(k)}:{_dump(v)}" for k, v in value.pairs) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dump(v) for v in value) + "]"
    return json.dumps(value)


# --- references: what the decision needs looked up on the daemon --------------------------------


def references(request: ApiRequest) -> set[tuple[str, str]]:
    """Containers and networks whose facts ``check`` needs: ``("container"|"network", ref)``."""
    refs: set[tuple[str, str]] = set()
    checks = request.endpoint.checks
    if "not-hub" in checks:
        refs.add(("container", request.params["id"]))
    if "connect" in checks:
        refs.add(("network", request.params["id"]))
        container = _obj(request.body).field("Container")
        if isinstance(container, str) and container:
            refs.add(("container", container))
    if "build" in checks and _is_named_network(request.query.get("networkmode", "")):
        refs.add(("network", request.query["networkmode"]))
    if "create" in checks:
        body = _obj(request.body)
        for hc in _host_configs(body):
            for key in ("NetworkMode", "PidMode", "IpcMode"):
                mode = hc.field(key)
                if isinstance(mode, str) and mode.startswith("container:"):
                    refs.add(("container", mode.partition(":")[2]))
            mode = hc.field("NetworkMode")
            if isinstance(mode, str) and _is_named_network(mode):
                refs.add(("network", mode))
            for entry in _list(hc.field("VolumesFrom")):
                if isinstance(entry, str):
                    refs.add(("container", entry.split(":")[0]))
        for name in _obj(_obj(body.field("NetworkingConfig")).field("EndpointsConfig")).keys():
            if _is_named_network(name):
                refs.add(("network", name))
    refs |= _bound_references(request)
    return refs


def _is_named_network(mode: str) -> bool:
    return mode not in ("", "default", "bridge", "none", "host") and not mode.startswith(
        "container:"
    )


# --- the decision ---------------------------------------------------------------------------------


def check(request: ApiRequest, ctx: PolicyContext, facts: Facts | None = None) -> Any | Refusal:
    """Decide ``request``. Returns the (possibly rewritten) parsed body to forward, or a Refusal.

    ``facts`` maps each of ``references(request)`` to ``ContainerFacts``/``NetworkFacts`` or None
    (not found; the daemon will then answer 404 itself).
    """
    facts = facts or {}
    try:
        body = request.body
        for name in request.endpoint.checks:
            result = _CHECKS[name](request, ctx, facts, body)
            if result is not None:
                body = result
        bound = _BOUNDS.get(request.endpoint.name)
        if bound is not None:
            bound(request, facts, body)
        return body
    except _Refused as r:
        return r.refusal


def _obj(value: Any) -> JObject:
    return value if isinstance(value, JObject) else JObject()


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _host_configs(body: JObject) -> list[JObject]:
    """Every place the daemon reads HostConfig fields from in a create body: the inner
    ``HostConfig`` and, for old clients, the top level itself (moby's ContainerConfigWrapper
    embeds a HostConfig, used when no inner one is given)."""
    return [body, _obj(body.field("HostConfig"))]


def _container(facts: Facts, ref: str) -> ContainerFacts | None:
    return facts.get(("container", ref))


# A check reads the request, the facts about what it references and the body parsed so far (any
# JSON value), and raises _Refused, or returns a rewritten body (None: keep it).
Check = Callable[[ApiRequest, PolicyContext, Facts, object], "JObject | None"]


def _check_not_hub(request: ApiRequest, ctx: PolicyContext, facts: Facts, body: object) -> None:
    c = _container(facts, request.params["id"])
    if c is not None and c.hub_managed:
        raise _refuse(
            f"{request.endpoint.name} of container {request.params['id']!r}",
            "it is your environment, managed by the hub (stop it from the hub's dashboard or "
            "`hub stop`)",
        )


def _check_start(request: ApiRequest, ctx: PolicyContext, facts: Facts, body: object) -> None:
    for param in ("checkpoint", "checkpoint-dir"):
        if request.query.get(param):
            raise _refuse(
                f"start from a checkpoint ({param}=)", "only the hub restores checkpoints"
            )


def _check_exec(request: ApiRequest, ctx: PolicyContext, facts: Facts, body: object) -> None:
    if _truthy(_obj(body).field("Privileged")):
        raise _refuse(
            "a privileged exec (Privileged)",
            "it gives the process every capability, which is root on the host",
        )


def _check_commit(request: ApiRequest, ctx: PolicyContext, facts: Facts, body: object) -> None:
    return None  # the commit body is a container Config (no HostConfig); nothing to check


def _check_update(request: ApiRequest, ctx: PolicyContext, facts: Facts, body: object) -> None:
    _check_resources(_obj(body))


def _check_auth(request: ApiRequest, ctx: PolicyContext, facts: Facts, body: object) -> None:
    addr = _obj(body).field("serveraddress")
    if isinstance(addr, str) and addr:
        _check_registry_host(_registry_host_of_address(addr), ctx, "registry login")


def _check_image_create(
    request: ApiRequest, ctx: PolicyContext, facts: Facts, body: object
) -> None:
    src = request.query.get("fromSrc", "")
    if src not in ("", "-"):
        raise _refuse(
            f"an import from {src!r} (fromSrc)",
            "the daemon would fetch the URL from the host's network, where the hub and other "
            "users' services are reachable; download it yourself and import from stdin",
        )
    image = request.query.get("fromImage", "")
    if image:
        _check_registry_host(registry_host(image), ctx, f"a pull of {image!r}")


def _check_push(request: ApiRequest, ctx: PolicyContext, facts: Facts, body: object) -> None:
    _check_registry_host(registry_host(request.params["name"]), ctx, "a push")


def _check_search(request: ApiRequest, ctx: PolicyContext, facts: Facts, body: object) -> None:
    _check_registry_host(registry_host(request.query.get("term", "")), ctx, "a search")


def _check_distribution(
    request: ApiRequest, ctx: PolicyContext, facts: Facts, body: object
) -> None:
    _check_registry_host(registry_host(request.params["name"]), ctx, "a registry lookup")


# With BuildKit (version=2) the context comes over the client's session, named by this value.
BUILDKIT_SESSION_CONTEXT = "client-session"


def _check_build(request: ApiRequest, ctx: PolicyContext, facts: Facts, body: object) -> None:
    q = request.query
    version = q.get("version", "1") or "1"
    if version not in ("1", "2"):
        raise _refuse(f"a build with version={version}", "1 (classic) and 2 (BuildKit) exist")
    remote = q.get("remote", "")
    if remote and not (version == "2" and remote == BUILDKIT_SESSION_CONTEXT):
        raise _refuse(
            "a build from a remote context (remote=)",
            "the daemon would fetch it from the host's network; send the context instead",
        )
    if version == "2":
        for ref in _json_strings(q.get("cachefrom", "")):
            _check_registry_host(registry_host(ref), ctx, f"a build cache import from {ref!r}")
    mode = q.get("networkmode", "")
    if mode.lower() == "host" or mode.startswith("container:"):
        raise _refuse(f"a build with --network={mode}", _NS_WHY["network"])
    if _is_named_network(mode):
        _check_network_ref(mode, facts)
    if q.get("cgroupparent"):
        raise _refuse("a build with --cgroup-parent", _WHY_CGROUP_PARENT)
    if q.get("isolation", "default") not in ("", "default"):
        raise _refuse("a build with --isolation", "only the default isolation exists here")


def _json_strings(raw: str) -> list[str]:
    """The strings of a JSON list query parameter (``cachefrom=["a","b"]``); [] when absent."""
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except ValueError:
        raise _refuse(
            f"a query parameter {raw[:80]!r}", "expected a JSON list of strings"
        ) from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _refuse(f"a query parameter {raw[:80]!r}", "expected a JSON list of strings")
    return value


def _check_create(
    request: ApiRequest, ctx: PolicyContext, facts: Facts, body: object
) -> JObject | None:
    body = _obj(body)
    _check_labels(body.field("Labels"), "container")
    pinned: dict[str, tuple[str, bool]] = {}
    if ctx.pin is not None:
        pin = ctx.pin

        def recording_pin(rel: str, readonly: bool, create: bool) -> str:
            source = pin(rel, readonly, create)
            pinned[posixpath.basename(source)] = (rel, readonly)
            return source

        ctx = replace(ctx, pin=recording_pin)
    for hc in _host_configs(body):
        _check_host_config(hc, ctx, facts)
    if pinned:
        # Which workspace path each pin holds, to pin it again with a fresh check (hubcontrol.policysocket.pins)
        labels = _obj(body.field("Labels"))
        body.set_field("Labels", JObject([*labels.pairs, (BINDS_LABEL, _pins_label(pinned))]))
    endpoints = _obj(_obj(body.field("NetworkingConfig")).field("EndpointsConfig"))
    for name in endpoints.keys():
        _check_network_ref(name, facts)
    return body


def _check_connect(request: ApiRequest, ctx: PolicyContext, facts: Facts, body: object) -> None:
    _check_network_ref(request.params["id"], facts)
    container = _obj(body).field("Container")
    c = _container(facts, container) if isinstance(container, str) else None
    if c is not None and c.hub_managed:
        raise _refuse(
            f"{request.endpoint.name} of container {container!r}",
            "it is your environment; its networks are managed by the hub",
        )


def _check_network_create(
    request: ApiRequest, ctx: PolicyContext, facts: Facts, body: object
) -> JObject | None:
    body = _obj(body)
    _check_labels(body.field("Labels"), "network")
    driver = body.field("Driver") or ""
    if driver not in ("", "bridge"):
        raise _refuse(
            f"network driver {driver!r}",
            "only bridge networks are available (macvlan, ipvlan and plugins attach to the "
            "host's interfaces)",
        )
    for key in ("Ingress", "ConfigOnly"):
        if _truthy(body.field(key)):
            raise _refuse(
                f"a network with {key}", "swarm and config-only networks are not available"
            )
    if body.field("ConfigFrom"):
        raise _refuse("a network with ConfigFrom", "config-only networks are not available")
    for key in _obj(body.field("Options")).keys():
        if key not in SAFE_NETWORK_OPTIONS:
            raise _refuse(
                f"network option {key!r}",
                "it could take over a host bridge; allowed: "
                + ", ".join(sorted(SAFE_NETWORK_OPTIONS)),
            )
    ipam = _obj(body.field("IPAM"))
    if (ipam.field("Driver") or "default") != "default":
        raise _refuse("an IPAM driver", "only the default IPAM driver is available")
    allowed = [ipaddress.ip_network(n) for n in ctx.user_networks]
    for cfg in _list(ipam.field("Config")):
        cfg = _obj(cfg)
        values = [cfg.field(k) for k in ("Subnet", "IPRange", "Gateway")]
        values += [v for _, v in _obj(cfg.field("AuxiliaryAddresses")).pairs]
        for value in values:
            if not value:
                continue
            if not _inside(value, allowed):
                pools = ", ".join(ctx.user_networks) or "none"
                raise _refuse(
                    f"network address {value!r}",
                    "a subnet outside your own address block would reroute the host's traffic "
                    f"to other users; allowed: {pools} (or leave it out and let the daemon pick)",
                )
    return body


def _inside(value: Any, allowed: list[Any]) -> bool:
    try:
        net = ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        return False
    return any(net.version == a.version and net.subnet_of(a) for a in allowed)


def _check_volume_create(
    request: ApiRequest, ctx: PolicyContext, facts: Facts, body: object
) -> JObject | None:
    body = _obj(body)
    _check_labels(body.field("Labels"), "volume")
    _check_volume_driver(body.field("Driver"), body.field("DriverOpts"))
    return body


_CHECKS: dict[str, Check] = {
    "not-hub": _check_not_hub,
    "start": _check_start,
    "exec": _check_exec,
    "commit": _check_commit,
    "update": _check_update,
    "auth": _check_auth,
    "image-create": _check_image_create,
    "push": _check_push,
    "search": _check_search,
    "distribution": _check_distribution,
    "build": _check_build,
    "create": _check_create,
    "connect": _check_connect,
    "network-create": _check_network_create,
    "volume-create": _check_volume_create,
}


# --- bounds: what one user may make their daemon hold ------------------------------------------
#
# A per-user dockerd keeps the configuration of every container, network and volume in memory
# (and reads all of it back at each start), so an unbounded request or an unbounded number of
# them grows the daemon, however small the user's containers are: 400 creates with 900 KB labels
# took an unlimited dockerd from 178 MB to 1.36 GB. The daemon runs within an allowance of its own
# (hubcontrol.supervisor.DAEMON_MEMORY, 1 GiB), and these caps keep legitimate use far below it:
# 100 containers of at most 256 KiB of configuration each is 25 MiB of configuration, held a few
# times over. Images are not bounded here (builds, loads and pulls make them); the allowance is.

MAX_CONTAINERS = 100  # per user, stopped ones included; each running one adds a shim of ~12 tasks
MAX_NETWORKS = 32  # user-made networks (not bridge, host, none); the address block allows ~32
MAX_VOLUMES = 256  # named volumes
MAX_LABELS = 256  # per container, network or volume
MAX_LABEL_BYTES = 64 << 10  # the labels of one object, keys and values together
MAX_ENV_BYTES = 64 << 10  # a container's or exec's environment ("NAME=value" strings)
MAX_ARGS_BYTES = 128 << 10  # Cmd and Entrypoint together (Linux caps one argument at 128 KiB)
MAX_CONFIG_BYTES = 256 << 10  # a container's whole configuration as the daemon receives it
MAX_NAME_LENGTH = 255  # names of containers, networks and volumes

PREDEFINED_NETWORKS = frozenset({"bridge", "host", "none"})

# What the proxy asks the daemon to count, per ("count", kind) reference: /info counts containers
# without listing them (a listing carries every container's labels).
COUNT_QUERIES = {
    "containers": "/info",
    "networks": "/networks",
    "volumes": "/volumes",
}
MAX_LISTING_BYTES = 32 << 20  # MAX_VOLUMES volumes with MAX_LABEL_BYTES of labels each, and more


def count_objects(kind: str, listing: Any) -> int:
    """How many of ``kind`` the daemon's answer to ``COUNT_QUERIES[kind]`` holds against the
    user's cap: every container (stopped ones too), networks other than the predefined ones,
    named volumes. A ValueError when the answer is not what the daemon sends."""
    if kind == "containers":
        count = listing.get("Containers") if isinstance(listing, dict) else None
        if not isinstance(count, int):
            raise ValueError("the daemon's /info has no container count")
        return count
    if kind == "volumes":
        listing = listing.get("Volumes") or [] if isinstance(listing, dict) else None
    if not isinstance(listing, list):
        raise ValueError(f"the daemon's {kind} listing is not a list")
    if kind == "networks":
        return sum(1 for n in listing if (n or {}).get("Name") not in PREDEFINED_NETWORKS)
    return len(listing)


def _bound_references(request: ApiRequest) -> set[tuple[str, str]]:
    kind = {
        "container create": "containers",
        "network create": "networks",
        "volume create": "volumes",
    }.get(request.endpoint.name)
    return {("count", kind)} if kind else set()


def _kib(n: int) -> str:
    return f"{n / 1024:.0f} KiB" if n >= 1024 else f"{n} bytes"


def _a(noun: str) -> str:
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


def _utf8_len(value: Any) -> int:
    return len(str(value).encode("utf-8", "surrogatepass"))


def _check_count(facts: Facts, kind: str, cap: int, what: str, hint: str) -> None:
    count = facts.get(("count", kind))
    if isinstance(count, int) and count >= cap:
        raise _refuse(what, f"you have {count} {kind}, the most one user may have ({cap}); {hint}")


def _check_name_length(name: Any, kind: str) -> None:
    if isinstance(name, str) and len(name) > MAX_NAME_LENGTH:
        raise _refuse(
            f"a {kind} name of {len(name)} characters", f"at most {MAX_NAME_LENGTH} are allowed"
        )


def _check_label_sizes(labels: Any, kind: str) -> None:
    pairs = _obj(labels).pairs
    if len(pairs) > MAX_LABELS:
        raise _refuse(
            f"{len(pairs)} labels on a {kind}",
            f"at most {MAX_LABELS} labels per {kind} (your daemon keeps them all in memory)",
        )
    size = sum(_utf8_len(k) + _utf8_len(v) for k, v in pairs)
    if size > MAX_LABEL_BYTES:
        raise _refuse(
            f"{_kib(size)} of labels on a {kind}",
            f"at most {_kib(MAX_LABEL_BYTES)} of labels (keys and values) per {kind}, since "
            "your daemon keeps them all in memory; keep large data in a file or a volume",
        )


def _check_env_and_args(config: JObject, kind: str) -> None:
    env = sum(_utf8_len(e) + 1 for e in _list(config.field("Env")))
    if env > MAX_ENV_BYTES:
        raise _refuse(
            f"an environment (Env) of {_kib(env)} for {_a(kind)}",
            f"at most {_kib(MAX_ENV_BYTES)} of variables per {kind}; pass large values in a "
            "file in your workspace and mount it",
        )
    args = 0
    for name in ("Cmd", "Entrypoint"):
        value = config.field(name)
        for arg in value if isinstance(value, list) else [value] if value else []:
            args += _utf8_len(arg) + 1
    if args > MAX_ARGS_BYTES:
        raise _refuse(
            f"a command line (Cmd and Entrypoint) of {_kib(args)} for {_a(kind)}",
            f"at most {_kib(MAX_ARGS_BYTES)}; put a long script in a file in your workspace "
            "and run that",
        )


def _bound_container_create(request: ApiRequest, facts: Facts, body: Any) -> None:
    body = _obj(body)
    _check_name_length(request.query.get("name"), "container")
    _check_label_sizes(body.field("Labels"), "container")
    _check_env_and_args(body, "container")
    size = len(to_wire(body))
    if size > MAX_CONFIG_BYTES:
        raise _refuse(
            f"a container configuration of {_kib(size)}",
            f"at most {_kib(MAX_CONFIG_BYTES)} per container, since your daemon keeps every "
            "container's configuration in memory",
        )
    _check_count(
        facts,
        "containers",
        MAX_CONTAINERS,
        "another container",
        "stopped containers count too; remove them with `docker rm` or `docker container prune`",
    )


def _bound_container_rename(request: ApiRequest, facts: Facts, body: Any) -> None:
    _check_name_length(request.query.get("name"), "container")


def _bound_exec(request: ApiRequest, facts: Facts, body: Any) -> None:
    _check_env_and_args(_obj(body), "exec")


def _bound_network_create(request: ApiRequest, facts: Facts, body: Any) -> None:
    body = _obj(body)
    _check_name_length(body.field("Name"), "network")
    _check_label_sizes(body.field("Labels"), "network")
    _check_count(
        facts,
        "networks",
        MAX_NETWORKS,
        "another network",
        "remove unused ones with `docker network rm` or `docker network prune`",
    )


def _bound_volume_create(request: ApiRequest, facts: Facts, body: Any) -> None:
    body = _obj(body)
    _check_name_length(body.field("Name"), "volume")
    _check_label_sizes(body.field("Labels"), "volume")
    _check_count(
        facts,
        "volumes",
        MAX_VOLUMES,
        "another volume",
        "remove unused ones with `docker volume rm` or `docker volume prune`",
    )


# endpoint name -> its bound (run after the endpoint's checks, on the body to be forwarded)
_BOUNDS: dict[str, Callable[[ApiRequest, Facts, Any], None]] = {
    "container create": _bound_container_create,
    "container rename": _bound_container_rename,
    "container exec": _bound_exec,
    "network create": _bound_network_create,
    "volume create": _bound_volume_create,
}


# --- HostConfig rules ---------------------------------------------------------------------------

_NS_WHY = {
    "network": "the host's network namespace reaches the hub, other users and every host service",
    "pid": "the host's PID namespace lets root in the container signal and trace host processes",
    "ipc": "the host's IPC namespace shares memory segments with host processes",
    "uts": "the host's UTS namespace lets the container rename the host",
    "userns": "user namespaces other than the daemon's are not available",
    "cgroupns": "the host's cgroup namespace exposes and can alter the hub's resource limits",
}
_WHY_CGROUP_PARENT = "the hub places your containers in your own cgroup, which holds your limits"

# Fields refused when set to anything but their zero value: (field, what, why).
FORBIDDEN_FIELDS: tuple[tuple[str, str, str], ...] = (
    (
        "Privileged",
        "privileged mode (--privileged)",
        "a privileged container has every capability and device: it is root on the host",
    ),
    ("Devices", "host devices (--device)", "a device node gives direct access to host hardware"),
    (
        "DeviceCgroupRules",
        "device cgroup rules (--device-cgroup-rule)",
        "they open host devices to the container",
    ),
    ("DeviceRequests", "device requests (--gpus)", "they pass host devices into the container"),
    ("CgroupParent", "--cgroup-parent", _WHY_CGROUP_PARENT),
    ("Cgroup", "joining another container's cgroup (Cgroup)", _WHY_CGROUP_PARENT),
    (
        "OomKillDisable",
        "--oom-kill-disable",
        "the kernel would kill host processes instead of the container",
    ),
    (
        "MaskedPaths",
        "unmasking /proc and /sys paths (MaskedPaths)",
        "they expose host kernel interfaces (systempaths=unconfined)",
    ),
    (
        "ReadonlyPaths",
        "making /proc and /sys paths writable (ReadonlyPaths)",
        "they expose host kernel interfaces (systempaths=unconfined)",
    ),
    ("CpuRealtimePeriod", "real-time CPU scheduling", "it can starve the host"),
    ("CpuRealtimeRuntime", "real-time CPU scheduling", "it can starve the host"),
)


def _truthy(value: Any) -> bool:
    """Set to something other than Go's zero value."""
    if isinstance(value, JObject | list | str):
        return bool(value)
    return value not in (None, False, 0)


def _check_resources(hc: JObject) -> None:
    for name, what, why in FORBIDDEN_FIELDS:
        if _truthy(hc.field(name)):
            raise _refuse(what, why)


_WHY_PUBLISH = (
    "a port published on the host's interfaces is reachable without the hub's login and can take "
    "over the hub's or another service's port; reach the container from your environment by its "
    "name or address instead"
)


def _check_ports(hc: JObject, ctx: PolicyContext) -> None:
    """Published ports are allowed only where the daemon binds them to the user's own bridge
    address (``ctx.publish_ip``, the daemon's ``"ip"`` setting), and only at that address."""
    bindings = _obj(hc.field("PortBindings"))
    publish_all = _truthy(hc.field("PublishAllPorts"))
    if not bindings and not publish_all:
        return
    if ctx.publish_ip is None:
        raise _refuse("publishing ports on the host (-p/-P)", _WHY_PUBLISH)
    for port, entries in bindings.pairs:
        for entry in _list(entries):
            host_ip = _obj(entry).field("HostIp") or ""
            if host_ip not in ("", ctx.publish_ip):
                raise _refuse(f"publishing port {port} on {host_ip}", _WHY_PUBLISH)


def _check_host_config(hc: JObject, ctx: PolicyContext, facts: Facts) -> None:
    _check_resources(hc)
    _check_ports(hc, ctx)
    # MaskedPaths: [] is how "systempaths=unconfined" arrives; an empty list is not the zero value.
    for name in ("MaskedPaths", "ReadonlyPaths"):
        if hc.field(name) is not None:
            raise _refuse(
                f"setting {name}", "it exposes host kernel interfaces (systempaths=unconfined)"
            )
    for key, ns in (
        ("NetworkMode", "network"),
        ("PidMode", "pid"),
        ("IpcMode", "ipc"),
        ("UTSMode", "uts"),
        ("CgroupnsMode", "cgroupns"),
    ):
        mode = hc.field(key)
        if not isinstance(mode, str) or not mode:
            continue
        if mode.lower() == "host":
            raise _refuse(f"the host's {ns} namespace (--{ns}=host)", _NS_WHY[ns])
        if mode.lower().startswith("container:") and key != "CgroupnsMode":
            _check_joinable(mode.partition(":")[2], f"--{ns}={mode}", facts)
        elif key == "NetworkMode" and _is_named_network(mode):
            _check_network_ref(mode, facts)
    if hc.field("UsernsMode"):
        raise _refuse(f"--userns={hc.field('UsernsMode')}", _NS_WHY["userns"])
    runtime = hc.field("Runtime") or ""
    if runtime not in ("", "runc"):
        raise _refuse(
            f"runtime {runtime!r} (--runtime)", "only the daemon's default runtime is allowed"
        )
    if (hc.field("Isolation") or "default") != "default":
        raise _refuse("--isolation", "only the default isolation exists here")
    oom = hc.field("OomScoreAdj")
    if isinstance(oom, int | float) and oom < 0:
        raise _refuse(
            f"--oom-score-adj={oom}",
            "a negative value makes the kernel kill host processes before the container",
        )
    _check_cap_add(hc.field("CapAdd"))
    _check_security_opts(hc.field("SecurityOpt"))
    _check_sysctls(hc.field("Sysctls"))
    log = _obj(hc.field("LogConfig"))
    driver = log.field("Type") or ""
    if driver not in SAFE_LOG_DRIVERS:
        raise _refuse(
            f"log driver {driver!r}",
            "other drivers send logs from the host (syslog, "
            "gelf, fluentd, journald); allowed: json-file, local, none",
        )
    for key in _obj(hc.field("StorageOpt")).keys():
        if key != "size":
            raise _refuse(f"storage option {key!r}", "only size= is allowed")
    driver = hc.field("VolumeDriver") or ""
    if driver not in ("", "local"):
        raise _refuse(f"volume driver {driver!r}", "only the local driver is available")
    for entry in _list(hc.field("VolumesFrom")):
        if isinstance(entry, str):
            _check_joinable(entry.split(":")[0], f"--volumes-from {entry}", facts)
    mounts = hc.field("Mounts")
    if mounts is not None:
        mounts = [_check_mount(_obj(m), ctx) for m in _list(mounts)]
        hc.set_field("Mounts", mounts)
    binds = hc.field("Binds")
    if binds is not None:
        # Host paths become pinned Mounts (see bind_source); volumes and the docker socket stay.
        checked = [_check_bind_string(b, ctx) for b in _list(binds)]
        hc.set_field("Binds", [b for b in checked if isinstance(b, str)])
        moved = [b for b in checked if isinstance(b, JObject)]
        if moved:
            hc.set_field("Mounts", [*(mounts or []), *moved])


def _check_joinable(ref: str, what: str, facts: Facts) -> None:
    c = _container(facts, ref)
    if c is not None and c.hub_managed:
        raise _refuse(
            what,
            "the container is your environment, managed by the hub; joining its "
            "namespaces or volumes would tamper with it and break its checkpoints",
        )


def _check_network_ref(ref: str, facts: Facts) -> None:
    if ref.lower() == "host":
        raise _refuse("the host network (--network=host)", _NS_WHY["network"])
    n = facts.get(("network", ref))
    if n is not None and n.driver not in ("bridge", "null"):
        raise _refuse(f"network {ref!r} (driver {n.driver})", _NS_WHY["network"])


def _check_labels(labels: Any, kind: str) -> None:
    for key in _obj(labels).keys():
        if key.startswith(RESERVED_LABEL_PREFIX):
            raise _refuse(
                f"{kind} label {key!r}",
                f"labels under {RESERVED_LABEL_PREFIX} are reserved for the hub",
            )


def normalize_capability(cap: str) -> str:
    cap = cap.strip().upper()
    return cap[4:] if cap.startswith("CAP_") else cap


def _check_cap_add(caps: Any) -> None:
    for cap in _list(caps):
        name = normalize_capability(str(cap))
        if name not in SAFE_CAPABILITIES:
            raise _refuse(
                f"capability {name} (--cap-add)",
                "only these may be added: " + ", ".join(sorted(SAFE_CAPABILITIES)),
            )


def _check_security_opts(opts: Any) -> None:
    for opt in _list(opts):
        text = str(opt).strip()
        if text.lower() in SAFE_SECURITY_OPTS:
            continue
        key = re.split(r"[=:]", text, maxsplit=1)[0].lower()
        why = {
            "seccomp": "the default seccomp profile blocks syscalls that are host root without it",
            "apparmor": "the default AppArmor profile confines root in the container",
            "label": "SELinux labels confine root in the container",
            "systempaths": "masked /proc and /sys paths are host kernel interfaces",
            "no-new-privileges": "setuid programs must not gain privileges",
        }.get(key, "only no-new-privileges may be set")
        raise _refuse(f"security option {text!r} (--security-opt)", why)


def _check_sysctls(sysctls: Any) -> None:
    for key in _obj(sysctls).keys():
        if key in NAMESPACED_SYSCTLS or key.startswith(NAMESPACED_SYSCTL_PREFIXES):
            continue
        raise _refuse(
            f"sysctl {key!r} (--sysctl)",
            "only sysctls of the container's own IPC and network namespaces are allowed "
            "(kernel.msg*, kernel.sem, kernel.shm*, fs.mqueue.*, net.*)",
        )


def _check_volume_driver(driver: Any, options: Any) -> None:
    driver = driver or ""
    if driver not in ("", "local"):
        raise _refuse(f"volume driver {driver!r}", "only the local driver is available")
    opts = {k.lower(): str(v) for k, v in _obj(options).pairs}
    if not opts:
        return
    if (
        opts.get("type") != "tmpfs"
        or opts.get("device", "tmpfs") != "tmpfs"
        or set(opts)
        - {
            "type",
            "device",
            "o",
        }
    ):
        raise _refuse(
            "volume driver options " + ", ".join(f"{k}={v}" for k, v in sorted(opts.items())),
            "the local driver mounts them on the host as root (bind mounts of host paths, NFS, "
            "block devices); only type=tmpfs with size/mode/uid/gid is allowed",
        )
    for item in filter(None, opts.get("o", "").split(",")):
        if item.split("=")[0] not in SAFE_TMPFS_VOLUME_OPTIONS:
            raise _refuse(
                f"tmpfs volume option {item!r}",
                "allowed: " + ", ".join(sorted(SAFE_TMPFS_VOLUME_OPTIONS)),
            )


# --- bind mounts ----------------------------------------------------------------------------------


def _check_bind_string(bind: Any, ctx: PolicyContext) -> str | JObject:
    """``src:dst[:opts]`` from HostConfig.Binds; a source without a leading ``/`` is a volume.

    A host path comes back as a ``Mounts`` entry of its pin (``bind_source``): for a ``Binds``
    source the daemon creates what is missing at start, and would bind an empty directory where
    a pin is gone; for a ``Mounts`` bind it refuses to start instead."""
    if not isinstance(bind, str):
        raise _refuse(f"bind {bind!r}", "not a string")
    parts = bind.split(":")
    if len(parts) < 2 or len(parts) > 3:
        raise _refuse(f"bind {bind!r}", "expected source:destination[:options]")
    src, dst = parts[0], parts[1]
    opts = parts[2] if len(parts) == 3 else ""
    flags = [opt for opt in opts.split(",") if opt]
    for opt in flags:
        if opt not in BIND_OPTIONS:
            raise _refuse(
                f"bind option {opt!r} in {bind!r}",
                "shared propagation would let the "
                "container's mounts appear on the host; allowed: "
                + ", ".join(sorted(BIND_OPTIONS)),
            )
    if not src.startswith("/"):
        return bind  # a named volume on the local driver
    if src in DOCKER_SOCKET_PATHS and ctx.policy_socket:
        return ":".join([ctx.policy_socket, dst] + ([opts] if opts else []))
    if "ro" in flags and "rw" in flags:
        raise _refuse(f"bind {bind!r}", "ro and rw together; choose one")
    source = bind_source(src, ctx, readonly="ro" in flags, create=True)
    mount = JObject([("Type", "bind"), ("Source", source), ("Target", dst)])
    propagation = [o for o in flags if o in SAFE_BIND_PROPAGATION]
    if propagation:
        mount.set_field("BindOptions", JObject([("Propagation", propagation[-1])]))
    consistency = [o for o in flags if o in ("consistent", "cached", "delegated")]
    if consistency:
        mount.set_field("Consistency", consistency[-1])
    # z/Z (SELinux relabelling) and nocopy (volumes only) have no Mounts form; the daemon
    # relabels nothing through a pin.
    return mount


def _check_mount(mount: JObject, ctx: PolicyContext) -> JObject:
    kind = (mount.field("Type") or "").lower()
    if kind == "bind":
        propagation = _obj(mount.field("BindOptions")).field("Propagation") or ""
        if propagation not in SAFE_BIND_PROPAGATION:
            raise _refuse(
                f"bind propagation {propagation!r}",
                "shared propagation would let the container's mounts appear on the host",
            )
        src = mount.field("Source")
        if not isinstance(src, str) or not src.startswith("/"):
            raise _refuse(f"bind mount source {src!r}", "must be an absolute path")
        if src in DOCKER_SOCKET_PATHS and ctx.policy_socket:
            mount.set_field("Source", ctx.policy_socket)
            return mount
        readonly = _truthy(mount.field("ReadOnly"))
        mount.set_field("Source", bind_source(src, ctx, readonly=readonly, create=False))
        if readonly:
            # The pin is read-only itself. Asked of the daemon, runc would remount the bind
            # read-only and drop the pin's nosuid,nodev on the way.
            mount.set_field("ReadOnly", False)
    elif kind == "volume":
        options = _obj(mount.field("VolumeOptions"))
        config = _obj(options.field("DriverConfig"))
        _check_volume_driver(config.field("Name"), config.field("Options"))
        _check_labels(options.field("Labels"), "volume")
    elif kind != "tmpfs":
        raise _refuse(
            f"mount type {kind!r}", "allowed: bind (inside your workspace), volume, tmpfs"
        )
    return mount


def workspace_relpath(src: str, ctx: PolicyContext) -> str:
    """The path inside the workspace that a bind of ``src`` names, or a refusal.

    ``src`` is either the environment's view (``/workspace/...``) or the host path of the user's
    workspace. It is resolved on the host (symlinks and ``..``) and must land strictly inside the
    workspace and outside its checkpoint directory.
    """
    if not ctx.workspace or ctx.realpath(ctx.workspace) == "/":
        raise _refuse(
            f"a bind mount of {src}",
            "your environment is ephemeral: it has no workspace on the host to bind; use a "
            "named volume instead",
        )
    clean = posixpath.normpath(src)
    cws = posixpath.normpath(ctx.container_workspace)
    if clean == cws or clean.startswith(cws.rstrip("/") + "/"):
        host = ctx.workspace.rstrip("/") + clean[len(cws.rstrip("/")) :]
    else:
        host = src
    workspace = ctx.realpath(ctx.workspace)
    real = ctx.realpath(host)
    rel = (
        posixpath.relpath(real, workspace) if real.startswith(workspace.rstrip("/") + "/") else None
    )
    if real == workspace:
        raise _refuse(
            f"a bind mount of your whole workspace ({src})",
            f"it holds the hub's checkpoint images; bind a directory inside it, e.g. {cws}/project",
        )
    if rel is None or rel.startswith(".."):
        raise _refuse(
            f"a bind mount of {src}",
            f"only directories inside your workspace ({cws}) may be bind-mounted (after "
            "resolving symlinks and '..')",
        )
    if PurePosixPath(rel).parts[0] == CHECKPOINT_DIR:
        raise _refuse(f"a bind mount of {src}", "the checkpoint directory belongs to the hub")
    return rel


def bind_source(
    src: str, ctx: PolicyContext, *, readonly: bool = False, create: bool = False
) -> str:
    """The source to hand the daemon for a bind of ``src``, or a refusal.

    The daemon resolves a bind source when the container *starts*, possibly long after this
    check, and the user can swap a checked directory for a symlink in between. So the checked
    path (``workspace_relpath``) is pinned (``ctx.pin``, hubcontrol.policysocket.pins): opened below the
    workspace without following any symlink and bind-mounted by descriptor onto a root-only
    path, which is what the daemon gets. Symlinks *inside* the pinned directory keep working.
    """
    if src in DOCKER_SOCKET_PATHS and ctx.policy_socket:
        return ctx.policy_socket
    rel = workspace_relpath(src, ctx)
    if ctx.pin is None:
        raise _refuse(f"a bind mount of {src}", "this policy socket cannot pin bind sources")
    try:
        return ctx.pin(rel, readonly, create)
    except FileNotFoundError:
        raise _refuse(
            f"a bind mount of {src}", "bind source path does not exist (create it first)"
        ) from None
    except OSError as e:
        why = {
            errno.ELOOP: "a symlink appeared on its path while it was checked; try again",
            errno.EXDEV: "it leads out of your workspace",
            errno.ENOTDIR: "a part of its path is not a directory",
        }.get(e.errno or 0, f"it could not be opened ({e.strerror})")
        raise _refuse(f"a bind mount of {src}", why) from None
    except ValueError:
        raise _refuse(
            f"a bind mount of {src}", "only paths inside your workspace may be bind-mounted"
        ) from None


def _pins_label(pinned: Mapping[str, tuple[str, bool]]) -> str:
    return json.dumps(
        {pid: {"path": rel, "ro": ro} for pid, (rel, ro) in sorted(pinned.items())},
        separators=(",", ":"),
    )


# --- registries -----------------------------------------------------------------------------------


def registry_host(reference: str) -> str | None:
    """The registry host[:port] of an image reference, or None for Docker Hub."""
    first, sep, _ = reference.partition("/")
    if not sep:
        return None
    if "." in first or ":" in first or first == "localhost":
        return first.lower()
    return None


def _registry_host_of_address(address: str) -> str:
    address = re.sub(r"^[a-z]+://", "", address.strip(), flags=re.I)
    return address.split("/")[0].lower()


def _check_registry_host(host: str | None, ctx: PolicyContext, what: str) -> None:
    if not host or host in ctx.allowed_registries:
        return
    name = host
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name in ("localhost",) or name.endswith(".localhost"):
        raise _refuse(f"{what} from registry {host}", _WHY_REGISTRY)
    ip = _parse_ip(name)
    if ip is None:
        return
    for net in ctx.forbidden_registry_networks:
        if ip in ipaddress.ip_network(net):
            raise _refuse(f"{what} from registry {host}", _WHY_REGISTRY)


def _parse_ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as any resolver on the daemon's side might read it: IPv4-mapped IPv6 as IPv4,
    and the inet_aton forms (``127.1``, ``0x7f.0.0.1``, ``2130706433``) as what they mean."""
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        try:
            return ipaddress.IPv4Address(socket.inet_aton(name))
        except OSError:
            return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


_WHY_REGISTRY = (
    "the daemon connects from the host's network, where this address is the host, the hub or "
    "another user"
)


def allowed_endpoints() -> Iterable[tuple[str, str, str]]:
    """(method, path pattern, name) of every allowed endpoint, for documentation."""
    for ep in ENDPOINTS:
        yield ep.method, ep.pattern.pattern.strip("^$"), ep.name
