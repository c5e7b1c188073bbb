"""The docker-socket policy's pure decisions, one parametrized table per rule family."""

from __future__ import annotations

import dataclasses
import errno
import json
from pathlib import Path

import pytest

from hubcontrol import dockerpolicy as p

BINDS = "/run/rediacc/hub/32768/binds"


class FakePins:
    """Stands in for hubcontrol.pins.BindPins.pin (the real one is tested with real mounts in
    test_policysocket_cli and tests/security): records each call, returns a pin path."""

    def __init__(self, error: OSError | None = None) -> None:
        self.calls: list[tuple[str, bool, bool]] = []
        self.error = error

    def __call__(self, rel: str, readonly: bool, create: bool) -> str:
        if self.error is not None:
            raise self.error
        self.calls.append((rel, readonly, create))
        return f"{BINDS}/{len(self.calls):032x}"


@pytest.fixture
def ctx(tmp_path):
    ws = tmp_path / "ws" / "alice"
    (ws / "proj" / "sub").mkdir(parents=True)
    (ws / ".checkpoint").mkdir()
    (ws / "up").symlink_to("..")
    (ws / "root").symlink_to("/")
    (ws / "inside").symlink_to(ws / "proj")
    (ws / "relinside").symlink_to("proj/sub")
    return p.PolicyContext(
        workspace=str(ws),
        pin=FakePins(),
        policy_socket="/run/rediacc/hub/32768/env/docker.sock",
        user_networks=("10.208.0.128/25",),
    )


def decide(ctx, method, target, body=None, facts=None):
    req = p.classify(method, target)
    if isinstance(req, p.Refusal):
        return req
    if body is not None:
        parsed = p.read_json(json.dumps(body).encode() if not isinstance(body, bytes) else body)
        if isinstance(parsed, p.Refusal):
            return parsed
        req = req.with_body(parsed)
    return p.check(req, ctx, facts or {})


def refused(result, *words):
    assert isinstance(result, p.Refusal), f"allowed: {result!r}"
    for w in words:
        assert w in result.message, result.message
    return result


def wire(result):
    assert not isinstance(result, p.Refusal), result.message
    return json.loads(p.to_wire(result))


# --- classify ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "endpoint", "version"),
    [
        ("GET", "/_ping", "ping", None),
        ("HEAD", "/v1.41/_ping", "ping", (1, 41)),
        ("POST", "/v1.41/containers/create?name=x", "container create", (1, 41)),
        ("POST", "/containers/create", "container create", None),
        ("POST", "/v1.24/containers/abc/start", "container start", (1, 24)),
        ("POST", "/v1.41/containers%2Fcreate", "container create", (1, 41)),
        ("GET", "/v1.41/images/registry.example.com:5000/a/b:1/json", "image inspect", (1, 41)),
        ("DELETE", "/v1.41/images/a/b:1", "image remove", (1, 41)),
        ("post", "/v1.41/build", "image build", (1, 41)),
        ("GET", "/v1.41/plugins", "plugin list", (1, 41)),
        ("POST", "/v1.41/exec/abc/start", "exec start", (1, 41)),
        ("POST", "/v1.41/session", "buildkit session", (1, 41)),
        ("POST", "/v1.41/grpc", "buildkit grpc", (1, 41)),
        ("POST", "/grpc", "buildkit grpc", None),
        ("POST", "/v1.41/build/cancel?id=x", "build cancel", (1, 41)),
    ],
)
def test_classify_allowed(method, target, endpoint, version):
    req = p.classify(method, target)
    assert isinstance(req, p.ApiRequest), req
    assert req.endpoint.name == endpoint and req.version == version


@pytest.mark.parametrize(
    ("method", "target", "status", "words"),
    [
        ("POST", "/v1.41/../containers/create", 400, "'..'"),
        ("POST", "/v1.41/%2e%2e/containers/create", 400, "'..'"),
        ("POST", "/v1.41//containers/create", 400, "empty"),
        ("POST", "/v1.41/./containers/create", 400, "'.'"),
        ("GET", "/v1.41/_ping%00", 400, "'..'"),
        ("GET", "v1.41/_ping", 400, "absolute"),
        ("POST", "/v1.23/containers/create", 400, "API version 1.23"),
        ("POST", "/v1.12/containers/x/start", 400, "older than 1.24"),
        ("POST", "/v1.41/swarm/init", 403, "swarm mode"),
        ("GET", "/v1.41/services", 403, "swarm mode"),
        ("POST", "/v1.41/secrets/create", 403, "swarm mode"),
        ("POST", "/v1.41/plugins/pull", 403, "plugin management"),
        ("POST", "/v1.41/plugins/x/enable", 403, "plugin management"),
        ("POST", "/v1.41/plugins/x/set", 403, "plugin management"),
        ("POST", "/v1.41/containers/x/checkpoints", 403, "checkpoints"),
        ("GET", "/v1.41/containers/x/checkpoints", 403, "checkpoints"),
        ("GET", "/v1.41/nonexistent", 403, "not an endpoint"),
        ("PATCH", "/v1.41/containers/x/json", 403, "not an endpoint"),
        ("GET", "/v1.41/build?a=1&a=2", 400, "given twice"),
    ],
)
def test_classify_refused(method, target, status, words):
    """Refused before any check: traversal, old API versions, whole areas, unknown endpoints.
    (BuildKit's /session and /grpc are relayed since the daemon refuses its entitlements.)"""
    r = refused(p.classify(method, target))
    assert r.status == status
    assert words in r.message or words.strip("'") in r.message, r.message


