"""``hub status [--json]``: every user environment of the running hub, from its API.

Exit status: 0 ok, 1 the hub answered with an error, 3 no hub answers at --url, 5 the admin
token is missing, unreadable or refused (docs/api.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.filesize import decimal
from rich.table import Table

from hubcli.hubclient import DEFAULT_TOKEN_FILE, DEFAULT_URL, HubClient, HubClientError
from hubcli.output import console, fail, field, print_json
from hubcontrol.durations import format_duration

STATE_STYLE = {
    "running": "green",
    "starting": "cyan",
    "restoring": "cyan",
    "stopping": "yellow",
    "checkpointing": "magenta",
    "checkpointed": "magenta",
    "stopped": "dim",
    "failed": "bold red",
}
KIND = {"http": "http", "ws-in": "ws in", "ws-out": "ws out", "start": "start"}

UrlOption = Annotated[
    str, typer.Option("--url", envvar="HUB_URL", help="where the hub listens", show_default=True)
]
TokenOption = Annotated[
    Path,
    typer.Option(
        "--token-file",
        envvar="HUB_TOKEN_FILE",
        help="the hub's admin token (<state-dir>/admin.token, root-only)",
        show_default=True,
    ),
]


def _num(value: object) -> str:
    return "" if value is None else field(value)


def status_table(doc: dict, width: int = 120) -> Table:
    """The table ``hub status`` prints; network columns only when ``width`` has room for them."""
    wide = width >= 110
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, padding=(0, 1, 0, 0))
    table.add_column("user", overflow="fold")
    table.add_column("state", no_wrap=True)
    table.add_column("template", overflow="fold", min_width=8)
    table.add_column("idle", no_wrap=True)
    table.add_column("disk", justify="right", no_wrap=True)
    table.add_column("ctrs", justify="right", no_wrap=True)
    table.add_column("imgs", justify="right", no_wrap=True)
    table.add_column("ckpt", justify="right", no_wrap=True)
    if wide:
        table.add_column("service ip", no_wrap=True)
        table.add_column("net id", justify="right", no_wrap=True)
    for u in doc.get("users", []):
        style = STATE_STYLE.get(u["state"], "")
        state = field(u["state"])
        failures = field(u.get("checkpoint_failures") or 0)
        ckpt = failures
        if u.get("checkpoint_disabled"):
            ckpt = f"[red]{failures} off[/]"
        elif failures:
            ckpt = f"[yellow]{failures}[/]"
        idle = "" if u.get("idle_seconds") is None else format_duration(u["idle_seconds"], parts=2)
        kind = KIND.get(u.get("activity_kind") or "", "")
        row = [
            field(u["user"]),
            f"[{style}]{state}[/]" if style else state,
            field(u.get("template") or ""),
            f"{idle} [dim]{kind}[/]" if idle and kind else idle,
            _disk(u),
            _num(u.get("containers_running")),
            _num(u.get("images")),
            ckpt,
        ]
        if wide:
            row += [field(u.get("service_ip") or ""), _num(u.get("net_id"))]
        table.add_row(*row)
    return table


def _disk(u: dict) -> str:
    """Disk use; "≥" when the sampler's walk stopped at its bound (a lower bound)."""
    if u.get("disk_bytes") is None:
        return ""
    return ("≥" if u.get("disk_partial") else "") + decimal(u["disk_bytes"])


def status(
    as_json: Annotated[bool, typer.Option("--json", help="print the API's JSON")] = False,
    url: UrlOption = DEFAULT_URL,
    token_file: TokenOption = DEFAULT_TOKEN_FILE,
) -> None:
    """Show every user environment of the running hub.

    State, template, idle time and last activity, disk usage, running containers, images and
    checkpoint failures (disk and docker numbers are sampled every 30 s). Exit status: 0 ok,
    1 the hub answered with an error, 3 no hub answers at --url, 5 the admin token is missing,
    unreadable or refused.
    """
    try:
        doc = HubClient(url=url, token_file=token_file).status()
    except HubClientError as e:
        fail(e.message, e.code)
    if as_json:
        print_json(doc)
        return
    if not doc.get("users"):
        console.print("No user environments yet.")
        return
    console.print(status_table(doc, console.width))


def register(app: typer.Typer) -> None:
    app.command("status")(status)
