"""Per-user addressing, bridges and isolation rules.

Each user network ID selects a /24 block ``B`` of the user subnet pool (docs/architecture.md):
``B.0/26`` is the environment network (bridge ``rdh<net_id>e``, gateway ``B.1``, the environment
container at ``B.2`` = SERVICE_IP), ``B.64/26`` the daemon's default bridge ``rdh<net_id>``, and
``B.128/25`` the daemon's ``default-address-pools`` for the user's own networks.

Per-user daemons run with ``--iptables=false``: the hub owns every rule, so daemons never fight
over shared chains. Rules live in ``RDH-FORWARD`` (first in ``FORWARD``), ``RDH-INPUT`` (first in
``INPUT``) and ``RDH-POSTROUTING`` (nat, masquerading outbound traffic), each tagged with a
comment ``rdh:<net_id>`` so one user's rules are removed without touching anyone else's.

A per-user dockerd itself runs in the host's network namespace: what it fetches (image pulls,
the classic builder's ``ADD <url>``) never passes ``FORWARD``. ``RDH-OUTPUT`` (first in
``OUTPUT``, IPv4 and IPv6) matches the daemon's cgroup v2 group (``-m cgroup --path``, which
includes containerd and the shims it spawns) and rejects its new connections to other users'
blocks, to the host's own and loopback addresses and to anything not reached through an uplink,
except DNS to the host's resolvers and the registries the operator allows (``daemon_rules``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubcontrol.errors import NetworkError
from hubcontrol.netids import index_of

log = logging.getLogger(__name__)

FORWARD_CHAIN = "RDH-FORWARD"
OUTPUT_CHAIN = "RDH-OUTPUT"
INPUT_CHAIN = "RDH-INPUT"
NAT_CHAIN = "RDH-POSTROUTING"
DOCKER_USER = "DOCKER-USER"
ENV_NETWORK = "rediacc-hub-env"
BRIDGE_PREFIX = "rdh"


@dataclass(frozen=True)
class UserNetwork:
    """The addresses of one user's block (pure data, derived from the net ID and the pool)."""

    net_id: int
    pool: ipaddress.IPv4Network
    block: ipaddress.IPv4Network
    env_subnet: ipaddress.IPv4Network
    env_gateway: ipaddress.IPv4Address
    service_ip: ipaddress.IPv4Address
    bridge_subnet: ipaddress.IPv4Network
    bridge_address: ipaddress.IPv4Interface
    address_pool: ipaddress.IPv4Network

    @property
    def bridge(self) -> str:
        """The daemon's default bridge (``docker run`` containers)."""
        return f"{BRIDGE_PREFIX}{self.net_id}"

    @property
    def env_bridge(self) -> str:
        """The bridge of the environment network, created by the daemon from the network option."""
        return f"{BRIDGE_PREFIX}{self.net_id}e"

    @property
    def tag(self) -> str:
        return f"rdh:{self.net_id}"