def test_repeated_query_with_same_value_is_fine():
    req = p.classify("GET", "/v1.41/containers/json?all=1&all=1")
    assert req.query == {"all": "1"}


# --- JSON as Go reads it --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"HostConfig": {"Privileged": false, "Privileged": true}}',
        b'{"hostconfig": {"privileged": true}}',
        b'{"HOSTCONFIG": {"PRIVILEGED": 1}}',
        b'{"HostConfig": {}, "hostConfig": {"Privileged": true}}',
        b'{"Privileged": true}',
        b'{"privileged": true, "HostConfig": {}}',
    ],
)
def test_json_spellings_cannot_hide_privileged(ctx, body):
    refused(decide(ctx, "POST", "/containers/create", body), "privileged mode")


def test_last_folded_value_is_what_gets_forwarded(ctx):
    body = '{"Image": "x", "HostConfig": {"Privileged": true, "\uff30rivileged": false}}'.encode()
    out = wire(decide(ctx, "POST", "/containers/create", body))
    assert out["HostConfig"] == {"Privileged": False}


def test_map_keys_keep_their_case(ctx):
    body = {
        "Image": "x",
        "Labels": {"Com.Example.A": "1", "com.example.a": "2"},
        "HostConfig": {"Tmpfs": {"/Data": ""}},
    }
    out = wire(decide(ctx, "POST", "/containers/create", body))
    assert out["Labels"] == {"Com.Example.A": "1", "com.example.a": "2"}
    assert out["HostConfig"]["Tmpfs"] == {"/Data": ""}


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b'{"Image": "x"} {"Privileged": true}', 400),
        (b'{"Memory": NaN}', 400),
        (b'{"Image": "\xff"}', 400),
        (b"[" * 10 + b"]" * 10, None),
        (b"[" * 100_000 + b"]" * 100_000, 400),
        (b"x" * (p.MAX_JSON_BODY + 1), 413),
    ],
)
def test_read_json_rejects(raw, status):
    out = p.read_json(raw)
    if status is None:
        assert out == [[[[[[[[[[]]]]]]]]]]
    else:
        assert isinstance(out, p.Refusal) and out.status == status


def test_read_json_empty_body_is_none():
    assert p.read_json(b"  ") is None


# --- HostConfig rules -----------------------------------------------------------------------------


