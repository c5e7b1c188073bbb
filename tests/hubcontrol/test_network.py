"""Addressing (pure) and bridges/iptables rules (real `ip` and `iptables` on this host)."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hubcontrol import network
from hubcontrol.errors import NetworkError
from hubcontrol.netids import NetIdRegistry

POOL = "10.208.0.0/12"


@pytest.mark.parametrize(
    ("net_id", "block", "service_ip", "bridge_ip"),
    [(32768, "10.208.0.0/24", "10.208.0.2", "10.208.0.65/26"),
     (32832, "10.208.1.0/24", "10.208.1.2", "10.208.1.65/26"),
     (32768 + 64 * 256, "10.209.0.0/24", "10.209.0.2", "10.209.0.65/26"),
     (32768 + 64 * 4095, "10.223.255.0/24", "10.223.255.2", "10.223.255.65/26")],
)  # fmt: skip
def test_each_net_id_owns_a_24_of_the_pool(net_id, block, service_ip, bridge_ip):
    net = network.user_network(net_id, POOL)
    assert str(net.block) == block
    assert str(net.service_ip) == service_ip
    assert str(net.bridge_address) == bridge_ip
    assert net.env_subnet.subnet_of(net.block) and net.bridge_subnet.subnet_of(net.block)
    assert net.address_pool.subnet_of(net.block)
    assert not net.env_subnet.overlaps(net.bridge_subnet)
    assert not net.bridge_subnet.overlaps(net.address_pool)
    assert net.service_ip in net.env_subnet and net.env_gateway in net.env_subnet
    assert net.bridge == f"rdh{net_id}" and net.env_bridge == f"rdh{net_id}e"
    assert len(net.env_bridge) <= 15  # IFNAMSIZ


def test_blocks_of_different_users_never_overlap():
    blocks = [network.user_network(32768 + 64 * i, POOL).block for i in range(300)]
    assert len({b.network_address for b in blocks}) == 300


@pytest.mark.parametrize(
    ("pool", "why"),
    [("10.208.0.0/25", "smaller than one /24"), ("banana", "not an IPv4 network"),
     ("10.208.0.1/12", "not an IPv4 network"), ("fd00::/8", "not an IPv4 network")],
)  # fmt: skip
def test_bad_pools_are_refused_with_the_flag_named(pool, why):
    with pytest.raises(NetworkError) as info:
        network.parse_pool(pool)
    assert "--user-subnet-pool" in info.value.log_message and why in info.value.log_message


def test_a_net_id_outside_a_small_pool_is_refused():
    assert network.capacity("10.208.0.0/23") == 2
    network.user_network(32832, "10.208.0.0/23")
    with pytest.raises(NetworkError):
        network.user_network(32896, "10.208.0.0/23")


def test_daemon_config_keeps_the_daemon_off_shared_chains():
    cfg = network.daemon_network_config(network.user_network(32768, POOL))
    assert cfg["iptables"] is False and cfg["ip-masq"] is False
    assert cfg["bridge"] == "rdh32768" and cfg["ip"] == "10.208.0.65"
    assert cfg["default-address-pools"] == [{"base": "10.208.0.128/25", "size": 28}]


@pytest.mark.parametrize(
    ("routes", "clash"),
    [([{"dst": "default", "dev": "eth0"}, {"dst": "172.17.0.0/16", "dev": "docker0"}], []),
     ([{"dst": "10.208.5.0/24", "dev": "rdh33088"}], []),
     ([{"dst": "10.0.0.0/8", "dev": "eth1"}], ["10.0.0.0/8 dev eth1"]),
     ([{"dst": "10.210.3.0/24", "dev": "br-x"}], ["10.210.3.0/24 dev br-x"]),
     ([{"dst": "10.224.0.0/16", "dev": "eth1"}], []),
     ([{"dst": "10.208.0.7", "dev": "tun0"}], ["10.208.0.7 dev tun0"]),
     # a user's own `docker network create` (compose): dockerd's br-* bridge in the upper /25
     # of their block (default-address-pools) is the hub's; one user's compose network used to
     # make every later hub start refuse the pool
     ([{"dst": "10.208.3.128/28", "dev": "br-5447a0354085"}], []),
     ([{"dst": "10.208.3.240/28", "dev": "br-1"}], []),
     # but not in the lower half (the environment's and daemon's bridges), nor wider, nor on
     # another kind of device
     ([{"dst": "10.208.3.0/28", "dev": "br-1"}], ["10.208.3.0/28 dev br-1"]),
     ([{"dst": "10.208.3.0/24", "dev": "br-1"}], ["10.208.3.0/24 dev br-1"]),
     ([{"dst": "10.208.3.128/28", "dev": "eth1"}], ["10.208.3.128/28 dev eth1"])],
)  # fmt: skip
def test_overlapping_routes(routes, clash):
    assert network.overlapping_routes(ipaddress.IPv4Network(POOL), routes) == clash


def test_isolation_rules_drop_other_users_and_the_host():
    net = network.user_network(32768, POOL)
    rules = network.isolation_rules(net, ["eth0", "wan1"])
    forward = [r for t, c, r in rules if c == network.FORWARD_CHAIN]
    # order matters: own block first, then replies, then the drops, then the world
    assert forward[0] == ["-s", "10.208.0.0/24", "-d", "10.208.0.0/24", "-j", "ACCEPT"]
    assert ["-s", "10.208.0.0/24", "-d", POOL, "-j", "DROP"] in forward
    # the world only through the uplinks; the host daemon's bridges and other local nets: no
    assert forward[-3:] == [
        ["-s", "10.208.0.0/24", "-o", "eth0", "-j", "ACCEPT"],
        ["-s", "10.208.0.0/24", "-o", "wan1", "-j", "ACCEPT"],
        ["-s", "10.208.0.0/24", "-j", "DROP"],
    ]
    inputs = [r for t, c, r in rules if c == network.INPUT_CHAIN]
    assert inputs[-1] == ["-s", "10.208.0.0/24", "-j", "DROP"]


# -- real kernel state ------------------------------------------------------------------------


@pytest.fixture
def claimed_net(tmp_path):
    """A net ID claimed host-wide, so parallel test runs never use the same bridge or rules."""
    registry = NetIdRegistry()
    root = tmp_path / "t-docker"
    net_id = registry.allocate(root)
    net = network.user_network(net_id, POOL)
    try:
        yield net
    finally:
        network.remove_isolation(net_id)
        network.delete_link(net.bridge)
        registry.release(net_id, root)


def _rules(table: str, chain: str) -> str:
    return subprocess.run(
        ["iptables", "-t", table, "-S", chain], capture_output=True, text=True
    ).stdout


@pytest.mark.docker
def test_bridge_and_rules_are_idempotent_and_removed(claimed_net):
    net = claimed_net
    network.ensure_bridge(net.bridge, net.bridge_address)
    network.ensure_bridge(net.bridge, net.bridge_address)
    shown = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", net.bridge], capture_output=True, text=True
    ).stdout
    assert shown.count("inet ") == 1 and str(net.bridge_address) in shown

    network.apply_isolation(net)
    network.apply_isolation(net)
    assert _rules("filter", network.FORWARD_CHAIN).count(net.tag) == 5 + len(network.uplinks())
    assert _rules("filter", network.INPUT_CHAIN).count(net.tag) == 2
    assert _rules("nat", network.NAT_CHAIN).count(net.tag) == 1
    assert (
        "-j RDH-FORWARD"
        in subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True).stdout
    )

    network.remove_isolation(net.net_id)
    for table, chain in (
        ("filter", network.FORWARD_CHAIN),
        ("filter", network.INPUT_CHAIN),
        ("nat", network.NAT_CHAIN),
    ):
        assert net.tag not in _rules(table, chain)
    network.delete_link(net.bridge)
    assert not network.link_exists(net.bridge)


@pytest.mark.docker
def test_rules_in_force_are_recognised_and_not_written_again(claimed_net):
    """What ``iptables-save`` prints of the rules the hub wrote (its own order of matches, its
    quoting) is recognised as the rules in force: a second start writes nothing, so it takes no
    ``iptables-restore`` and no transaction."""
    net = claimed_net
    network.apply_isolation(net)
    links = network.uplinks()
    saved = [network._saved(4, "filter"), network._saved(4, "nat"), network._saved(6, "filter")]
    changes = network.isolation_changes(net, links, *saved)
    assert changes == {(4, "filter"): [], (4, "nat"): [], (6, "filter"): []}
    # an operator's `iptables -F RDH-INPUT` (a firewall reload): the next start puts them back
    subprocess.run(["iptables", "-D", network.INPUT_CHAIN, "-s", str(net.block), "-m", "comment",
                    "--comment", net.tag, "-j", "DROP"], check=True)  # fmt: skip
    assert _rules("filter", network.INPUT_CHAIN).count(net.tag) == 1
    network.apply_isolation(net)
    inputs = _rules("filter", network.INPUT_CHAIN)
    assert inputs.count(net.tag) == 2
    # ... in their order: replies first, then the drop
    mine = [ln for ln in inputs.splitlines() if net.tag in ln]
    assert "ESTABLISHED" in mine[0] and mine[1].endswith("-j DROP")


@pytest.mark.docker
def test_the_default_pool_does_not_clash_with_this_host():
    network.check_pool(POOL)


@pytest.mark.docker
def test_a_pool_over_a_host_route_is_refused():
    routes = json.loads(
        subprocess.run(["ip", "-j", "route"], capture_output=True, text=True).stdout
    )
    dst = next(
        r["dst"]
        for r in routes
        if r.get("dst") not in ("default", None)
        and not r.get("dev", "").startswith(("rdh", "br-"))  # the hub's, or a user daemon's
    )
    with pytest.raises(NetworkError) as info:
        network.check_pool(str(ipaddress.IPv4Network(dst, strict=False).supernet(new_prefix=8)))
    assert "overlaps host routes" in info.value.log_message


@pytest.mark.docker
def test_concurrent_hubs_hook_the_chains_once(claimed_net):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda _: network.apply_isolation(claimed_net), range(6)))
    forward = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True).stdout
    assert forward.count("-j RDH-FORWARD") == 1
    v6 = subprocess.run(["ip6tables", "-S"], capture_output=True, text=True).stdout
    assert v6.count("-A INPUT -i rdh+ -j DROP") == 1 and v6.count("-i rdh+ -j DROP") == 2
    assert _rules("filter", network.FORWARD_CHAIN).count(claimed_net.tag) == 5 + len(
        network.uplinks()
    )


# -- the daemon's own traffic (RDH-OUTPUT) ---------------------------------------------------

LOOPBACK_DNS = ipaddress.ip_address("127.0.0.53")
REGISTRY = ipaddress.ip_address("127.0.0.1")


def test_daemon_rules_reject_other_users_and_the_host_but_allow_dns_and_registries():
    net = network.user_network(32768 + 64 * 3, POOL)
    allow = [(LOOPBACK_DNS, "udp", 53), (REGISTRY, "tcp", 5000), (LOOPBACK_DNS, "udp", 53)]
    cg = "rediacc.slice/hub-alice-32960/daemon"
    rules = network.daemon_rules(net, cg, ["eth0"], ["eth0"], allow)
    v4 = [" ".join(r) for f, r in rules if f == 4]
    v6 = [" ".join(r) for f, r in rules if f == 6]
    assert all(r.startswith(f"-m cgroup --path {cg} ") for r in v4 + v6)
    tails = [r.removeprefix(f"-m cgroup --path {cg} ") for r in v4]
    assert tails == [
        "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        f"-d {net.block} -j RETURN",  # the user's own block (docker-proxy, own service)
        "-d 127.0.0.1/32 -p tcp -m tcp --dport 5000 -j RETURN",
        "-d 127.0.0.53/32 -p udp -m udp --dport 53 -j RETURN",  # once, though given twice
        f"-d {POOL} -j REJECT",  # every other user
        "-o eth0 -j RETURN",  # the world
        "-j REJECT",  # loopback, the host's addresses, other local networks
    ]
    assert [r.removeprefix(f"-m cgroup --path {cg} ") for r in v6] == [
        "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        "-o eth0 -j RETURN",
        "-j REJECT",
    ]
    # without an uplink, nothing but the allowances and the own block
    bare = network.daemon_rules(net, cg)
    assert not any("-o" in r for _f, r in bare)


@pytest.mark.parametrize(
    ("registry", "host", "ports"),
    [
        ("127.0.0.1:5000", "127.0.0.1", [5000]),
        ("registry.example.com", "registry.example.com", [443, 80]),
        ("localhost:5000/", "localhost", [5000]),
        ("[::1]:5000", "::1", [5000]),
        ("[::1]", "::1", [443, 80]),
    ],
)
def test_registry_host_port(registry, host, ports):
    assert network.registry_host_port(registry) == (host, ports)


def test_a_bad_registry_port_is_refused():
    with pytest.raises(NetworkError) as e:
        network.registry_host_port("127.0.0.1:http")
    assert "invalid port" in e.value.log_message and "127.0.0.1:http" in e.value.log_message


@pytest.mark.parametrize(
    ("image", "registry"),
    [
        ("busybox", None),
        ("library/busybox:1", None),
        ("127.0.0.1:5000/hub/env:1", "127.0.0.1:5000"),
        ("localhost/env", "localhost"),
        ("ghcr.io/rediacc/env@sha256:abc", "ghcr.io"),
    ],
)
def test_image_registry(image, registry):
    assert network.image_registry(image) == registry


def test_nameservers_and_cgroup2_root():
    conf = "# comment\nnameserver 127.0.0.53\nsearch x\nnameserver fe80::1%eth0\noptions edns0\n"
    assert network.nameservers(conf) == ["127.0.0.53", "fe80::1"]
    hybrid = (
        "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n"
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n"
    )
    assert str(network.cgroup2_root(hybrid)) == "/sys/fs/cgroup/unified"
    assert str(network.cgroup2_root("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n")) == "/sys/fs/cgroup"
    assert network.cgroup2_root("cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n") is None


def _connects_from(procs: Path | None, port: int) -> bool:
    """Whether a process in the cgroup of ``procs`` (None: ours) connects to 127.0.0.1:port."""
    probe = (
        "import socket,sys\n"
        "try: socket.create_connection(('127.0.0.1', int(sys.argv[1])), 3).close()\n"
        "except OSError: sys.exit(1)\n"
    )
    join = f'echo $$ > "{procs}" && ' if procs else ""
    argv = ["sh", "-c", f'{join}exec "$@"', "sh", sys.executable, "-c", probe, str(port)]
    return subprocess.run(argv, capture_output=True).returncode == 0


@contextlib.contextmanager
def _listener():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


@pytest.mark.docker
def test_daemon_rules_match_its_cgroup_and_follow_a_recreated_group(claimed_net):
    """A process in the daemon's v2 group cannot reach a loopback listener except an allowed
    one; others still can; a re-made group (daemon restart) gets working rules again; the rules
    go with the user's others."""
    net = claimed_net
    root = network.cgroup2_root()
    if root is None:
        pytest.fail("no cgroup v2 hierarchy mounted (needed for the daemon's rules)")
    rel = f"rediacc.slice/hub-nettest{os.getpid()}-{net.net_id}/daemon"
    group = root / rel
    try:
        with _listener() as blocked, _listener() as registry:
            allow = [(REGISTRY, "tcp", registry)]
            for _round in range(2):  # the second time in a group made again
                group.mkdir(parents=True)
                assert network.apply_daemon_isolation(net, rel, allow)
                assert network.apply_daemon_isolation(net, rel, allow)  # idempotent
                listing = _rules("filter", network.OUTPUT_CHAIN)
                rules = network.daemon_rules(net, rel, network.uplinks(), allow=allow)
                assert listing.count(net.tag) == len([r for f, r in rules if f == 4])
                assert listing.count(f"rdh-set:{group.stat().st_ino}.") == listing.count(net.tag)
                procs = group / "cgroup.procs"
                assert not _connects_from(procs, blocked)
                assert _connects_from(procs, registry)
                assert _connects_from(None, blocked)  # the rules are the daemon's only
                group.rmdir()
            assert (
                "-j RDH-OUTPUT"
                in subprocess.run(
                    ["iptables", "-S", "OUTPUT"], capture_output=True, text=True
                ).stdout
            )
            network.remove_isolation(net.net_id)
            assert net.tag not in _rules("filter", network.OUTPUT_CHAIN)
            six = subprocess.run(
                ["ip6tables", "-S", network.OUTPUT_CHAIN], capture_output=True, text=True
            ).stdout
            assert net.tag not in six
    finally:
        for d in (group, group.parent):
            with contextlib.suppress(OSError):
                d.rmdir()


