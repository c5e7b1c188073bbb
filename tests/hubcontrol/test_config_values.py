"""The value parsers behind labels and flags: durations, sizes, CPU quotas, ports, names."""

from __future__ import annotations

import pytest

from hubcontrol.config import (
    parse_bool,
    parse_docker_socket,
    parse_domain,
    parse_port,
    parse_route_prefix,
    session_secret_bytes,
)
from hubcontrol.durations import (
    parse_cpu_quota,
    parse_duration,
    parse_memory_max,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("30m", 1800.0),
        ("1h30m", 5400.0),
        ("90s", 90.0),
        ("2d", 172800.0),
        ("30d", 2592000.0),
        ("1w", 604800.0),
        ("1.5h", 5400.0),
        ("500ms", 0.5),
        ("1h0m5s", 3605.0),
        (" 30M ", 1800.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("30", "'30' has no unit"),
        ("", "empty duration"),
        ("soon", "'soon' is not a duration"),
        ("30 m", "is not a duration"),
        ("-5m", "is not a duration"),
        ("1h30", "is not a duration"),
        ("m30", "is not a duration"),
        ("1y", "is not a duration"),
        ("\u0663m", "is not a duration"),  # Arabic-Indic digit: ASCII digits only
    ],
)
def test_parse_duration_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_duration(text)
    assert "30m" in str(info.value)  # says what is accepted


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1073741824", 1073741824),
        (1073741824, 1073741824),
        ("8G", 8 << 30),
        ("512M", 512 << 20),
        ("1.5G", 3 << 29),
        ("64K", 65536),
        ("2T", 2 << 40),
        ("100B", 100),
        ("0", 0),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("8g", "upper-case suffixes; use 8G"),
        ("8GB", "not a size"),
        ("1GiB", "not a size"),
        ("lots", "not a size"),
        ("-1", "not a size"),
        ("1.5", "fractional number of bytes"),
        (True, "not a size"),
        (-3, "negative"),
    ],
)
def test_parse_size_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("8G", 8 << 30),
        ("infinity", None),
        ("50%", 1 << 39),
        ("100%", 1 << 40),
        ("16G", 16 << 30),
        (None, None),  # unset: no limit
        ("  ", None),
    ],
)
def test_parse_memory_max(text: str, size: int | None) -> None:
    assert parse_memory_max(text, total_memory=1 << 40) == size


@pytest.mark.parametrize(
    ("text", "message"),
    [("0", "no memory"), ("150%", "percentage"), ("0%", "percentage"), ("unlimited", "infinity")],
)
def test_parse_memory_max_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_memory_max(text, total_memory=1 << 40)


def test_parse_memory_max_percentage_uses_physical_memory() -> None:
    assert parse_memory_max("100%") > 0


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("200%", 2.0),
        ("50%", 0.5),
        ("400%", 4.0),
        ("12.5%", 0.125),
        ("1%", 0.01),
        (" 150% ", 1.5),
        (None, None),  # unset: no limit
        ("", None),
    ],
)
def test_parse_cpu_quota(text: str | None, cpus: float | None) -> None:
    assert parse_cpu_quota(text) == (None if cpus is None else pytest.approx(cpus))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2", "no % sign"),
        ("0%", "no CPU time"),
        ("-50%", "not a CPU quota"),
        ("2 cores", "not a CPU quota"),
        ("1.234%", "not a CPU quota"),
        ("%", "not a CPU quota"),
        ("infinity", "leave the label unset for no limit"),  # CPUQuota= does not take it
    ],
)
def test_parse_cpu_quota_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_cpu_quota(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("true", True),
        ("True", True),
        ("1", True),
        ("yes", True),
        ("on", True),
        ("false", False),
        ("0", False),
        ("off", False),
        ("", False),
        (True, True),
    ],
)
def test_parse_bool(text: str, value: bool) -> None:
    assert parse_bool(text) is value


def test_parse_bool_rejects() -> None:
    with pytest.raises(ValueError, match="'maybe' is not a boolean; expected true or false"):
        parse_bool("maybe")


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("unix:///var/run/docker.sock", "/var/run/docker.sock"),
        ("/run/docker.sock", "/run/docker.sock"),
    ],
)
def test_parse_docker_socket(text: str, path: str) -> None:
    assert parse_docker_socket(text) == path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tcp://127.0.0.1:2375", "only unix sockets"),
        ("docker.sock", "not an absolute socket path"),
        ("unix://run/x", "not an absolute"),
    ],
)
def test_parse_docker_socket_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_docker_socket(text)


@pytest.mark.parametrize(
    ("text", "port"), [("1", 1), ("8080", 8080), ("65535", 65535), (7112, 7112), (" 80 ", 80)]
)
def test_parse_port(text: str, port: int) -> None:
    assert parse_port(text) == port


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "out of range"),
        ("65536", "out of range"),
        ("http", "not a port"),
        ("80.5", "not a port"),
        ("-1", "not a port"),
        ("", "not a port"),
        (True, "not a port"),
        ("\u0663", "not a port"),  # Arabic-Indic digit
    ],
)
def test_parse_port_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_port(text)
    assert "1 to 65535" in str(info.value)


@pytest.mark.parametrize(
    ("text", "domain"),
    [
        ("example.com", "example.com"),
        ("Example.COM.", "example.com"),
        ("localhost", "localhost"),
        ("dev-1.example.org", "dev-1.example.org"),
    ],
)
def test_parse_domain(text: str, domain: str) -> None:
    assert parse_domain(text) == domain


@pytest.mark.parametrize(
    "text",
    [
        "",
        "example..com",
        "-x.example.com",
        "exa_mple.com",
        "example.com:443",
        "https://example.com",
        "a" * 64 + ".com",
    ],
)
def test_parse_domain_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="is not a domain name"):
        parse_domain(text)


@pytest.mark.parametrize(
    ("text", "prefix"),
    [("code", "code"), ("Term", "term"), ("a", "a"), ("web-2", "web-2"), ("x" * 63, "x" * 63)],
)
def test_parse_route_prefix(text: str, prefix: str) -> None:
    assert parse_route_prefix(text) == prefix


@pytest.mark.parametrize("text", ["", "my_app", "-code", "code-", "code.x", "x" * 64, "ko de"])
def test_parse_route_prefix_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="is not a DNS label"):
        parse_route_prefix(text)


@pytest.mark.parametrize(
    ("secret", "strength"),
    [("ab" * 32, 32), ("ab" * 16, 16), ("x" * 40, 40), ("64-character-hex-string", 23), ("abc", 3)],
)
def test_session_secret_bytes(secret: str, strength: int) -> None:
    assert session_secret_bytes(secret) == strength
