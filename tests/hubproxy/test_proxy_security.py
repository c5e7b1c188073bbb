"""What a client can send, through the real proxy (lean mitmproxy master) on raw sockets:
Host header tricks, absolute-form targets, /_hub/ path tricks, oversized headers, big bodies.
None of it reaches an environment other than the session user's own; bad input gets 400/404."""

from __future__ import annotations

import json
import socket

import pytest

from tests.support.echoenv import echo_environment
from tests.support.oidc_provider import free_port
from tests.support.proxyfakes import make_config, make_route
from tests.support.proxyharness import StubHub, cookie_for, running_proxy

DOMAIN = "example.test"
ALICE_IP, BOB_IP = "127.0.0.2", "127.0.0.3"


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    term, code = free_port(), free_port()
    routes = {"term": term, "code": code}
    with (
        echo_environment("alice-term", ALICE_IP, term),
        echo_environment("alice-code", ALICE_IP, code),
        echo_environment("bob-term", BOB_IP, term),
        echo_environment("bob-code", BOB_IP, code),
    ):
        config = make_config(
            tmp_path_factory.mktemp("sec"),
            routes=routes,
            base_domain=DOMAIN,
            session_secret="9" * 64,
        )
        hub = StubHub([ALICE_IP, BOB_IP], routes, start_delay=0)
        with running_proxy(config, hub, free_port()) as running:
            for user, ip in (("alice", ALICE_IP), ("bob", BOB_IP)):
                hub._set(make_route(user, "running", ip, routes))
            yield running


def raw(port: int, request: bytes, read_limit: int = 1 << 20) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while len(data) < read_limit:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:
                head, _, body = data.partition(b"\r\n\r\n")
                length = [
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ]
                if length and len(body) >= length[0]:
                    break
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data


def get(
    port: int, host: str | None, cookie: str, target: str = "/", extra: str = ""
) -> tuple[int, bytes]:
    lines = [f"GET {target} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"Cookie: {cookie}", "Connection: close"]
    if extra:
        lines.append(extra)
    return raw(port, ("\r\n".join(lines) + "\r\n\r\n").encode())


def body_json(data: bytes) -> dict:
    return json.loads(data.partition(b"\r\n\r\n")[2])


def test_own_environment_with_any_case_and_port(proxy):
    c = cookie_for(proxy, "alice")
    for host in (f"term.{DOMAIN}", f"TERM.{DOMAIN.upper()}:{proxy.port}", f"term.{DOMAIN}:443"):
        status, data = get(proxy.port, host, c)
        assert status == 200 and body_json(data)["name"] == "alice-term", host


@pytest.mark.parametrize(
    ("host", "status"),
    [
        (f"term.{DOMAIN}.", 400),
        ("127.0.0.1", 400),
        ("[::1]", 400),
        ("10.208.0.2", 400),
        (f"bob@term.{DOMAIN}", 400),
        (f"term.{DOMAIN}:99999", 400),
        ("evil.org", 404),
        (f"desktop.{DOMAIN}", 404),
        (f"term.{DOMAIN}.evil.org", 404),
        (f"x.term.{DOMAIN}", 404),
        (None, 400),
    ],
)
def test_host_tricks(proxy, host, status):
    got, data = get(proxy.port, host, cookie_for(proxy, "alice"))
    assert got == status, data[:300]
    assert b"alice-" not in data and b"bob-" not in data


def test_absolute_form_targets(proxy):
    c = cookie_for(proxy, "alice")
    status, data = get(proxy.port, f"term.{DOMAIN}", c, f"http://term.{DOMAIN}/x")
    assert status == 200 and body_json(data)["name"] == "alice-term"
    status, data = get(proxy.port, f"term.{DOMAIN}", c, f"http://code.{DOMAIN}/x")
    assert status == 400
    status, data = get(proxy.port, f"term.{DOMAIN}", c, f"http://{BOB_IP}:1/x")
    assert status == 400 and b"bob-" not in data


def test_duplicate_host_headers_are_refused(proxy):
    status, data = get(
        proxy.port, f"term.{DOMAIN}", cookie_for(proxy, "alice"), extra=f"Host: code.{DOMAIN}"
    )
    assert status in (400, 404) and b"alice-" not in data


@pytest.mark.parametrize(
    "target",
    [
        "/_hub/%2e%2e/api/status",
        "/_hub/../x",
        "/_hub/./health",
        "/_hub//health",
        "/_hub/api%2Fstatus",
    ],
)
def test_hub_path_tricks(proxy, target):
    status, data = get(proxy.port, f"term.{DOMAIN}", cookie_for(proxy, "alice"), target)
    assert status == 400 and b"alice-" not in data


def test_each_session_reaches_only_its_own_user(proxy):
    for user in ("alice", "bob"):
        status, data = get(proxy.port, f"code.{DOMAIN}", cookie_for(proxy, user))
        assert status == 200 and body_json(data)["name"] == f"{user}-code"


def test_oversized_headers_are_refused(proxy):
    status, data = get(
        proxy.port, f"term.{DOMAIN}", cookie_for(proxy, "alice"), extra="X-Big: " + "a" * 300_000
    )
    assert status == 431 and b"alice-" not in data


def test_bodies_stream_both_ways(proxy):
    c = cookie_for(proxy, "alice")
    size = 8 << 20
    head = (
        f"POST /upload HTTP/1.1\r\nHost: term.{DOMAIN}\r\nCookie: {c}\r\nContent-Length: {size}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    status, data = raw(proxy.port, head + b"y" * size)
    assert status == 200 and body_json(data)["body_length"] == size
    status, data = raw(
        proxy.port,
        f"GET /bytes/{size} HTTP/1.1\r\nHost: term.{DOMAIN}\r\nCookie: {c}\r\n\r\n".encode(),
        read_limit=size + 4096,
    )
    assert status == 200 and len(data.partition(b"\r\n\r\n")[2]) == size


def test_big_body_without_a_session_is_cut_off_not_buffered(proxy):
    head = (
        f"POST /upload HTTP/1.1\r\nHost: term.{DOMAIN}\r\nContent-Length: {100 << 20}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
        s.sendall(head + b"z" * 65536)
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            data = b""
    assert data == b""  # closed without reading 100 MiB
    small = (
        f"POST /upload HTTP/1.1\r\nHost: term.{DOMAIN}\r\nContent-Length: 10\r\n"
        "Connection: close\r\n\r\n0123456789"
    ).encode()
    status, _ = raw(proxy.port, small)
    assert status == 401