SAVED_FILTER = """# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER-USER - [0:0]
:RDH-FORWARD - [0:0]
-A FORWARD -j RDH-FORWARD
-A FORWARD -j DOCKER-USER
-A DOCKER-USER -j RETURN
-A RDH-FORWARD -s 10.208.0.0/24 -d 10.208.0.0/24 -m comment --comment "rdh:32768" -j ACCEPT
-A RDH-FORWARD -s 10.208.1.0/24 -d 10.208.1.0/24 -m comment --comment "rdh:32832" -j ACCEPT
-A RDH-FORWARD -m comment --comment "unbalanced -j DROP
COMMIT
"""


def test_parse_saved_reads_chains_and_rules_as_words():
    table = network.parse_saved(SAVED_FILTER)
    assert table.chains == {"INPUT", "FORWARD", "OUTPUT", "DOCKER-USER", "RDH-FORWARD"}
    assert table.has("FORWARD", "-j", "RDH-FORWARD") and not table.has("INPUT", "-j", "RDH-INPUT")
    assert table.tagged("RDH-FORWARD", "rdh:32768") == [
        ("-A", "RDH-FORWARD", "-s", "10.208.0.0/24", "-d", "10.208.0.0/24", "-m", "comment",
         "--comment", "rdh:32768", "-j", "ACCEPT"),
    ]  # fmt: skip
    assert len(table.rules) == 5  # the rule with unbalanced quotes is not one of ours: skipped


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('-A X -s 10.208.0.0/24 -m comment --comment "rdh:32768" -j ACCEPT',
         ("-A", "X", "-s", "10.208.0.0/24", "-m", "comment", "--comment", "rdh:32768", "-j", "ACCEPT")),
        ('-A X ! -d 10.0.0.0/8 -j RETURN', ("-A", "X", "!", "-d", "10.0.0.0/8", "-j", "RETURN")),
        ('-A X -m comment --comment "a \\"quoted\\" word" -j DROP',
         ("-A", "X", "-m", "comment", "--comment", 'a "quoted" word', "-j", "DROP")),
        ('-A X -m comment --comment "back\\\\slash" -j DROP',
         ("-A", "X", "-m", "comment", "--comment", "back\\slash", "-j", "DROP")),
        ('-A X -m comment --comment "" -j DROP', ("-A", "X", "-m", "comment", "--comment", "", "-j", "DROP")),
        ('-A X -m comment --comment "unbalanced -j DROP', None),
    ],
)  # fmt: skip
def test_rule_words_read_iptables_save_as_shlex_does(line, words):
    """The hub's own splitter (a regex; shlex held the GIL 25 ms per table of 700 rules)."""
    assert network.rule_words(line) == words
    if words is not None:
        assert tuple(shlex.split(line)) == words


