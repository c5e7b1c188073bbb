"""Fixtures shared by the browser tests in tests/e2e/."""

from __future__ import annotations

import pytest

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