def hc(**fields):
    return {"Image": "x", "HostConfig": fields}


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"Privileged": True}, "privileged mode"),
        ({"NetworkMode": "host"}, "host's network namespace"),
        ({"NetworkMode": "HOST"}, "host's network namespace"),
        ({"PidMode": "host"}, "host's pid namespace"),
        ({"IpcMode": "host"}, "host's ipc namespace"),
        ({"UTSMode": "host"}, "host's uts namespace"),
        ({"UsernsMode": "host"}, "--userns=host"),
        ({"CgroupnsMode": "host"}, "cgroupns"),
        ({"Devices": [{"PathOnHost": "/dev/sda", "PathInContainer": "/dev/sda"}]}, "host devices"),
        ({"DeviceCgroupRules": ["b *:* rwm"]}, "device cgroup rules"),
        ({"DeviceRequests": [{"Count": -1, "Capabilities": [["gpu"]]}]}, "device requests"),
        ({"CapAdd": ["SYS_ADMIN"]}, "capability SYS_ADMIN"),
        ({"CapAdd": ["cap_net_admin"]}, "capability NET_ADMIN"),
        ({"CapAdd": ["ALL"]}, "capability ALL"),
        ({"CapAdd": ["SYS_PTRACE"]}, "capability SYS_PTRACE"),
        ({"SecurityOpt": ["seccomp=unconfined"]}, "seccomp"),
        ({"SecurityOpt": ["seccomp:unconfined"]}, "seccomp"),
        ({"SecurityOpt": ['seccomp={"defaultAction":"SCMP_ACT_ALLOW"}']}, "seccomp"),
        ({"SecurityOpt": ["apparmor=unconfined"]}, "AppArmor"),
        ({"SecurityOpt": ["label=disable"]}, "SELinux"),
        ({"SecurityOpt": ["label:type:spc_t"]}, "SELinux"),
        ({"SecurityOpt": ["systempaths=unconfined"]}, "/proc"),
        ({"SecurityOpt": ["no-new-privileges=false"]}, "setuid"),
        ({"MaskedPaths": []}, "MaskedPaths"),
        ({"ReadonlyPaths": []}, "ReadonlyPaths"),
        ({"Sysctls": {"kernel.core_pattern": "|/tmp/x"}}, "sysctl 'kernel.core_pattern'"),
        ({"Sysctls": {"vm.overcommit_memory": "1"}}, "sysctl 'vm.overcommit_memory'"),
        ({"Sysctls": {"kernel.domainname": "x"}}, "sysctl"),
        ({"CgroupParent": "/"}, "--cgroup-parent"),
        ({"Cgroup": "container:abc"}, "cgroup"),
        ({"Runtime": "io.containerd.runc.v2"}, "runtime"),
        ({"Runtime": "runsc"}, "runtime"),
        ({"Isolation": "hyperv"}, "--isolation"),
        (
            {"PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "7112"}]}},
            "publishing ports",
        ),
        ({"PortBindings": {"80/tcp": [{"HostPort": ""}]}}, "publishing ports"),
        ({"PublishAllPorts": True}, "publishing ports"),
        (
            {"LogConfig": {"Type": "syslog", "Config": {"syslog-address": "tcp://127.0.0.1:7112"}}},
            "log driver",
        ),
        ({"LogConfig": {"Type": "journald"}}, "log driver"),
        ({"OomScoreAdj": -1}, "--oom-score-adj"),
        ({"OomKillDisable": True}, "--oom-kill-disable"),
        ({"CpuRealtimeRuntime": 1000}, "real-time"),
        ({"StorageOpt": {"dm.basesize": "1G"}}, "storage option"),
        ({"VolumeDriver": "convoy"}, "volume driver"),
        ({"Binds": ["/:/host"]}, "bind mount of /"),
        ({"Binds": ["/etc/shadow:/x:ro"]}, "bind mount of /etc/shadow"),
        (
            {"Binds": ["/var/run/docker.sock:/s", "/run/rediacc/hub/32768/docker.sock:/s2"]},
            "bind mount of /run/rediacc",
        ),
        ({"Binds": ["/workspace/proj:/x:rshared"]}, "bind option 'rshared'"),
        ({"Binds": ["/workspace/proj:/x:shared"]}, "bind option 'shared'"),
        ({"Binds": ["/workspace"]}, "expected source:destination"),
        ({"Mounts": [{"Type": "bind", "Source": "/", "Target": "/h"}]}, "bind mount of /"),
        ({"Mounts": [{"type": "BIND", "source": "/etc", "target": "/h"}]}, "bind mount of /etc"),
        (
            {
                "Mounts": [
                    {
                        "Type": "bind",
                        "Source": "/workspace/proj",
                        "Target": "/h",
                        "BindOptions": {"Propagation": "rshared"},
                    }
                ]
            },
            "propagation",
        ),
        ({"Mounts": [{"Type": "bind", "Source": "relative", "Target": "/h"}]}, "absolute path"),
        ({"Mounts": [{"Type": "npipe", "Source": "x", "Target": "/h"}]}, "mount type 'npipe'"),
        (
            {
                "Mounts": [
                    {
                        "Type": "volume",
                        "Source": "v",
                        "Target": "/h",
                        "VolumeOptions": {
                            "DriverConfig": {
                                "Name": "local",
                                "Options": {"type": "none", "o": "bind", "device": "/"},
                            }
                        },
                    }
                ]
            },
            "volume driver options",
        ),
        (
            {
                "Mounts": [
                    {
                        "Type": "volume",
                        "Source": "v",
                        "Target": "/h",
                        "VolumeOptions": {"Labels": {"rediacc.hub.user": "bob"}},
                    }
                ]
            },
            "reserved",
        ),
    ],
)
def test_host_config_refusals(ctx, fields, words):
    refused(
        decide(ctx, "POST", "/v1.41/containers/create", hc(**fields)), words, "hub policy refused"
    )


@pytest.mark.parametrize(
    ("src", "words"),
    [
        ("/workspace", "whole workspace"),
        ("/workspace/", "whole workspace"),
        ("/workspace/.checkpoint", "checkpoint directory"),
        ("/workspace/.checkpoint/x", "checkpoint directory"),
        ("/workspace/proj/../..", "only directories inside your workspace"),
        ("/workspace/../etc", "only directories inside your workspace"),
        ("/workspace/up", "only directories inside your workspace"),
        # '..' is resolved lexically first (the result is what gets mounted), symlinks after
        ("/workspace/up/alice/proj/../../..", "whole workspace"),
        ("/workspace/up/bob", "only directories inside your workspace"),
        ("/workspace/up/alice", "whole workspace"),
        ("/workspace/root", "only directories inside your workspace"),
        ("/workspace/root/etc", "only directories inside your workspace"),
        ("/workspacex/proj", "only directories inside your workspace"),
    ],
)
def test_bind_sources_refused(ctx, src, words):
    r = refused(decide(ctx, "POST", "/containers/create", hc(Binds=[f"{src}:/x"])), words)
    assert "/tmp" not in r.message  # never tells the user how the host is laid out


@pytest.mark.parametrize(
    ("src", "rewritten"),
    [
        ("/workspace/proj", "proj"),
        ("/workspace/proj/sub/", "proj/sub"),
        ("/workspace/proj/new-dir", "proj/new-dir"),
        ("/workspace/inside", "proj"),
        ("/workspace/relinside", "proj/sub"),
        ("/workspace/proj/sub/..", "proj"),
        ("{ws}/proj", "proj"),
    ],
)
def test_bind_sources_allowed_and_pinned(ctx, src, rewritten):
    """The checked path (symlinks resolved) is pinned; the daemon gets a Mounts bind of the pin,
    read-only by the pin itself, and the container a label saying what each pin holds."""
    src = src.format(ws=ctx.workspace)
    out = wire(decide(ctx, "POST", "/containers/create", hc(Binds=[f"{src}:/x:ro"])))
    pin = f"{BINDS}/{1:032x}"
    assert out["HostConfig"]["Binds"] == []
    assert out["HostConfig"]["Mounts"] == [{"Type": "bind", "Source": pin, "Target": "/x"}]
    assert json.loads(out["Labels"][p.BINDS_LABEL]) == {
        pin.rsplit("/", 1)[1]: {"path": rewritten, "ro": True}
    }
    # -v creates a missing source, as the daemon would; --mount does not
    body = hc(Mounts=[{"Type": "bind", "Source": src, "Target": "/x", "ReadOnly": True}])
    out = wire(decide(ctx, "POST", "/containers/create", body))
    assert out["HostConfig"]["Mounts"] == [
        {"Type": "bind", "Source": f"{BINDS}/{2:032x}", "Target": "/x", "ReadOnly": False}
    ]
    assert ctx.pin.calls == [(rewritten, True, True), (rewritten, True, False)]