def test_isolation_changes_make_hook_and_replace_only_what_is_missing():
    net = network.user_network(32768, POOL)
    filter4 = network.parse_saved(SAVED_FILTER)
    changes = network.isolation_changes(net, ["eth0"], filter4, network.EMPTY_TABLE, None)
    f, n = changes[4, "filter"], changes[4, "nat"]
    # RDH-INPUT is made and hooked; RDH-FORWARD exists and is hooked; DOCKER-USER gets its hook
    assert [":RDH-INPUT", "-", "[0:0]"] in f and ["-I", "INPUT", "1", "-j", "RDH-INPUT"] in f
    assert [":RDH-FORWARD", "-", "[0:0]"] not in f
    assert not any(ln[:2] == ["-I", "FORWARD"] for ln in f)
    assert ["-I", "DOCKER-USER", "1", "-j", "RDH-FORWARD"] in f
    # the user's partial set goes, the whole set comes, in order; the neighbour's rule stays
    deletes = [ln for ln in f if ln[0] == "-D"]
    assert deletes == [["-D", "RDH-FORWARD", "-s", "10.208.0.0/24", "-d", "10.208.0.0/24", "-m",
                        "comment", "--comment", "rdh:32768", "-j", "ACCEPT"]]  # fmt: skip
    adds = [ln for ln in f if ln[0] == "-A" and ln[1] == "RDH-FORWARD"]
    assert adds[0][2:8] == ["-s", "10.208.0.0/24", "-d", "10.208.0.0/24", "-j", "ACCEPT"]
    assert adds[-1][2:6] == ["-s", "10.208.0.0/24", "-j", "DROP"]
    assert not any("rdh:32832" in ln for ln in f)
    assert [":RDH-POSTROUTING", "-", "[0:0]"] in n and n[-1][-1] == net.tag
    assert (6, "filter") not in changes  # no ip6tables here


