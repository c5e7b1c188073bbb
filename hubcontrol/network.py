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
import re
import socket
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
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
    """Whether interface ``name`` exists in the hub's network namespace: its sysfs entry, read
    without starting an ``ip`` process (every start asks). A name the kernel could not give an
    interface (empty, ``.``, ``..``, with ``/``) exists nowhere."""
    if name in ("", ".", "..") or "/" in name:
        return False
    return os.path.lexists(f"/sys/class/net/{name}")


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


RULES_LOCK = Path("/run/rediacc/iptables.lock")
_thread_lock = threading.Lock()


@contextlib.contextmanager
def _rules_locked() -> Iterator[None]:
    """Serialise rule changes across threads and processes (several hubs or test runs): each
    change reads the tables, then writes what they lack, and nothing may come between."""
    with _thread_lock:
        RULES_LOCK.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(RULES_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


# Every change below is one read of each table it touches (``iptables-save -t``) and at most one
# ``iptables-restore --noflush`` per table: what is missing (chains, hooks) and the user's rules
# replaced, all or nothing (one transaction on nf_tables; one table swap on legacy), so there is
# never a moment without them. It was one ``iptables`` process per check and per rule (some 70 per
# new user) under the host-wide lock above: with 32 users logging in at once, their starts queued
# on that lock (docs/performance.md, "Load held").


@dataclass(frozen=True)
class SavedTable:
    """One table as ``iptables-save -t <table>`` prints it (pure data): its chains, and each
    chain's ``-A`` lines as printed. Lines are split into words only when asked about: with 50
    users the table has hundreds of rules, and splitting them all (shlex) held the GIL some
    25 ms per read, three reads per start, beside the proxy's event loop."""

    chains: frozenset[str]
    lines: Mapping[str, tuple[str, ...]]  # chain -> its "-A <chain> ..." lines, in order

    def _rules(self, chain: str, needle: str = "") -> list[tuple[str, ...]]:
        found = []
        for line in self.lines.get(chain, ()):
            if needle in line and (words := rule_words(line)) is not None:
                found.append(words)
        return found

    @property
    def rules(self) -> tuple[tuple[str, ...], ...]:
        """Every rule as words (for tests and diagnostics), chain by chain."""
        return tuple(r for chain in self.lines for r in self._rules(chain))

    def has(self, chain: str, *spec: str) -> bool:
        wanted = ("-A", chain, *spec)
        return any(r == wanted for r in self._rules(chain))

    def tagged(self, chain: str, tag: str) -> list[tuple[str, ...]]:
        """The rules of ``chain`` carrying the comment ``tag``, in order."""
        return [r for r in self._rules(chain, tag) if tag in r[2:]]


EMPTY_TABLE = SavedTable(frozenset(), MappingProxyType({}))

# A word of an iptables-save line: a double-quoted string (with \" and \\ escaped, as
# xtables_save_string writes comments) or a run of anything but blanks.
_WORD = re.compile(r'"((?:[^"\\]|\\.)*)"(?=\s|$)|(\S+)')
_ESCAPED = re.compile(r"\\(.)")


def rule_words(line: str) -> tuple[str, ...] | None:
    """An ``iptables-save`` rule line as words, quotes and escapes removed (as ``shlex.split``
    reads it); None for a line with a stray quote or backslash (not one of the hub's). Pure."""
    words = []
    for m in _WORD.finditer(line):
        bare = m.group(2)
        if bare is None:
            words.append(_ESCAPED.sub(r"\1", m.group(1)))
        elif '"' in bare or "\\" in bare:
            return None
        else:
            words.append(bare)
    return tuple(words)


def parse_saved(text: str) -> SavedTable:
    """``iptables-save`` output of one table -> its chains and rule lines. Pure."""
    chains: set[str] = set()
    lines: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith(":"):
            chains.add(line[1:].split(" ", 1)[0])
        elif line.startswith("-A "):
            parts = line.split(" ", 2)
            if len(parts) >= 2:
                lines.setdefault(parts[1], []).append(line)
    return SavedTable(frozenset(chains), MappingProxyType({c: tuple(v) for c, v in lines.items()}))


def _saved(family: int, table: str) -> SavedTable | None:
    """The table now, or None when this family has no iptables here (no ip6tables)."""
    exe = "iptables-save" if family == 4 else "ip6tables-save"
    try:
        proc = subprocess.run([exe, "-t", table], capture_output=True, text=True)
    except FileNotFoundError:
        return None
    if proc.returncode:
        if family == 6:
            return None  # IPv6 filtering off in this kernel: nothing to configure
        raise NetworkError(
            "The hub could not set up your network.", f"{exe} -t {table}: {proc.stderr.strip()}"
        )
    return parse_saved(proc.stdout)


def _saved4(table: str) -> SavedTable:
    saved = _saved(4, table)
    if saved is None:
        raise NetworkError(
            "The hub could not set up your network.",
            "iptables-save is not installed (apt-get install iptables)",
        )
    return saved


def same_rules(saved: Sequence[Sequence[str]], wanted: Sequence[Sequence[str]]) -> bool:
    """Whether the rules ``iptables-save`` shows are ``wanted`` (both ``-A <chain> <spec>``), in
    order. iptables prints a rule's matches in its own order (a comment before the target), so
    each rule is compared as the set of its words. Pure."""
    return len(saved) == len(wanted) and all(
        sorted(s) == sorted(w) for s, w in zip(saved, wanted, strict=True)
    )


def _chain_and_hook(table: SavedTable, builtin: str, chain: str) -> list[list[str]]:
    """Restore lines making ``chain`` and hooking it first in ``builtin``, where missing."""
    lines = [] if chain in table.chains else [[f":{chain}", "-", "[0:0]"]]
    if not table.has(builtin, "-j", chain):
        lines.append(["-I", builtin, "1", "-j", chain])
    return lines


def _replace(
    table: SavedTable, chain: str, tag: str, wanted: Sequence[Sequence[str]]
) -> list[list[str]]:
    """Restore lines leaving exactly ``wanted`` (``-A`` lines) as ``chain``'s rules tagged ``tag``;
    none when they already are."""
    old = table.tagged(chain, tag)
    if same_rules(old, wanted):
        return []
    return [["-D", *r[1:]] for r in old] + [list(w) for w in wanted]


# IPv6 is off on user networks (docker disables it in containers of non-IPv6 networks); these
# host-wide rules keep it that way should a container get it back: nothing over IPv6 from or to
# a user bridge. They match every rdh* bridge, so they are added once and never removed.
_IPV6_RULES = (
    ("INPUT", ["-i", f"{BRIDGE_PREFIX}+", "-j", "DROP"]),
    ("FORWARD", ["-i", f"{BRIDGE_PREFIX}+", "-j", "DROP"]),
    ("FORWARD", ["-o", f"{BRIDGE_PREFIX}+", "-j", "DROP"]),
)


def isolation_changes(
    net: UserNetwork,
    uplinks: Sequence[str],
    filter4: SavedTable,
    nat4: SavedTable,
    filter6: SavedTable | None,
) -> dict[tuple[int, str], list[list[str]]]:
    """(family, table) -> the restore lines that leave ``net``'s rules (``isolation_rules``) in
    force in the given tables, the RDH chains made and hooked and the IPv6 guard in place. Empty
    lists when all of it already is. Pure."""
    saved = {"filter": filter4, "nat": nat4}
    changes: dict[tuple[int, str], list[list[str]]] = {(4, "filter"): [], (4, "nat"): []}
    for table, builtin, chain in _HOOKS:
        changes[4, table] += _chain_and_hook(saved[table], builtin, chain)
    # A daemon with iptables on (the host's, where environments run without per-user docker)
    # inserts ACCEPT rules for its networks above ours in FORWARD; DOCKER-USER is the chain it
    # promises to evaluate before them, so the user rules are hooked there too.
    if DOCKER_USER in filter4.chains and not filter4.has(DOCKER_USER, "-j", FORWARD_CHAIN):
        changes[4, "filter"].append(["-I", DOCKER_USER, "1", "-j", FORWARD_CHAIN])
    rules = isolation_rules(net, uplinks)
    for table, _builtin, chain in _HOOKS:
        wanted = [
            ["-A", chain, *r, "-m", "comment", "--comment", net.tag]
            for t, c, r in rules
            if (t, c) == (table, chain)
        ]
        changes[4, table] += _replace(saved[table], chain, net.tag, wanted)
    if filter6 is not None:
        changes[6, "filter"] = [
            ["-I", chain, "1", *rule]
            for chain, rule in _IPV6_RULES
            if not filter6.has(chain, *rule)
        ]
    return changes


def _apply_changes(changes: dict[tuple[int, str], list[list[str]]]) -> None:
    """Each table's lines in one ``iptables-restore --noflush``; NetworkError when one fails."""
    for (family, table), lines in changes.items():
        if lines and not _restore(family, table, lines):
            raise NetworkError(
                "The hub could not set up your network.",
                f"{'ip6' if family == 6 else 'ip'}tables-restore of {len(lines)} lines into "
                f"{table} failed: {lines!r}",
            )


def apply_isolation(net: UserNetwork) -> None:
    """Install one user's rules (idempotent: replaces any earlier set for the same net ID, in
    the same transaction, so there is never a moment without them)."""
    links = uplinks()  # outside the lock: `ip route` needs none of it
    with _rules_locked():
        filter4, nat4 = _saved4("filter"), _saved4("nat")
        _apply_changes(isolation_changes(net, links, filter4, nat4, _saved(6, "filter")))


def removal_changes(
    net_id: int, tables: Mapping[tuple[int, str], SavedTable | None]
) -> dict[tuple[int, str], list[list[str]]]:
    """(family, table) -> the restore lines deleting every rule tagged ``rdh:<net_id>`` from the
    RDH chains (the daemon's ``RDH-OUTPUT`` included). Pure."""
    tag = f"rdh:{net_id}"
    chains = {(4, t): [c for tt, _b, c in _HOOKS if tt == t] for t in ("filter", "nat")}
    chains[4, "filter"].append(OUTPUT_CHAIN)
    chains[6, "filter"] = [OUTPUT_CHAIN]
    changes: dict[tuple[int, str], list[list[str]]] = {}
    for key, names in chains.items():
        table = tables.get(key)
        if table is not None:
            changes[key] = [["-D", *r[1:]] for c in names for r in table.tagged(c, tag)]
    return changes


def remove_isolation(net_id: int) -> None:
    """Delete every rule tagged ``rdh:<net_id>`` from the RDH chains (the daemon's included)."""
    with _rules_locked():
        tables = {(f, t): _saved(f, t) for f, t in ((4, "filter"), (4, "nat"), (6, "filter"))}
        _apply_changes(removal_changes(net_id, tables))


def restore_input(table: str, lines: Sequence[Sequence[str]]) -> str | None:
    """The ``iptables-restore --noflush`` input applying ``lines`` (``["-A", chain, *rule]``,
    ``["-D", ...]``, ``["-I", ...]`` or a new chain ``[":CHAIN", "-", "[0:0]"]``) to ``table``
    in one go; None when an argument cannot be written in that format as is (whitespace, quotes,
    a comment sign)."""
    for line in lines:
        for word in line:
            if not word or any(c.isspace() or c in "\"'#\\" for c in word):
                return None
    return f"*{table}\n" + "".join(" ".join(line) + "\n" for line in lines) + "COMMIT\n"


def _restore(family: int, table: str, lines: Sequence[Sequence[str]]) -> bool:
    """Apply ``lines`` with one ``iptables-restore --noflush``: all of them or none. False when
    that did not happen (logged); nothing to apply is True."""
    if not lines:
        return True
    text = restore_input(table, lines)
    exe = "iptables-restore" if family == 4 else "ip6tables-restore"
    if text is None:
        log.error("%s: a rule has a word the restore format cannot carry: %r", exe, lines)
        return False
    try:
        proc = subprocess.run(
            [exe, "-w", "10", "--noflush"], input=text, capture_output=True, text=True
        )
    except FileNotFoundError:
        log.error("%s is not installed", exe)
        return False
    if proc.returncode:
        log.error("%s of %d lines failed: %s", exe, len(lines), proc.stderr.strip()[:500])
        return False
    return True


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
    replaced in the same transaction as the new set goes in (never a moment without rules).
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
    links4, links6 = uplinks(), uplinks6()  # outside the lock: `ip route` needs none of it
    with _rules_locked():
        tables = {4: _saved(4, "filter"), 6: _saved(6, "filter")}
        rules = daemon_rules(net, cgroup, links4, links6, allow)
        _apply_changes(daemon_isolation_changes(net, ino, rules, tables))
    return True


def daemon_isolation_changes(
    net: UserNetwork,
    ino: int,
    rules: Sequence[tuple[int, list[str]]],
    tables: Mapping[int, SavedTable | None],
) -> dict[tuple[int, str], list[list[str]]]:
    """(family, "filter") -> the restore lines leaving ``rules`` (``daemon_rules``) as ``net``'s
    rules in ``RDH-OUTPUT``, that chain made and hooked first in ``OUTPUT``; nothing for a family
    whose table is None (no ip6tables). Every rule carries a second comment, the group's inode
    and a digest of the set: a group made again, or another set, replaces all of them. Pure."""
    digest = hashlib.sha256(repr(list(rules)).encode()).hexdigest()[:10]
    version = f"rdh-set:{ino}.{digest}"
    changes: dict[tuple[int, str], list[list[str]]] = {}
    for family, table in tables.items():
        if table is None:
            continue
        wanted = [
            ["-A", OUTPUT_CHAIN, *r, "-m", "comment", "--comment", net.tag,
             "-m", "comment", "--comment", version]
            for f, r in rules
            if f == family
        ]  # fmt: skip
        lines = _chain_and_hook(table, "OUTPUT", OUTPUT_CHAIN)
        old = table.tagged(OUTPUT_CHAIN, net.tag)
        if not (len(old) == len(wanted) and all(version in r for r in old)):
            lines += [["-D", *r[1:]] for r in old] + wanted
        changes[family, "filter"] = lines
    return changes