def test_binds_keep_their_options_and_sit_beside_volumes(ctx):
    body = hc(
        Binds=["data:/data", "/workspace/proj:/a:rslave,cached", "/workspace/proj/sub:/b:rw"],
        Mounts=[{"Type": "tmpfs", "Target": "/t"}],
    )
    body["Labels"] = {"app": "x"}
    out = wire(decide(ctx, "POST", "/containers/create", body))
    assert out["HostConfig"]["Binds"] == ["data:/data"]
    assert out["HostConfig"]["Mounts"] == [
        {"Type": "tmpfs", "Target": "/t"},
        {
            "Type": "bind",
            "Source": f"{BINDS}/{1:032x}",
            "Target": "/a",
            "BindOptions": {"Propagation": "rslave"},
            "Consistency": "cached",
        },
        {"Type": "bind", "Source": f"{BINDS}/{2:032x}", "Target": "/b"},
    ]
    labels = out["Labels"]
    assert labels["app"] == "x" and set(json.loads(labels[p.BINDS_LABEL])) == {
        f"{1:032x}",
        f"{2:032x}",
    }
    refused(
        decide(ctx, "POST", "/containers/create", hc(Binds=["/workspace/proj:/a:ro,rw"])),
        "ro and rw together",
    )


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (OSError(errno.ELOOP, "loop"), "a symlink appeared on its path"),
        (OSError(errno.EXDEV, "xdev"), "leads out of your workspace"),
        (FileNotFoundError(errno.ENOENT, "gone"), "bind source path does not exist"),
        (OSError(errno.ENOTDIR, "notdir"), "not a directory"),
        (ValueError("bad"), "only paths inside your workspace"),
    ],
)
def test_a_pin_that_fails_refuses_the_bind(ctx, error, words):
    """The pin's own check (no symlink anywhere, below the workspace) is the last word: a path
    swapped between the policy's check and the pin is refused, with no host path revealed."""
    ctx = dataclasses.replace(ctx, pin=FakePins(error))
    for body in (
        hc(Binds=["/workspace/proj:/x"]),
        hc(Mounts=[{"Type": "bind", "Source": "/workspace/proj", "Target": "/x"}]),
    ):
        r = refused(decide(ctx, "POST", "/containers/create", body), words, "/workspace/proj")
        assert "/tmp" not in r.message


def test_without_a_pin_binds_are_refused(ctx):
    ctx = dataclasses.replace(ctx, pin=None)
    refused(
        decide(ctx, "POST", "/containers/create", hc(Binds=["/workspace/proj:/x"])),
        "cannot pin",
    )


def test_the_binds_label_cannot_be_set_by_users(ctx):
    body = hc()
    body["Labels"] = {p.BINDS_LABEL: '{"' + "0" * 32 + '": {"path": "proj"}}'}
    refused(decide(ctx, "POST", "/containers/create", body), "reserved")


@pytest.mark.parametrize(
    ("fields", "allowed"),
    [
        ({"PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}}, True),
        ({"PortBindings": {"80/tcp": [{"HostIp": "10.208.0.65", "HostPort": "8080"}]}}, True),
        ({"PublishAllPorts": True}, True),
        ({"PortBindings": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]}}, False),
        ({"PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "7112"}]}}, False),
        ({"portbindings": {"80/tcp": [{"hostip": "::", "HostPort": "1"}]}}, False),
    ],
)
def test_ports_publish_only_on_the_users_bridge_address(ctx, fields, allowed):
    ctx = dataclasses.replace(ctx, publish_ip="10.208.0.65")
    result = decide(ctx, "POST", "/containers/create", hc(**fields))
    assert isinstance(result, p.Refusal) != allowed


@pytest.mark.parametrize("src", sorted(p.DOCKER_SOCKET_PATHS))
def test_docker_socket_bind_becomes_the_policy_socket(ctx, src):
    out = wire(
        decide(
            ctx,
            "POST",
            "/containers/create",
            hc(Binds=[f"{src}:/var/run/docker.sock"]),
        )
    )
    assert out["HostConfig"]["Binds"] == [f"{ctx.policy_socket}:/var/run/docker.sock"]


def test_named_volume_binds_pass_unchanged(ctx):
    out = wire(decide(ctx, "POST", "/containers/create", hc(Binds=["data:/data", "cache:/c:ro"])))
    assert out["HostConfig"]["Binds"] == ["data:/data", "cache:/c:ro"]


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"CapAdd": ["NET_BIND_SERVICE", "cap_chown", "Kill"], "CapDrop": ["ALL"]},
        {"SecurityOpt": ["no-new-privileges"]},
        {"SecurityOpt": ["no-new-privileges:true"]},
        {"Sysctls": {"net.ipv4.ip_forward": "1", "kernel.shmmax": "1", "fs.mqueue.msg_max": "9"}},
        {"NetworkMode": "bridge"},
        {"NetworkMode": "default"},
        {"NetworkMode": "none"},
        {"IpcMode": "shareable", "PidMode": "", "CgroupnsMode": "private"},
        {"Runtime": "runc"},
        {"LogConfig": {"Type": "json-file", "Config": {"max-size": "10m"}}},
        {"OomScoreAdj": 500},
        {"PortBindings": {}, "PublishAllPorts": False, "Devices": [], "Privileged": False},
        {"Tmpfs": {"/run": "size=64m"}},
        {
            "Mounts": [
                {"Type": "tmpfs", "Target": "/t"},
                {"Type": "volume", "Source": "v", "Target": "/v"},
            ]
        },
        {
            "Mounts": [
                {
                    "Type": "volume",
                    "Source": "v",
                    "Target": "/v",
                    "VolumeOptions": {
                        "DriverConfig": {
                            "Name": "local",
                            "Options": {
                                "type": "tmpfs",
                                "device": "tmpfs",
                                "o": "size=1m,uid=1000",
                            },
                        }
                    },
                }
            ]
        },
        {"StorageOpt": {"size": "10G"}},
        {
            "Memory": 1 << 30,
            "PidsLimit": 100,
            "Ulimits": [{"Name": "nofile", "Soft": 1024, "Hard": 1024}],
        },
        {"Init": True, "AutoRemove": True, "RestartPolicy": {"Name": "always"}},
    ],
)
def test_host_config_allowed(ctx, fields):
    wire(decide(ctx, "POST", "/containers/create", hc(**fields)))