def test_isolation_changes_follow_a_new_uplink():
    """The same number of rules through another interface is another set: rewritten."""
    net = network.user_network(32768, POOL)
    rules = [
        ["-A", c, *r, "-m", "comment", "--comment", net.tag]
        for t, c, r in network.isolation_rules(net, ["eth0"])
        if t == "filter"
    ]
    text = "*filter\n:FORWARD ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:RDH-FORWARD - [0:0]\n"
    text += ":RDH-INPUT - [0:0]\n-A FORWARD -j RDH-FORWARD\n-A INPUT -j RDH-INPUT\n"
    text += "".join(" ".join(r) + "\n" for r in rules) + "COMMIT\n"
    filter4 = network.parse_saved(text)
    same = network.isolation_changes(net, ["eth0"], filter4, network.EMPTY_TABLE, None)
    assert same[4, "filter"] == []
    moved = network.isolation_changes(net, ["wan1"], filter4, network.EMPTY_TABLE, None)
    assert ["-A", "RDH-FORWARD", "-s", str(net.block), "-o", "wan1", "-j", "ACCEPT", "-m",
            "comment", "--comment", net.tag] in moved[4, "filter"]  # fmt: skip
    # RDH-FORWARD's rules are replaced; RDH-INPUT's, the same as before, are left alone
    forward = [r for r in rules if r[1] == "RDH-FORWARD"]
    assert [ln[:2] for ln in moved[4, "filter"] if ln[0] == "-D"] == [["-D", "RDH-FORWARD"]] * len(
        forward
    )


