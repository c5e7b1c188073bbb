"""What the checkpoint browser tests share: a hub site with a short idle timeout and
checkpointing on, and reading the user's state, daemon and terminal as the tests see them."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

from tests.support.hubprocess import HubSite

IDLE_TIMEOUT = 8  # seconds


@dataclass
class CheckpointSite(HubSite):
    @property
    def flags(self) -> dict:
        return {**super().flags, "idle_timeout": f"{IDLE_TIMEOUT}s", "checkpoint": "true"}


def type_and_read(page, command: str, expect: str, timeout: float = 20_000) -> None:
    page.click(".xterm")
    page.keyboard.type(command + "\n", delay=5)
    page.wait_for_function(
        "t => document.querySelector('.xterm-rows').innerText.includes(t)",
        arg=expect,
        timeout=timeout,
    )


def record(site: HubSite, user: str) -> dict:
    path = site.root / "state" / "users" / f"{user}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def wait_state(site: HubSite, user: str, state: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        rec = record(site, user)
        if rec.get("state") == state:
            return rec
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{user} is {rec.get('state')}, not {state}:\n{site.read_log()[-3000:]}"
            )
        time.sleep(0.25)


def daemon_running(site: HubSite, user: str) -> bool:
    data_root = str(site.root / "workspaces" / f"{user}-docker")
    for pid in os.listdir("/proc"):
        if pid.isdecimal():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"dockerd") and data_root.encode() in b" ".join(argv):
                return True
    return False


def counter(site: HubSite, user: str) -> int:
    text = (site.root / "workspaces" / user / "counter").read_text().strip()
    return int(text or 0)
