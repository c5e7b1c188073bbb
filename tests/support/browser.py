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