def parse_pool(pool: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(pool, strict=True)
    except ValueError as e:
        raise NetworkError(
            "The hub's user subnet pool is misconfigured.",
            f"--user-subnet-pool {pool!r} is not an IPv4 network ({e}); use e.g. 10.208.0.0/12",
        ) from None
    if net.prefixlen > 24:
        raise NetworkError(
            "The hub's user subnet pool is misconfigured.",
            f"--user-subnet-pool {pool!r} is smaller than one /24; use a /24 or larger",
        )
    return net


def capacity(pool: str) -> int:
    """How many users fit in ``pool`` (one /24 each)."""
    return 1 << (24 - parse_pool(pool).prefixlen)


def user_network(net_id: int, pool: str) -> UserNetwork:
    """The block of ``net_id`` in ``pool``; NetworkError when the pool is too small for it."""
    net = parse_pool(pool)
    index = index_of(net_id)
    if index >= capacity(pool):
        raise NetworkError(
            "The hub has no room for another user's network; ask the operator.",
            f"net ID {net_id} (block {index}) is outside --user-subnet-pool {pool} "
            f"({capacity(pool)} blocks); use a larger pool",
        )
    base = int(net.network_address) + (index << 8)
    block = ipaddress.IPv4Network((base, 24))
    addr = ipaddress.IPv4Address
    return UserNetwork(
        net_id=net_id,
        pool=net,
        block=block,
        env_subnet=ipaddress.IPv4Network((base, 26)),
        env_gateway=addr(base + 1),
        service_ip=addr(base + 2),
        bridge_subnet=ipaddress.IPv4Network((base + 64, 26)),
        bridge_address=ipaddress.IPv4Interface((base + 65, 26)),
        address_pool=ipaddress.IPv4Network((base + 128, 25)),
    )


def daemon_network_config(net: UserNetwork) -> dict[str, Any]:
    """The network part of a per-user ``daemon.json``."""
    return {
        "bridge": net.bridge,
        "iptables": False,
        "ip-masq": False,
        # published ports bind to the user's own bridge address, never the host's interfaces
        "ip": str(net.bridge_address.ip),
        "default-address-pools": [{"base": str(net.address_pool), "size": 28}],
    }


def overlapping_routes(
    pool: ipaddress.IPv4Network,
    routes: Iterable[dict[str, Any]],
    *,
    ours: Sequence[str] = (BRIDGE_PREFIX,),
) -> list[str]:
    """Routes (from ``ip -j route``) that overlap ``pool`` and are not the hub's.

    The hub's: routes on its bridges (``rdh<net_id>``, ``rdh<net_id>e``), and routes on a
    ``br-*`` bridge (the one dockerd makes for a ``docker network create``/compose network)
    inside the address pool of a user's block (its upper /25, ``UserNetwork.address_pool``):
    a per-user daemon's own networks. Without the second rule one user's compose network made
    every later ``hub start`` refuse the pool."""
    found = []
    for route in routes:
        dst = route.get("dst", "")
        if dst in ("default", "") or ":" in dst:
            continue
        try:
            net = ipaddress.IPv4Network(dst, strict=False)
        except ValueError:
            continue
        dev = route.get("dev", "")
        if not net.overlaps(pool) or any(dev.startswith(p) for p in ours):
            continue
        if dev.startswith("br-") and _in_a_users_address_pool(net, pool):
            continue
        found.append(f"{dst} dev {dev}")
    return found


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True)
    if check and proc.returncode:
        raise NetworkError(
            "The hub could not set up your network.",
            f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}",
        )
    return proc


def _in_a_users_address_pool(net: ipaddress.IPv4Network, pool: ipaddress.IPv4Network) -> bool:
    if not net.subnet_of(pool) or net.prefixlen < 25:
        return False
    offset = int(net.network_address) & 0xFF  # within the user's /24 block
    return offset >= 128


def check_pool(pool: str) -> None:
    """NetworkError when a host route not made by the hub overlaps the pool."""
    routes = json.loads(_run("ip", "-j", "route").stdout or "[]")
    clash = overlapping_routes(parse_pool(pool), routes)
    if clash:
        raise NetworkError(
            "The hub's user networks clash with the host's networks; ask the operator.",
            f"--user-subnet-pool {pool} overlaps host routes: {', '.join(clash)}; "
            "choose a pool no host interface uses",
        )


def link_exists(name: str) -> bool:
    return _run("ip", "link", "show", "dev", name, check=False).returncode == 0


def ensure_bridge(name: str, address: ipaddress.IPv4Interface) -> None:
    """Create bridge ``name`` with ``address`` and bring it up (idempotent)."""
    if not link_exists(name):
        proc = _run("ip", "link", "add", name, "type", "bridge", check=False)
        if proc.returncode and not link_exists(name):
            raise NetworkError(
                "The hub could not set up your network.",
                f"ip link add {name} type bridge: {proc.stderr.strip()}",
            )
    shown = json.loads(_run("ip", "-j", "addr", "show", "dev", name).stdout or "[]")
    have = {
        f"{a['local']}/{a['prefixlen']}"
        for link in shown
        for a in link.get("addr_info", [])
        if a.get("family") == "inet"
    }
    if str(address) not in have:
        for stale in have:
            _run("ip", "addr", "del", stale, "dev", name, check=False)
        _run("ip", "addr", "add", str(address), "dev", name)
    _run("ip", "link", "set", name, "up")


def delete_link(name: str) -> None:
    _run("ip", "link", "del", name, check=False)


USER_NETWORK_BRIDGE_PREFIX = "br-"  # dockerd's name for the bridge of a user-made network