def test_removal_changes_take_every_tagged_rule_and_nothing_else():
    filter4 = network.parse_saved(SAVED_FILTER)
    changes = network.removal_changes(32832, {(4, "filter"): filter4, (6, "filter"): None})
    assert changes == {(4, "filter"): [["-D", "RDH-FORWARD", "-s", "10.208.1.0/24", "-d",
        "10.208.1.0/24", "-m", "comment", "--comment", "rdh:32832", "-j", "ACCEPT"]]}  # fmt: skip


def test_daemon_isolation_changes_replace_another_version_and_keep_the_same():
    net = network.user_network(32768, POOL)
    rules = network.daemon_rules(net, "rediacc.slice/hub-a-32768/daemon", ["eth0"], [])
    empty = {4: network.EMPTY_TABLE, 6: None}
    first = network.daemon_isolation_changes(net, 11, rules, empty)[4, "filter"]
    assert first[:2] == [[":RDH-OUTPUT", "-", "[0:0]"], ["-I", "OUTPUT", "1", "-j", "RDH-OUTPUT"]]
    text = "*filter\n:OUTPUT ACCEPT [0:0]\n:RDH-OUTPUT - [0:0]\n-A OUTPUT -j RDH-OUTPUT\n"
    text += "".join(" ".join(ln) + "\n" for ln in first[2:]) + "COMMIT\n"
    applied = {4: network.parse_saved(text), 6: None}
    assert network.daemon_isolation_changes(net, 11, rules, applied) == {(4, "filter"): []}
    # the daemon's group made again (another inode): every rule replaced in one restore
    again = network.daemon_isolation_changes(net, 12, rules, applied)[4, "filter"]
    assert (
        sum(ln[0] == "-D" for ln in again) == sum(ln[0] == "-A" for ln in again) == len(first) - 2
    )


