"""The policy socket probed as an attacker would, with raw HTTP the docker CLI never sends:
path tricks, encodings, duplicate and case-variant JSON keys, HostConfig fields in unexpected
places, chunked, oversized and smuggling-shaped bodies, pipelining and HTTP/1.0. Each probe runs
against a real scratch dockerd behind the real policy socket process, and after every refused
probe the daemon holds no container that was not there before."""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.support.policysocket import policy_socket

pytestmark = [
    pytest.mark.docker,
]
IMG = "hub-test/busybox:latest"
DAEMON_INDEX = 21  # its bridge hubt21, apart from the other modules' daemons


@pytest.fixture(scope="module")
def sock(busybox_daemon):
    with policy_socket(busybox_daemon) as s:
        (s.workspace / "proj").mkdir()
        yield s


def exchange(sock, data: bytes, *, timeout: float = 10) -> bytes:
    """Send raw bytes, read until the proxy closes (every probe here ends with a close)."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(str(sock.socket))
    try:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out
    finally:
        s.close()


def request(
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict | None = None,
    version: str = "HTTP/1.1",
    close: bool = True,
) -> bytes:
    h = {"Host": "docker"}
    if body is not None:
        h["Content-Type"] = "application/json"
        h["Content-Length"] = str(len(body))
    h.update(headers or {})
    if close:
        h.setdefault("Connection", "close")
    head = f"{method} {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
    return head.encode() + b"\r\n" + (body or b"")


def status_and_message(response: bytes) -> tuple[int, str]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    try:
        return status, json.loads(body)["message"]
    except (ValueError, KeyError):
        return status, body.decode(errors="replace")


def containers(busybox_daemon) -> list[str]:
    return sorted(c.id for c in busybox_daemon.api.containers.list(all=True))


def create(body: dict | str, path: str = "/v1.41/containers/create") -> bytes:
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    return request("POST", path, raw)


PRIV = '"HostConfig": {"Privileged": true}'

REFUSED_PROBES = {
    # path tricks
    "dot-dot before the endpoint": create({"Image": IMG}, "/v1.41/../containers/create"),
    "encoded dot-dot": create({"Image": IMG}, "/v1.41/%2e%2e/containers/create"),
    "double slash": create({"Image": IMG}, "/v1.41//containers/create"),
    "encoded slash, privileged": create(
        f'{{"Image": "{IMG}", {PRIV}}}', "/v1.41/containers%2Fcreate"
    ),
    "unversioned, privileged": create(f'{{"Image": "{IMG}", {PRIV}}}', "/containers/create"),
    "ancient API version": create({"Image": IMG}, "/v1.23/containers/create"),
    "unknown endpoint": request("POST", "/v1.41/containers/x/checkpoints"),
    "swarm under a version prefix": request("POST", "/v1.41/swarm/init", b"{}"),
    "plugin pull": request("POST", "/v1.41/plugins/pull?remote=vieux/sshfs", b"[]"),
    "lower-case method": create(f'{{"Image": "{IMG}", {PRIV}}}').replace(b"POST", b"post", 1),
    # JSON tricks
    "duplicate key, last wins": create(
        f'{{"Image": "{IMG}", "HostConfig": {{"Privileged": false, "Privileged": true}}}}'
    ),
    "lower-case keys": create(f'{{"image": "{IMG}", "hostconfig": {{"privileged": true}}}}'),
    "upper-case keys": create(f'{{"IMAGE": "{IMG}", "HOSTCONFIG": {{"PRIVILEGED": true}}}}'),
    "HostConfig fields at the top level": create(f'{{"Image": "{IMG}", "Privileged": true}}'),
    "binds at the top level": create({"Image": IMG, "Binds": ["/:/host"]}),
    "duplicate HostConfig objects": create(
        f'{{"Image": "{IMG}", "HostConfig": {{}}, "hostConfig": {{"Binds": ["/etc:/x"]}}}}'
    ),
    "long-s spelling of SecurityOpt": create(
        f'{{"Image": "{IMG}", "HostConfig": {{"\u017fecurityOpt": ["seccomp=unconfined"]}}}}'
    ),
    "Kelvin-sign in a key": create(
        f'{{"Image": "{IMG}", "HostConfig": {{"Mas\u212aedPaths": []}}}}'
    ),
    "mount type in capitals": create(
        {"Image": IMG, "HostConfig": {"Mounts": [{"Type": "BIND", "Source": "/", "Target": "/h"}]}}
    ),
    "dot-dot inside a workspace bind": create(
        {"Image": IMG, "HostConfig": {"Binds": ["/workspace/proj/../../../../etc:/x"]}}
    ),
    "host network via EndpointsConfig": create(
        {"Image": IMG, "NetworkingConfig": {"EndpointsConfig": {"host": {}}}}
    ),
    "host-wide sysctl": create(
        {"Image": IMG, "HostConfig": {"Sysctls": {"kernel.core_pattern": "|/x"}}}
    ),
    "capability with CAP_ prefix, lower case": create(
        {"Image": IMG, "HostConfig": {"CapAdd": ["cap_sys_admin"]}}
    ),
    "unmasked /proc as empty list": create({"Image": IMG, "HostConfig": {"MaskedPaths": []}}),
    "trailing second JSON value": create(f'{{"Image": "{IMG}"}} {{{PRIV}}}'),
    "NaN literal": create(f'{{"Image": "{IMG}", "HostConfig": {{"Memory": NaN}}}}'),
    "invalid UTF-8": request("POST", "/v1.41/containers/create", b'{"Image": "\xff"}'),
    "exec privileged": request(
        "POST", "/v1.41/containers/x/exec", b'{"Cmd": ["sh"], "privileged": true}'
    ),
    "update into another cgroup": request(
        "POST", "/v1.41/containers/x/update", b'{"cgroupparent": "/"}'
    ),
    # query tricks
    "build network repeated": request(
        "POST", "/v1.41/build?networkmode=bridge&networkmode=host", b""
    ),
    "build network in capitals": request("POST", "/v1.41/build?networkmode=HOST", b""),
    "build from a remote URL": request("POST", "/v1.41/build?remote=http://10.208.0.2:8080/", b""),
    "query in a form body": request(
        "POST",
        "/v1.41/build",
        b"networkmode=host",
        {"Content-Type": "application/x-www-form-urlencoded"},
    ),
    "start from a checkpoint": request("POST", "/v1.41/containers/x/start?checkpoint=c1"),
    "pull from a link-local registry": request(
        "POST", "/v1.41/images/create?fromImage=169.254.169.254/x&tag=1"
    ),
    "pull from an IPv6 loopback registry": request(
        "POST", "/v1.41/images/create?fromImage=[::1]:5000/x&tag=1"
    ),
    # framing tricks
    "Content-Length and chunked together": (
        b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "two Content-Lengths": (
        b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\nContent-Length: 2\r\n"
        b"Content-Length: 40\r\n\r\n{}"
    ),
    "folded header line": (b"GET /v1.41/_ping HTTP/1.1\r\nHost: d\r\nX-A: 1\r\n  folded\r\n\r\n"),
    "HTTP/2 preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "bare LF smuggles a header": (
        b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\nX-A: 1\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    ),
    "bare LF in the query": (
        b"GET /v1.41/_ping?x=1\nTransfer-Encoding: chunked HTTP/1.1\r\nHost: d\r\n\r\n"
    ),
    "header name with a space": b"GET /v1.41/_ping HTTP/1.1\r\nHost: d\r\nContent-Length : 5\r\n\r\n",
    "tab in the target": b"GET /v1.41/_ping\t HTTP/1.1\r\nHost: d\r\n\r\n",
    "gzip transfer coding": (
        b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
    ),
}


@pytest.mark.parametrize("name", list(REFUSED_PROBES))
def test_probe_is_refused_and_leaves_nothing(busybox_daemon, sock, name):
    before = containers(busybox_daemon)
    status, message = status_and_message(exchange(sock, REFUSED_PROBES[name]))
    assert status in (400, 403, 413), message
    assert message.startswith("hub policy"), message
    assert containers(busybox_daemon) == before


def test_chunked_privileged_body_is_refused(busybox_daemon, sock):
    body = f'{{"Image": "{IMG}", {PRIV}}}'.encode()
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 7]), body[i : i + 7]) for i in range(0, len(body), 7)
    )
    raw = (
        b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    )
    before = containers(busybox_daemon)
    status, message = status_and_message(exchange(sock, raw))
    assert status == 403 and "privileged mode" in message
    assert containers(busybox_daemon) == before


def test_chunked_allowed_body_creates(busybox_daemon, sock):
    body = json.dumps({"Image": IMG, "Cmd": ["true"]}).encode()
    raw = (
        b"POST /v1.41/containers/create?name=chunky HTTP/1.1\r\nHost: d\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    )
    status, message = status_and_message(exchange(sock, raw))
    assert status == 201, message
    busybox_daemon.api.containers.get("chunky").remove()


def test_oversized_body_is_refused(busybox_daemon, sock):
    body = b'{"Image": "' + b"x" * (2 << 20) + b'"}'
    before = containers(busybox_daemon)
    # The proxy answers from the head alone; it does not read 2 MiB to refuse them.
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(str(sock.socket))
    s.sendall(request("POST", "/v1.41/containers/create", body)[:4096])
    status, message = status_and_message(s.recv(65536))
    s.close()
    assert status == 413 and "over 1048576 bytes" in message
    assert containers(busybox_daemon) == before


def test_oversized_chunked_body_is_refused(busybox_daemon, sock):
    piece = b"x" * 65536
    raw = (
        b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(20))
        + b"0\r\n\r\n"
    )
    status, message = status_and_message(exchange(sock, raw))
    assert status == 413


def test_case_variant_duplicate_cannot_hide_a_value(busybox_daemon, sock):
    """ "Privileged": true followed by a full-width "Ｐrivileged": false. Go would not fold the
    full-width key and would read true; the proxy folds it, keeps the last value and forwards one
    canonical key, so the daemon reads exactly the false that was checked."""
    raw = create(
        f'{{"Image": "{IMG}", "Cmd": ["true"], "HostConfig": {{"Privileged": true, "\uff30rivileged": false}}}}',
        "/v1.41/containers/create?name=folded",
    )
    status, message = status_and_message(exchange(sock, raw))
    assert status == 201, message
    try:
        assert (
            busybox_daemon.api.api.inspect_container("folded")["HostConfig"]["Privileged"] is False
        )
    finally:
        busybox_daemon.api.containers.get("folded").remove()


def test_pipelined_requests_are_each_checked(busybox_daemon, sock):
    before = containers(busybox_daemon)
    raw = (
        request("GET", "/v1.41/_ping", close=False)
        + create(f'{{"Image": "{IMG}", {PRIV}}}')
        + request("GET", "/v1.41/_ping")
    )
    out = exchange(sock, raw)
    assert out.startswith(b"HTTP/1.1 200 OK")
    assert (
        out.count(b"HTTP/1.1 ") == 2
    )  # the refusal closes the connection: the third is never served
    assert b"privileged mode" in out
    assert containers(busybox_daemon) == before


def test_pipelined_allowed_requests_are_all_answered(sock):
    raw = (
        request("GET", "/v1.41/_ping", close=False)
        + request("GET", "/v1.41/version", close=False)
        + request("GET", "/_ping")
    )
    out = exchange(sock, raw)
    assert out.count(b"HTTP/1.1 200 OK") == 3


def test_http_10_request(sock):
    out = exchange(sock, b"GET /v1.41/version HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.0 200 OK")
    assert b'"ApiVersion":"1.41"' in out


def test_http_10_refusal(busybox_daemon, sock):
    out = exchange(
        sock, create(f'{{"Image": "{IMG}", {PRIV}}}').replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    )
    assert out.startswith(b"HTTP/1.0 403")


def test_bare_lf_head_is_not_served(sock):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(str(sock.socket))
    s.sendall(b"GET /v1.41/_ping HTTP/1.1\nHost: d\n\n")
    start = time.monotonic()
    assert s.recv(4096) == b""  # never parsed as a request; closed once idle (5 s in this test)
    assert time.monotonic() - start < 8
    s.close()


def test_oversized_head_is_refused(sock):
    raw = b"GET /v1.41/_ping HTTP/1.1\r\nX: " + b"a" * (70 * 1024) + b"\r\n\r\n"
    status, message = status_and_message(exchange(sock, raw))
    assert status == 431


def test_raw_upgrade_hijack_relays_both_ways(busybox_daemon, sock):
    """`Connection: Upgrade, Upgrade: tcp` as docker-py sends it: after 101, raw bytes both ways."""
    c = busybox_daemon.api.containers.create(
        IMG, ["sh", "-c", "read x; echo got:$x"], stdin_open=True, name="hijack"
    )
    try:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        s.connect(str(sock.socket))
        s.sendall(
            request(
                "POST",
                f"/v1.41/containers/{c.id}/attach?stream=1&stdin=1&stdout=1",
                headers={"Connection": "Upgrade", "Upgrade": "tcp"},
                close=False,
            )
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        assert head.startswith(b"HTTP/1.1 101")
        c.start()
        s.sendall(b"hello\n")
        out = head.partition(b"\r\n\r\n")[2]
        while b"got:hello" not in out:
            chunk = s.recv(4096)
            if not chunk:
                break
            out += chunk
        assert b"got:hello" in out
        s.close()
    finally:
        c.remove(force=True)


def test_zz_the_policy_socket_survived_every_probe_without_an_unhandled_error(sock):
    """Runs last in this module: the process still serves, and no probe reached a code path that
    was not handled on purpose (those are logged with a traceback)."""
    out = exchange(sock, request("GET", "/_ping"))
    assert out.startswith(b"HTTP/1.1 200 OK") and out.endswith(b"OK")
    log = sock.log.read_text()
    assert "connection failed" not in log and "Traceback" not in log, log[-3000:]