def stale_bridges(links: Sequence[dict[str, Any]], block: ipaddress.IPv4Network,
                  ports: Callable[[str], int]) -> list[str]:  # fmt: skip
    """Bridges of docker networks a user made in ``block`` (``br-*`` with every IPv4 address
    inside it) that nothing is attached to (``ports(name)`` is 0), from ``ip -j addr``'s
    ``links``. Pure. A user's daemon that died or was destroyed leaves them behind; with the
    same addresses as the next daemon of that network ID's networks, they take its routes
    (traffic to the new network goes to the dead bridge)."""
    found = []
    for link in links:
        name = link.get("ifname", "")
        if not name.startswith(USER_NETWORK_BRIDGE_PREFIX):
            continue
        addresses = [a for a in link.get("addr_info", []) if a.get("family") == "inet"]
        if not addresses:
            continue
        inside = all(
            ipaddress.IPv4Address(a["local"]) in block for a in addresses if a.get("local")
        )
        if inside and ports(name) == 0:
            found.append(name)
    return found


def _bridge_ports(name: str) -> int:
    try:
        return len(os.listdir(f"/sys/class/net/{name}/brif"))
    except OSError:
        return -1  # not a bridge (or gone): never ours to delete


def remove_stale_bridges(block: ipaddress.IPv4Network) -> list[str]:
    """Delete ``stale_bridges`` in ``block`` on this host; returns their names. Only before a
    daemon of that block starts (its own networks' bridges are made again by dockerd at start)
    or after it is gone for good."""
    listing = _run("ip", "-j", "addr", "show", "type", "bridge", check=False)
    try:
        links = json.loads(listing.stdout or "[]")
    except json.JSONDecodeError:
        return []
    doomed = stale_bridges(links, block, _bridge_ports)
    for name in doomed:
        delete_link(name)
    return doomed


def block_of(bridge: str) -> ipaddress.IPv4Network | None:
    """The user's /24 block that hub bridge ``bridge`` (``rdh<id>``, ``rdh<id>e``) is in, from
    its first IPv4 address; None when it has none (or is gone)."""
    listing = _run("ip", "-j", "-4", "addr", "show", "dev", bridge, check=False)
    try:
        for link in json.loads(listing.stdout or "[]"):
            for a in link.get("addr_info", []):
                return ipaddress.IPv4Network(f"{a['local']}/24", strict=False)
    except (json.JSONDecodeError, KeyError, ValueError):
        pass
    return None


# -- iptables -------------------------------------------------------------------------------


def isolation_rules(
    net: UserNetwork, uplinks: Sequence[str] = ()
) -> list[tuple[str, str, list[str]]]:
    """(table, chain, rule) for one user, in order. Pure; ``-m comment`` tags are added on apply.

    * within the block: allowed (environment <-> the user's own containers)
    * replies to connections the block opened: allowed
    * from the block to any other pool address, or new connections into the block from elsewhere
      (other users, other daemons' containers): dropped
    * from the block to the world, i.e. out through an ``uplinks`` interface (those carrying a
      default route): allowed, masqueraded; anywhere else (the host daemon's bridges and their
      containers, other local networks): dropped
    * from the block to the host itself (INPUT): only replies; hub, host and loopback services
      are out of reach
    """
    b, pool = str(net.block), str(net.pool)
    replies = ["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"]
    forward = [
        ["-s", b, "-d", b, "-j", "ACCEPT"],
        ["-d", b, *replies],
        ["-s", b, "-d", pool, "-j", "DROP"],
        ["-d", b, "-j", "DROP"],
        *(["-s", b, "-o", dev, "-j", "ACCEPT"] for dev in uplinks),
        ["-s", b, "-j", "DROP"],
    ]
    return [
        *(("filter", FORWARD_CHAIN, rule) for rule in forward),
        ("filter", INPUT_CHAIN, ["-s", b, *replies]),
        ("filter", INPUT_CHAIN, ["-s", b, "-j", "DROP"]),
        ("nat", NAT_CHAIN, ["-s", b, "!", "-d", b, "-j", "MASQUERADE"]),
    ]


def uplinks() -> list[str]:
    """Interfaces carrying a default route (the way to the world), from ``ip -j route``."""
    routes = json.loads(_run("ip", "-j", "route", "show", "default").stdout or "[]")
    return sorted({r["dev"] for r in routes if r.get("dev")})


_HOOKS = (
    ("filter", "FORWARD", FORWARD_CHAIN),
    ("filter", "INPUT", INPUT_CHAIN),
    ("nat", "POSTROUTING", NAT_CHAIN),
)