def test_no_v2_group_means_no_rules_and_a_warning(claimed_net, caplog):
    assert not network.apply_daemon_isolation(claimed_net, None, [])
    assert "not isolated" in caplog.text


@pytest.mark.parametrize(
    ("lines", "want"),
    [
        ([], "*filter\nCOMMIT\n"),
        ([["-A", "RDH-OUTPUT", "-m", "cgroup", "--path", "rediacc.slice/hub-a-1/daemon", "-j",
           "REJECT"], ["-D", "RDH-OUTPUT", "-m", "comment", "--comment", "rdh:32768", "-j", "RETURN"]],
         "*filter\n-A RDH-OUTPUT -m cgroup --path rediacc.slice/hub-a-1/daemon -j REJECT\n"
         "-D RDH-OUTPUT -m comment --comment rdh:32768 -j RETURN\nCOMMIT\n"),
        # what the restore format would read otherwise: applied rule by rule instead
        ([["-A", "X", "-m", "comment", "--comment", "two words"]], None),
        ([["-A", "X", "--comment", 'a"b']], None),
        ([["-A", "X", "--comment", "#1"]], None),
        ([["-A", "X", ""]], None),
    ],
)  # fmt: skip
def test_restore_input(lines, want):
    assert network.restore_input("filter", lines) == want