# --- facts from the daemon: the environment container and networks ------------------------------

ENV = p.ContainerFacts("e" * 64, {"rediacc.hub.user": "alice"})
OWN = p.ContainerFacts("f" * 64, {"com.example": "x"})


@pytest.mark.parametrize(
    ("method", "target", "body"),
    [
        ("POST", "/containers/env/stop", None),
        ("POST", "/containers/env/kill", None),
        ("POST", "/containers/env/restart", None),
        ("POST", "/containers/env/pause", None),
        ("POST", "/containers/env/rename?name=x", None),
        ("POST", "/containers/env/update", {"Memory": 1 << 34}),
        ("DELETE", "/containers/env?force=1", None),
        ("POST", "/networks/bridge/disconnect", {"Container": "env"}),
        ("POST", "/networks/bridge/connect", {"Container": "env"}),
        ("POST", "/containers/create", hc(PidMode="container:env")),
        ("POST", "/containers/create", hc(IpcMode="container:env")),
        ("POST", "/containers/create", hc(NetworkMode="container:env")),
        ("POST", "/containers/create", hc(VolumesFrom=["env:ro"])),
    ],
)
def test_environment_container_is_protected(ctx, method, target, body):
    req = p.classify(method, target)
    if body is not None:
        req = req.with_body(p.read_json(json.dumps(body).encode()))
    refs = p.references(req)
    assert ("container", "env") in refs
    facts = {
        ref: ENV if ref == ("container", "env") else p.NetworkFacts("n", "bridge") for ref in refs
    }
    refused(p.check(req, ctx, facts), "environment")
    facts = {
        ref: OWN if ref == ("container", "env") else p.NetworkFacts("n", "bridge") for ref in refs
    }
    assert not isinstance(p.check(req, ctx, facts), p.Refusal)


def test_exec_into_the_environment_is_allowed_but_never_privileged(ctx):
    refused(
        decide(ctx, "POST", "/containers/env/exec", {"Cmd": ["sh"], "Privileged": True}),
        "privileged exec",
    )
    assert decide(ctx, "POST", "/containers/env/exec", {"Cmd": ["sh"], "User": "root", "Tty": True})


@pytest.mark.parametrize(
    "body",
    [
        hc(NetworkMode="hostnet-by-id"),
        {"Image": "x", "NetworkingConfig": {"EndpointsConfig": {"hostnet-by-id": {}}}},
    ],
)
def test_a_network_that_resolves_to_the_host_driver_is_refused(ctx, body):
    req = p.classify("POST", "/containers/create").with_body(p.read_json(json.dumps(body).encode()))
    assert ("network", "hostnet-by-id") in p.references(req)
    refused(
        p.check(req, ctx, {("network", "hostnet-by-id"): p.NetworkFacts("abc", "host")}),
        "driver host",
    )
    assert not isinstance(
        p.check(req, ctx, {("network", "hostnet-by-id"): p.NetworkFacts("abc", "bridge")}),
        p.Refusal,
    )


def test_builtin_network_names_need_no_lookup():
    req = p.classify("POST", "/containers/create").with_body(
        p.read_json(
            json.dumps(
                {
                    "HostConfig": {"NetworkMode": "default"},
                    "NetworkingConfig": {"EndpointsConfig": {"bridge": {}}},
                }
            ).encode()
        )
    )
    assert p.references(req) == {("count", "containers")}  # only the count for the cap


def test_connect_to_host_network_is_refused(ctx):
    refused(decide(ctx, "POST", "/networks/host/connect", {"Container": "c"}), "host network")


