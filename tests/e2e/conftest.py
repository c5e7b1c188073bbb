"""Fixtures shared by the browser tests in tests/e2e/."""

from __future__ import annotations

import pytest

from hubcontrol.checkpoint import IO_URING_SYSCTL
from tests.support.browser import launch_chromium


@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p, "--host-resolver-rules=MAP *.example.test 127.0.0.1")
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def no_io_uring_in_containers():
    """ttyd's libuv opens an io_uring, which CRIU cannot dump (UV_USE_IO_URING=0 does not stop
    libuv 1.50's epoll ring). ``kernel.io_uring_disabled=1`` denies it to processes without
    CAP_SYS_ADMIN, i.e. containers, which fall back to epoll; host processes are unaffected.
    docs/checkpoint.md asks operators for the same setting."""
    if not IO_URING_SYSCTL.exists():
        yield
        return
    old = IO_URING_SYSCTL.read_text().strip()
    if old == "0":
        IO_URING_SYSCTL.write_text("1")
    try:
        yield
    finally:
        IO_URING_SYSCTL.write_text(old)