def _ipt(table: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run("iptables", "-w", "10", "-t", table, *args, check=check)


RULES_LOCK = Path("/run/rediacc/iptables.lock")
_thread_lock = threading.Lock()


@contextlib.contextmanager
def _rules_locked() -> Iterator[None]:
    """Serialise rule changes across threads and processes (several hubs or test runs).

    ``iptables -w`` only makes each command atomic; a check-then-insert needs this.
    """
    with _thread_lock:
        RULES_LOCK.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(RULES_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def ensure_chains() -> None:
    """Create the RDH chains and hook each first in its built-in chain (idempotent)."""
    with _rules_locked():
        _ensure_chains()


# IPv6 is off on user networks (docker disables it in containers of non-IPv6 networks); these
# host-wide rules keep it that way should a container get it back: nothing over IPv6 from or to
# a user bridge. They match every rdh* bridge, so they are added once and never removed.
_IPV6_RULES = (
    ("INPUT", ["-i", f"{BRIDGE_PREFIX}+", "-j", "DROP"]),
    ("FORWARD", ["-i", f"{BRIDGE_PREFIX}+", "-j", "DROP"]),
    ("FORWARD", ["-o", f"{BRIDGE_PREFIX}+", "-j", "DROP"]),
)


def _ensure_ipv6_rules() -> None:
    for chain, rule in _IPV6_RULES:
        try:
            check = _run("ip6tables", "-w", "10", "-C", chain, *rule, check=False)
        except FileNotFoundError:
            return  # no ip6tables: no IPv6 firewall to configure
        if check.returncode:
            _run("ip6tables", "-w", "10", "-I", chain, "1", *rule, check=False)


def _ensure_chains() -> None:
    _ensure_ipv6_rules()
    for table, builtin, chain in _HOOKS:
        _ipt(table, "-N", chain, check=False)
        if _ipt(table, "-C", builtin, "-j", chain, check=False).returncode:
            _ipt(table, "-I", builtin, "1", "-j", chain)
    # A daemon with iptables on (the host's, where environments run without per-user docker)
    # inserts ACCEPT rules for its networks above ours in FORWARD; DOCKER-USER is the chain it
    # promises to evaluate before them, so the user rules are hooked there too.
    if _ipt("filter", "-S", DOCKER_USER, check=False).returncode == 0:
        if _ipt("filter", "-C", DOCKER_USER, "-j", FORWARD_CHAIN, check=False).returncode:
            _ipt("filter", "-I", DOCKER_USER, "1", "-j", FORWARD_CHAIN)


def apply_isolation(net: UserNetwork) -> None:
    """Install one user's rules (idempotent: replaces any earlier set for the same net ID)."""
    with _rules_locked():
        _apply_isolation(net)


def _apply_isolation(net: UserNetwork) -> None:
    _ensure_chains()
    rules = isolation_rules(net, uplinks())
    tagged = [(t, c, [*r, "-m", "comment", "--comment", net.tag]) for t, c, r in rules]
    if all(_ipt(t, "-C", c, *r, check=False).returncode == 0 for t, c, r in tagged):
        return  # already in force; re-adding would open a window without them
    _remove_isolation(net.net_id)
    for table, chain, rule in tagged:
        _ipt(table, "-A", chain, *rule)


def remove_isolation(net_id: int) -> None:
    """Delete every rule tagged ``rdh:<net_id>`` from the RDH chains (the daemon's included)."""
    with _rules_locked():
        _remove_isolation(net_id)
        for family in (4, 6):
            _remove_tagged(family, "filter", OUTPUT_CHAIN, net_id)


def _remove_isolation(net_id: int) -> None:
    for table, _builtin, chain in _HOOKS:
        _remove_tagged(4, table, chain, net_id)


def _remove_tagged(
    family: int, table: str, chain: str, net_id: int, mark: str = "", only_marked: bool = False
) -> None:
    """Delete the rules of ``chain`` tagged ``rdh:<net_id>``; with ``mark``, only those (not)
    also tagged ``mark``, as ``only_marked`` says."""
    tag = f'"rdh:{net_id}"'
    alt = f"rdh:{net_id}"
    try:
        listing = _iptables(family, table, "-S", chain, check=False)
    except FileNotFoundError:
        return  # no ip6tables
    if listing.returncode:
        return
    doomed: list[list[str]] = []
    for line in listing.stdout.splitlines():
        words = line.split()
        if words[:2] != ["-A", chain] or (tag not in words and alt not in words):
            continue
        marked = bool(mark) and (mark in words or f'"{mark}"' in words)
        if mark and marked != only_marked:
            continue
        doomed.append(["-D", chain, *(w.strip('"') for w in words[2:])])
    if not _restore(family, table, doomed):
        # one of them went meanwhile (the batch is all or nothing): each on its own, as before
        for rule in doomed:
            _iptables(family, table, *rule, check=False)


def _iptables(
    family: int, table: str, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    exe = "iptables" if family == 4 else "ip6tables"
    return _run(exe, "-w", "10", "-t", table, *args, check=check)


def restore_input(table: str, lines: Sequence[Sequence[str]]) -> str | None:
    """The ``iptables-restore --noflush`` input applying ``lines`` (``["-A", chain, *rule]`` or
    ``["-D", ...]``) to ``table`` in one go; None when an argument cannot be written in that
    format as is (whitespace, quotes, a comment sign), to be applied rule by rule instead."""
    for line in lines:
        for word in line:
            if not word or any(c.isspace() or c in "\"'#\\" for c in word):
                return None
    return f"*{table}\n" + "".join(" ".join(line) + "\n" for line in lines) + "COMMIT\n"


def _restore(family: int, table: str, lines: Sequence[Sequence[str]]) -> bool:
    """Apply ``lines`` with one ``iptables-restore --noflush``: one process instead of one per
    rule (about 10 ms each here; a resume's daemon rules were some 20 of them), and all of them
    or none (with the nf_tables backend one transaction). False when that did not happen (the
    caller applies them one by one); nothing to apply is True."""
    if not lines:
        return True
    text = restore_input(table, lines)
    if text is None:
        return False
    exe = "iptables-restore" if family == 4 else "ip6tables-restore"
    try:
        proc = subprocess.run(
            [exe, "-w", "10", "--noflush"], input=text, capture_output=True, text=True
        )
    except FileNotFoundError:
        return False
    if proc.returncode:
        log.info("%s of %d rules failed, applying one by one: %s", exe, len(lines),
                 proc.stderr.strip()[:300])  # fmt: skip
        return False
    return True


def _have_ip6tables() -> bool:
    try:
        return _run("ip6tables", "-w", "10", "-S", "OUTPUT", check=False).returncode == 0
    except FileNotFoundError:
        return False


# -- the daemon's own traffic (OUTPUT) ------------------------------------------------------

Allowance = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, str, int]  # address, proto, port


def daemon_rules(
    net: UserNetwork,
    cgroup: str,
    uplinks4: Sequence[str] = (),
    uplinks6: Sequence[str] = (),
    allow: Iterable[Allowance] = (),
) -> list[tuple[int, list[str]]]:
    """(IP family, rule) for ``RDH-OUTPUT``, in order, for the daemon in cgroup v2 group ``cgroup``
    (relative to the cgroup2 root). Pure; ``-m comment`` tags are added on apply.

    * replies and related packets: returned to ``OUTPUT`` (the daemon's own listeners answer)
    * the user's own block: allowed (published ports' docker-proxy, the user's own service)
    * ``allow`` (DNS to the host's resolvers, the registries the operator allows): allowed, even
      on loopback or a host address
    * any other address of the user pool (other users): rejected
    * out through an uplink interface (those carrying a default route): allowed
    * anything else (loopback and the host's own addresses, which route through ``lo``; the host
      daemon's and other local networks): rejected
    """
    match = ["-m", "cgroup", "--path", cgroup]
    replies = ["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN"]
    allowed = sorted(set(allow), key=lambda a: (a[0].version, int(a[0]), a[1], a[2]))
    rules: list[tuple[int, list[str]]] = []
    for family, links in ((4, uplinks4), (6, uplinks6)):
        rules.append((family, [*match, *replies]))
        if family == 4:
            rules.append((family, [*match, "-d", str(net.block), "-j", "RETURN"]))
        for addr, proto, port in allowed:
            if addr.version == family:
                dest = f"{addr}/{32 if family == 4 else 128}"
                rule = ["-d", dest, "-p", proto, "-m", proto, "--dport", str(port), "-j", "RETURN"]
                rules.append((family, [*match, *rule]))
        if family == 4:
            rules.append((family, [*match, "-d", str(net.pool), "-j", "REJECT"]))
        rules.extend((family, [*match, "-o", dev, "-j", "RETURN"]) for dev in links)
        rules.append((family, [*match, "-j", "REJECT"]))
    return rules


def registry_host_port(registry: str) -> tuple[str, list[int]]:
    """The host and the ports the daemon uses for a registry ``host[:port]`` (HTTPS 443 and the
    plain-HTTP fallback 80 without a port). Pure."""
    registry = registry.strip().rstrip("/")
    if registry.startswith("["):
        host, _, rest = registry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif registry.count(":") == 1:
        host, port = registry.split(":")
    else:
        host, port = registry, ""
    if port:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise NetworkError(
                "The hub's registry settings are misconfigured.",
                f"registry {registry!r} has an invalid port; use host[:port]",
            )
        return host, [int(port)]
    return host, [443, 80]


def image_registry(image: str) -> str | None:
    """The registry ``host[:port]`` an image reference names, None for Docker Hub. Pure."""
    first, sep, _rest = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        return first
    return None


def nameservers(text: str) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf. Pure."""
    found = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            found.append(words[1].split("%")[0])
    return found


def daemon_allowances(
    registries: Iterable[str], resolv_conf: Path = Path("/etc/resolv.conf")
) -> list[Allowance]:
    """DNS to the host's resolvers and the addresses of ``registries`` (resolved now)."""
    out: list[Allowance] = []
    with contextlib.suppress(OSError):
        for server in nameservers(resolv_conf.read_text()):
            with contextlib.suppress(ValueError):
                addr = ipaddress.ip_address(server)
                out += [(addr, "udp", 53), (addr, "tcp", 53)]
    for registry in registries:
        host, ports = registry_host_port(registry)
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except OSError as e:
            log.warning("allowed registry %s does not resolve (%s): not allowed", registry, e)
            continue
        for info in infos:
            with contextlib.suppress(ValueError):
                addr = ipaddress.ip_address(str(info[4][0]).split("%")[0])
                out += [(addr, "tcp", port) for port in ports]
    return out


def cgroup2_root(mounts: str | None = None) -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup`` or, on hybrid hosts,
    ``/sys/fs/cgroup/unified``), from /proc/self/mounts; None without one."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return Path(fields[1])
    return None


def uplinks6() -> list[str]:
    try:
        routes = json.loads(_run("ip", "-6", "-j", "route", "show", "default").stdout or "[]")
    except NetworkError:
        return []
    return sorted({r["dev"] for r in routes if r.get("dev")})


def apply_daemon_isolation(
    net: UserNetwork, cgroup: str | None, allow: Iterable[Allowance]
) -> bool:
    """Install the ``RDH-OUTPUT`` rules of the daemon in cgroup v2 group ``cgroup``; False (and
    a warning) when there is no such group to match.

    A rule holds the group it was added for, not its path: a group removed and made again (the
    daemon stopped and started) is not matched by the old rules. So every rule also carries the
    group's inode and a digest of the rule set as a second comment; rules with another one are
    replaced, the new set going in before the old one is deleted (never a moment without rules).
    """
    root = cgroup2_root()
    group = root / cgroup if root is not None and cgroup else None
    try:
        ino = group.stat().st_ino if group is not None else None
    except OSError:
        ino = None
    if ino is None or cgroup is None:
        log.warning(
            "net %s: no cgroup v2 group %s for the daemon: its own traffic is not isolated",
            net.net_id,
            cgroup,
        )
        return False
    families = (4, 6) if _have_ip6tables() else (4,)
    rules = [
        (f, r) for f, r in daemon_rules(net, cgroup, uplinks(), uplinks6(), allow) if f in families
    ]
    digest = hashlib.sha256(repr(rules).encode()).hexdigest()[:10]
    version = f"rdh-set:{ino}.{digest}"
    tagged = [
        (f, [*r, "-m", "comment", "--comment", net.tag, "-m", "comment", "--comment", version])
        for f, r in rules
    ]
    with _rules_locked():
        for family in families:
            _ensure_output_chain(family)
        if all(
            _iptables(f, "filter", "-C", OUTPUT_CHAIN, *r, check=False).returncode == 0
            for f, r in tagged
        ):
            return True
        for family in families:  # a partial set of this version (tampered with): start over
            _remove_tagged(family, "filter", OUTPUT_CHAIN, net.net_id, version, only_marked=True)
        for family in families:
            adds = [["-A", OUTPUT_CHAIN, *r] for f, r in tagged if f == family]
            if not _restore(family, "filter", adds):
                for line in adds:
                    _iptables(family, "filter", *line)
        for family in families:
            _remove_tagged(family, "filter", OUTPUT_CHAIN, net.net_id, version)
    return True


def _ensure_output_chain(family: int) -> None:
    _iptables(family, "filter", "-N", OUTPUT_CHAIN, check=False)
    hooked = _iptables(family, "filter", "-C", "OUTPUT", "-j", OUTPUT_CHAIN, check=False)
    if hooked.returncode:
        _iptables(family, "filter", "-I", "OUTPUT", "1", "-j", OUTPUT_CHAIN)
