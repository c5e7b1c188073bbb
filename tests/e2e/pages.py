"""What a user does in the browser, shared by the tests in tests/e2e/: sign in at the provider's
form and wait for the terminal."""

from __future__ import annotations

from tests.support.browser import goto
from tests.support.hubprocess import HubSite


def login(
    page, site: HubSite, prefix: str, user: str, path: str = "/", *, if_asked: bool = False
) -> None:
    """Open ``prefix`` like a user would and sign in at the provider's form. With ``if_asked``
    the form is filled only when the provider shows it (a second login reuses its session)."""
    goto(page, site.url(prefix, path))
    if if_asked:
        page.wait_for_load_state()
        if not page.locator("input[name=login]").count():
            return
    else:
        page.wait_for_selector("input[name=login]", timeout=20_000)
    page.fill("input[name=login]", user)
    page.fill("input[name=password]", "any password")
    page.click("button[type=submit]")


def wait_terminal(page, timeout: float = 120_000) -> None:
    """Wait through the progress page until ttyd's terminal is there."""
    page.wait_for_selector(".xterm-rows", timeout=timeout)