# --- other endpoints ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "body", "words"),
    [
        ("POST", "/build?networkmode=host", None, "--network=host"),
        ("POST", "/build?networkmode=container:abc", None, "--network=container:abc"),
        ("POST", "/build?cgroupparent=/x", None, "--cgroup-parent"),
        ("POST", "/build?remote=https://example.com/ctx.tar", None, "remote context"),
        ("POST", "/build?version=3", None, "version=3"),
        ("POST", "/build?remote=client-session", None, "remote context"),  # only with BuildKit
        ("POST", "/build?version=2&remote=https://example.com/ctx.tar", None, "remote context"),
        ("POST", "/build?version=2&remote=client-session&networkmode=host", None, "--network=host"),
        ("POST", "/build?version=2&cgroupparent=/x", None, "--cgroup-parent"),
        ("POST", '/build?version=2&cachefrom=["127.0.0.1:5000/c"]', None, "cache import"),
        ("POST", "/build?version=2&cachefrom=127.0.0.1:5000/c", None, "JSON list"),
        ("POST", "/images/create?fromSrc=http://10.208.0.2:8080/x", None, "fromSrc"),
        ("POST", "/images/create?fromImage=127.0.0.1:7112/x", None, "registry 127.0.0.1:7112"),
        ("POST", "/images/create?fromImage=localhost:5000/x", None, "registry localhost:5000"),
        ("POST", "/images/create?fromImage=10.208.0.2:8080/x", None, "registry 10.208.0.2:8080"),
        (
            "POST",
            "/images/create?fromImage=169.254.169.254/latest",
            None,
            "registry 169.254.169.254",
        ),
        ("POST", "/images/create?fromImage=[::1]:5000/x", None, "registry [::1]:5000"),
        ("POST", "/images/create?fromImage=127.1:5000/x", None, "registry 127.1:5000"),
        ("POST", "/images/create?fromImage=0x7f.0.0.1/x", None, "registry 0x7f.0.0.1"),
        ("POST", "/images/create?fromImage=2130706433:5000/x", None, "registry 2130706433:5000"),
        (
            "POST",
            "/images/create?fromImage=[::ffff:127.0.0.1]:5000/x",
            None,
            "registry [::ffff:127.0.0.1]",
        ),
        ("POST", "/images/create?fromImage=LOCALHOST:5000/x", None, "registry localhost:5000"),
        ("POST", "/build?networkmode=hostnet-by-id", None, "driver host"),
        ("GET", "/containers/env/archive?path=/workspace/.checkpoint", None, "your environment"),
        ("PUT", "/containers/env/archive?path=/workspace", None, "your environment"),
        ("POST", "/images/127.0.0.1:5000/x/push", None, "push"),
        ("GET", "/distribution/127.0.0.1:5000/x/json", None, "registry lookup"),
        ("GET", "/images/search?term=127.0.0.1:7112/x", None, "search"),
        ("POST", "/auth", {"serveraddress": "http://127.0.0.1:7112/v2/"}, "registry login"),
        ("POST", "/containers/x/start?checkpoint=c1", None, "checkpoint"),
        (
            "POST",
            "/containers/create",
            {"Image": "x", "Labels": {"rediacc.hub.user": "bob"}},
            "reserved",
        ),
        ("POST", "/networks/create", {"Name": "n", "Driver": "macvlan"}, "driver 'macvlan'"),
        ("POST", "/networks/create", {"Name": "n", "Driver": "ipvlan"}, "driver 'ipvlan'"),
        (
            "POST",
            "/networks/create",
            {"Name": "n", "Options": {"com.docker.network.bridge.name": "docker0"}},
            "network option",
        ),
        (
            "POST",
            "/networks/create",
            {"Name": "n", "IPAM": {"Config": [{"Subnet": "10.208.1.0/24"}]}},
            "network address",
        ),
        (
            "POST",
            "/networks/create",
            {
                "Name": "n",
                "IPAM": {"Config": [{"Subnet": "10.208.0.128/25", "Gateway": "10.208.1.1"}]},
            },
            "network address",
        ),
        ("POST", "/networks/create", {"Name": "n", "IPAM": {"Driver": "custom"}}, "IPAM driver"),
        ("POST", "/networks/create", {"Name": "n", "Ingress": True}, "Ingress"),
        ("POST", "/networks/create", {"Name": "n", "ConfigFrom": {"Network": "x"}}, "ConfigFrom"),
        ("POST", "/networks/create", {"Name": "n", "Labels": {"rediacc.hub.net": "1"}}, "reserved"),
        (
            "POST",
            "/volumes/create",
            {
                "Name": "v",
                "Driver": "local",
                "DriverOpts": {"type": "none", "o": "bind", "device": "/etc"},
            },
            "volume driver options",
        ),
        (
            "POST",
            "/volumes/create",
            {"Name": "v", "DriverOpts": {"type": "nfs", "o": "addr=10.208.0.2", "device": ":/"}},
            "volume driver options",
        ),
        (
            "POST",
            "/volumes/create",
            {"Name": "v", "DriverOpts": {"type": "ext4", "device": "/dev/sda1"}},
            "volume driver options",
        ),
        (
            "POST",
            "/volumes/create",
            {"Name": "v", "DriverOpts": {"type": "tmpfs", "device": "tmpfs", "o": "bind"}},
            "tmpfs volume option",
        ),
        ("POST", "/volumes/create", {"Name": "v", "Driver": "sshfs"}, "volume driver 'sshfs'"),
        ("POST", "/containers/x/update", {"CgroupParent": "/"}, "--cgroup-parent"),
        ("POST", "/containers/x/update", {"Devices": [{"PathOnHost": "/dev/sda"}]}, "host devices"),
    ],
)
def test_other_endpoint_refusals(ctx, method, target, body, words):
    facts = {("network", "hostnet-by-id"): p.NetworkFacts("abc", "host"), ("container", "env"): ENV}
    refused(decide(ctx, method, target, body, facts), words)