def _link(name: str, *addresses: str) -> dict:
    return {
        "ifname": name,
        "addr_info": [{"family": "inet", "local": a, "prefixlen": 26} for a in addresses],
    }


@pytest.mark.parametrize(
    ("links", "ports", "stale"),
    [
        # a dead daemon's network, nothing attached: stale (it took the new network's route)
        ([_link("br-5447a0354085", "10.208.3.129")], {}, ["br-5447a0354085"]),
        # the same with a container still attached (live-restore): kept
        ([_link("br-5447a0354085", "10.208.3.129")], {"br-5447a0354085": 1}, []),
        # another user's block, the host's docker0, the hub's own bridges: never
        ([_link("br-aaaa", "10.208.4.129")], {}, []),
        ([_link("docker0", "10.208.3.1")], {}, []),
        ([_link("rdh32960e", "10.208.3.1")], {}, []),
        # partly outside the block, or no IPv4 address at all: not the user's
        ([_link("br-bbbb", "10.208.3.129", "192.168.1.1")], {}, []),
        ([{"ifname": "br-cccc", "addr_info": []}], {}, []),
        # not a bridge after all (ports unknown): kept
        ([_link("br-dddd", "10.208.3.129")], {"br-dddd": -1}, []),
    ],
)
def test_stale_bridges_of_a_users_block(links, ports, stale):
    """Bridges a dead or destroyed daemon's networks left in the user's block go before the
    block's next daemon starts: the end-to-end hooks test caught one taking the route of the
    user's new network (the on_create clone could not reach the user's own git server)."""
    block = ipaddress.IPv4Network("10.208.3.0/24")
    assert network.stale_bridges(links, block, lambda name: ports.get(name, 0)) == stale
