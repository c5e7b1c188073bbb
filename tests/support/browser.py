"""Debian's Chromium driven by playwright (never `playwright install`: no browser downloads here).

The flags keep a headless Chromium from reaching for Google's services, which this machine's
closed network refuses many times a second, and let it run as root.
"""

from __future__ import annotations

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def launch_chromium(playwright, *extra_args: str):
    """A headless Debian Chromium; ``extra_args`` such as ``--host-resolver-rules=...``."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra_args])


def goto(page, url: str, attempts: int = 3):
    """``page.goto(url)``, again when Chromium aborted it with ``net::ERR_NETWORK_CHANGED``.

    The tests' browser runs on the hub's own host, where every environment start adds bridges
    and veth pairs, and Chromium aborts navigations in flight when the host's network changes
    (a full suite run saw it once, on the navigation right after a login). A user's browser is
    on another machine and never sees the hub host's interfaces, so this is the test bench's own
    artefact; any other navigation error is raised at once."""
    for attempt in range(attempts):
        try:
            return page.goto(url)
        except Exception as e:  # playwright's Error; imported lazily like playwright itself
            if "ERR_NETWORK_CHANGED" not in str(e) or attempt == attempts - 1:
                raise
    return None
