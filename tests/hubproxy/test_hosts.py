from __future__ import annotations

import pytest

from hubproxy import hosts as h

PREFIXES = {"code", "term"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("term.example.com", "term.example.com"),
        ("TERM.Example.Com", "term.example.com"),
        ("term.example.com:443", "term.example.com"),
        ("term.example.com.", None),
        ("term.example.com:", None),
        ("term.example.com:99999", None),
        ("term.example.com:0", None),
        ("term.example.com:80:80", None),
        ("alice@term.example.com", None),
        ("127.0.0.1", None),
        ("127.0.0.1:7112", None),
        ("[::1]:7112", None),
        ("10.1", None),
        ("term..example.com", None),
        ("term_x.example.com", None),
        ("-term.example.com", None),
        ("term.example.com/evil", None),
        ("term.example.com\r\nx", None),
        ("", None),
        (None, None),
    ],
)
def test_normalize_host(value, expected):
    assert h.normalize_host(value) == expected


@pytest.mark.parametrize(
    ("host", "kind", "prefix"),
    [
        ("term.example.com", "route", "term"),
        ("code.example.com", "route", "code"),
        ("example.com", "hub", None),
        ("desktop.example.com", None, None),  # prefix not configured
        ("a.term.example.com", None, None),  # nested
        ("term.example.com.evil.org", None, None),
        ("termexample.com", None, None),
        ("term.other.com", None, None),
    ],
)
def test_classify_host(host, kind, prefix):
    target = h.classify_host(host, "example.com", PREFIXES)
    if kind is None:
        assert target is None
    else:
        assert (target.kind, target.prefix) == (kind, prefix)


@pytest.mark.parametrize(
    ("path", "endpoint"),
    [
        ("/_hub/login", "login"),
        ("/_hub/login?template=x&next=/a", "login"),
        ("/_hub/api/progress", "api/progress"),
        ("/_hub", ""),
        ("/_hub/", ""),
        ("/_hub/%2e%2e/x", None),
        ("/_hub/api%2fprogress", None),
        ("/_hub/../etc", None),
        ("/_hub/./login", None),
        ("/_hub//login", None),
        ("/_hub/login/", None),
        ("/_hub\\login", None),
        ("/_hub/login;x", None),
        ("/_hubx", None),
        ("/other", None),
    ],
)
def test_hub_endpoint(path, endpoint):
    assert h.hub_endpoint(path) == endpoint


@pytest.mark.parametrize(
    ("path", "is_hub"),
    [("/_hub", True), ("/_hub/x", True), ("/_hub?x", True), ("/_hubx", False), ("/", False)],
)
def test_is_hub_path(path, is_hub):
    assert h.is_hub_path(path) is is_hub


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("/", "/"),
        ("/a/b?c=d", "/a/b?c=d"),
        ("https://term.example.com/x", "https://term.example.com/x"),
        ("http://example.com/", "http://example.com/"),
        ("https://TERM.example.com:8443/x", "https://TERM.example.com:8443/x"),
        ("//evil.org/x", "/"),
        ("/\\evil.org", "/"),
        ("\\\\evil.org", "/"),
        ("https://evil.org/", "/"),
        ("https://example.com.evil.org/", "/"),
        ("https://evilexample.com/", "/"),
        ("https://user@term.example.com/", "/"),
        ("https://term.example.com@evil.org/", "/"),
        ("javascript:alert(1)", "/"),
        ("data:text/html,x", "/"),
        ("ftp://term.example.com/", "/"),
        ("https://a.b.example.com/", "/"),
        # only the sites the hub serves: the base domain and the configured prefixes
        ("https://blog.example.com/", "/"),
        ("http://desktop.example.com:7112/x", "/"),
        ("https://code.example.com/work?x=1", "https://code.example.com/work?x=1"),
        ("/x\n", "/"),
        ("/ x", "/"),
        ("", "/"),
        (None, "/"),
        ("https://127.0.0.1/", "/"),
    ],
)
def test_safe_return_url(url, expected):
    assert h.safe_return_url(url, "example.com", PREFIXES) == expected


@pytest.mark.parametrize(
    ("host_header", "url"),
    [
        ("term.example.com", "https://code.example.com/"),
        ("term.example.com:7112", "https://code.example.com:7112/"),
        ("term.example.com:", "https://code.example.com/"),
        ("", "https://code.example.com/"),
    ],
)
def test_sibling_url_keeps_the_port(host_header, url):
    assert h.sibling_url("https", host_header, "code", "example.com") == url


@pytest.mark.parametrize(
    ("origin", "ok"),
    [
        (None, True),
        ("https://term.example.com", True),
        ("http://code.example.com:7112", True),
        ("https://example.com", True),
        ("https://blog.example.com", False),  # same site, not ours
        ("https://evil.org", False),
        ("null", False),
        ("https://term.example.com.evil.org", False),
        ("https://term.example.com/path", False),
        ("file://", False),
    ],
)
def test_origin_allowed(origin, ok):
    assert h.origin_allowed(origin, "example.com", PREFIXES) is ok