@pytest.mark.parametrize(
    ("method", "target", "body"),
    [
        ("POST", "/build?t=x&networkmode=bridge&dockerfile=Dockerfile", None),
        ("POST", "/build?networkmode=none&version=1", None),
        # BuildKit: the context comes over the client's session
        ("POST", "/build?version=2&remote=client-session&session=abc&buildid=b1", None),
        ("POST", '/build?version=2&remote=client-session&cachefrom=["ghcr.io/o/c:1"]', None),
        ("POST", "/build/cancel?id=b1", None),
        ("POST", "/images/create?fromImage=busybox&tag=latest", None),
        ("POST", "/images/create?fromImage=ghcr.io/org/img&tag=1", None),
        ("POST", "/images/create?fromSrc=-&repo=x", None),
        ("POST", "/images/ghcr.io/org/img/push", None),
        ("POST", "/auth", {"serveraddress": "https://index.docker.io/v1/"}),
        ("POST", "/networks/create", {"Name": "n"}),
        (
            "POST",
            "/networks/create",
            {
                "Name": "n",
                "Options": {"com.docker.network.driver.mtu": "1400"},
                "IPAM": {"Config": [{"Subnet": "10.208.0.192/28", "Gateway": "10.208.0.193"}]},
            },
        ),
        ("POST", "/volumes/create", {"Name": "v"}),
        (
            "POST",
            "/volumes/create",
            {
                "Name": "v",
                "DriverOpts": {"type": "tmpfs", "device": "tmpfs", "o": "size=100m,uid=1000"},
            },
        ),
        ("POST", "/containers/x/update", {"Memory": 1 << 30, "RestartPolicy": {"Name": "no"}}),
        ("POST", "/containers/x/start", None),
    ],
)
def test_other_endpoints_allowed(ctx, method, target, body):
    result = decide(ctx, method, target, body)
    assert not isinstance(result, p.Refusal), result.message


def test_allowed_registry_overrides_the_address_rule(ctx):
    import dataclasses

    ctx = dataclasses.replace(ctx, allowed_registries=frozenset({"127.0.0.1:5000"}))
    assert not isinstance(
        decide(ctx, "POST", "/images/create?fromImage=127.0.0.1:5000/x"), p.Refusal
    )


@pytest.mark.parametrize(
    ("ref", "host"),
    [
        ("busybox", None),
        ("library/busybox", None),
        ("org/img:1", None),
        ("ghcr.io/org/img", "ghcr.io"),
        ("localhost/x", "localhost"),
        ("127.0.0.1:5000/x", "127.0.0.1:5000"),
        ("[::1]:5000/x", "[::1]:5000"),
    ],
)
def test_registry_host(ref, host):
    assert p.registry_host(ref) == host


def test_refusal_body_is_docker_style():
    r = p.Refusal("hub policy refused x: y")
    assert json.loads(r.body()) == {"message": "hub policy refused x: y"} and r.status == 403


def test_capability_names_normalized():
    assert p.normalize_capability(" cap_net_raw ") == "NET_RAW"


def test_every_endpoint_is_documented():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    for ep in p.ENDPOINTS:
        assert ep.name in doc, f"docs/security.md does not mention endpoint {ep.name!r}"


def test_ephemeral_environments_have_no_host_workspace_to_bind(ctx):
    ctx = dataclasses.replace(ctx, workspace="")
    refused(
        decide(ctx, "POST", "/containers/create", hc(Binds=["/workspace/proj:/x"])), "ephemeral"
    )
    out = wire(decide(ctx, "POST", "/containers/create", hc(Binds=["vol:/x"])))
    assert out["HostConfig"]["Binds"] == ["vol:/x"]


def test_many_keys_are_checked_quickly(ctx):
    """A 1 MiB body of distinct keys must not make the checks quadratic."""
    import time

    keys = ",".join(f'"k{i}": 1' for i in range(40_000))
    body = f'{{"Image": "x", "HostConfig": {{{keys}, "Privileged": true}}, {keys}}}'.encode()
    assert len(body) < p.MAX_JSON_BODY
    start = time.monotonic()
    refused(decide(ctx, "POST", "/containers/create", body), "privileged mode")
    assert time.monotonic() - start < 5


def test_every_test_docs_security_md_cites_exists():
    """The claims table maps claims to tests: a renamed test must not leave a claim unproven."""
    import re

    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "security.md").read_text()
    current, missing = None, []
    for m in re.finditer(r"`(tests/[\w/]+\.py)(?:::(\w+))?`|`::(\w+)`", doc):
        path, test, same_file_test = m.groups()
        if path:
            current = root / path
            if not current.exists():
                missing.append(path)
                continue
        name = test or same_file_test
        if name and current is not None and f"def {name}(" not in current.read_text():
            missing.append(f"{current.relative_to(root)}::{name}")
    assert not missing


# --- bounds: what one user may make their daemon hold ---------------------------------------------

KIB = 1024
COUNTS = {("count", "containers"): 3, ("count", "networks"): 1, ("count", "volumes"): 2}


@pytest.mark.parametrize(
    ("target", "body", "words"),
    [
        (
            "/containers/create",
            {"Image": "x", "Labels": {"big": "x" * (900 * KIB)}},
            ["900 KiB of labels on a container", "at most 64 KiB", "file or a volume"],
        ),
        (
            "/containers/create",
            {"Image": "x", "Labels": {f"l{i}": "" for i in range(p.MAX_LABELS + 1)}},
            ["257 labels on a container", "at most 256"],
        ),
        (
            "/containers/create",
            {"Image": "x", "Env": [f"V{i}={'x' * 1000}" for i in range(70)]},
            ["an environment (Env) of 69 KiB", "at most 64 KiB", "file in your workspace"],
        ),
        (
            "/containers/create",
            {"Image": "x", "Cmd": ["sh", "-c", "x" * (130 * KIB)]},
            ["a command line (Cmd and Entrypoint) of 130 KiB", "at most 128 KiB"],
        ),
        (
            "/containers/create",
            {"Image": "x", "Entrypoint": "x" * (100 * KIB), "Cmd": ["y" * (40 * KIB)]},
            ["a command line", "at most 128 KiB"],
        ),
        (
            "/containers/create",
            {"Image": "x", "Healthcheck": {"Test": ["CMD", "x" * (300 * KIB)]}},
            ["a container configuration of 300 KiB", "at most 256 KiB"],
        ),
        (
            "/containers/create?name=" + "n" * 300,
            {"Image": "x"},
            ["a container name of 300 characters", "at most 255"],
        ),
        (
            "/containers/abc/exec",
            {"Cmd": ["sh"], "Env": ["V=" + "x" * (70 * KIB)]},
            ["an environment (Env) of 70 KiB for an exec"],
        ),
        (
            "/networks/create",
            {"Name": "n", "Labels": {"big": "x" * (65 * KIB)}},
            ["65 KiB of labels on a network"],
        ),
        ("/networks/create", {"Name": "n" * 256}, ["a network name of 256 characters"]),
        (
            "/volumes/create",
            {"Name": "v", "Labels": {"big": "x" * (65 * KIB)}},
            ["65 KiB of labels on a volume"],
        ),
        ("/volumes/create", {"Name": "v" * 256}, ["a volume name of 256 characters"]),
    ],
)
def test_bounds_on_what_one_request_makes_the_daemon_hold(ctx, target, body, words):
    refused(decide(ctx, "POST", target, body, COUNTS), *words)


def test_bounds_allow_up_to_each_cap(ctx):
    label_value = "x" * (p.MAX_LABEL_BYTES - len("big"))
    wire(
        decide(
            ctx,
            "POST",
            "/containers/create",
            {"Image": "x", "Labels": {"big": label_value}},
            COUNTS,
        )
    )
    env = ["V=" + "x" * (p.MAX_ENV_BYTES - len("V=") - 1)]
    wire(decide(ctx, "POST", "/containers/create", {"Image": "x", "Env": env}, COUNTS))
    wire(decide(ctx, "POST", "/containers/create?name=" + "n" * 255, {"Image": "x"}, COUNTS))
    wire(decide(ctx, "POST", "/containers/abc/rename?name=" + "n" * 255, None, COUNTS))
    refused(decide(ctx, "POST", "/containers/abc/rename?name=" + "n" * 256), "255")


@pytest.mark.parametrize(
    ("target", "body", "kind", "cap", "hint"),
    [
        ("/containers/create", {"Image": "x"}, "containers", p.MAX_CONTAINERS, "container prune"),
        ("/networks/create", {"Name": "n"}, "networks", p.MAX_NETWORKS, "network prune"),
        ("/volumes/create", {"Name": "v"}, "volumes", p.MAX_VOLUMES, "volume prune"),
    ],
)
def test_counts_are_capped_per_user(ctx, target, body, kind, cap, hint):
    req = p.classify("POST", target)
    assert ("count", kind) in p.references(req)
    wire(decide(ctx, "POST", target, body, {("count", kind): cap - 1}))
    refused(
        decide(ctx, "POST", target, body, {("count", kind): cap}),
        f"you have {cap} {kind}, the most one user may have ({cap})",
        hint,
    )


@pytest.mark.parametrize(
    ("kind", "listing", "count"),
    [
        ("containers", {"Containers": 7, "ContainersRunning": 2}, 7),
        ("networks", [{"Name": "bridge"}, {"Name": "host"}, {"Name": "none"}, {"Name": "a"}], 1),
        ("volumes", {"Volumes": [{"Name": "a"}, {"Name": "b"}], "Warnings": None}, 2),
        ("volumes", {"Volumes": None, "Warnings": None}, 0),
    ],
)
def test_count_objects(kind, listing, count):
    assert p.count_objects(kind, listing) == count


@pytest.mark.parametrize(
    ("kind", "listing"),
    [("containers", {}), ("containers", []), ("networks", {"x": 1}), ("volumes", [1])],
)
def test_count_objects_refuses_what_a_daemon_does_not_send(kind, listing):
    with pytest.raises(ValueError):
        p.count_objects(kind, listing)
