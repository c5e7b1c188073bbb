"""``hub audit USER``: a user's docker events from the audit log, as a table or JSON lines."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from hubcli.exitcodes import EXIT_FAILURE, EXIT_USAGE
from hubcli.output import console, err_console, fail, field
from hubcontrol.auditlog import AuditLog, follow, parse_since, read_records
from hubcontrol.config import DEFAULT_AUDIT_DIR
from hubcontrol.errors import UsernameError
from hubcontrol.text import inert_json

COLUMNS = ("time", "type", "action", "resource", "name", "image", "details")
ACTION_STYLE = {
    "destroy": "red",
    "delete": "red",
    "kill": "red",
    "die": "yellow",
    "oom": "red",
    "gap": "bold red",
    "create": "green",
    "start": "green",
    "pull": "cyan",
    "push": "cyan",
}


def short_resource(resource: str) -> str:
    """Container and image IDs shortened as ``docker ps`` does; references and names in full."""
    digest = resource.removeprefix("sha256:")
    if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
        return digest[:12]
    return resource


def details(record: dict) -> str:
    """What the record says beyond image and name: exit code, signal, command, origin, ..."""
    attrs = record.get("attrs") or {}
    parts = [f"{k}={v}" for k, v in attrs.items() if k not in ("image", "name", "origin")]
    if attrs.get("origin"):
        parts.insert(0, f"by {attrs['origin']}")
    return " ".join(parts)


def row(record: dict) -> list[str]:
    attrs = record.get("attrs") or {}
    action = str(record.get("action", ""))
    style = ACTION_STYLE.get(action)
    cells = [
        field(record.get("ts", "")),
        field(record.get("type", "")),
        f"[{style}]{field(action)}[/]" if style else field(action),
        field(short_resource(str(record.get("resource", "")))),
        field(str(attrs.get("name", ""))),
        field(str(attrs.get("image", ""))),
        field(details(record)),
    ]
    if attrs.get("origin"):
        cells = [f"[dim]{c}[/]" for c in cells]
    return cells


def _json_line(record: dict) -> str:
    # Exact JSON (it parses to the record as logged), with control characters as \u escapes.
    return inert_json(record)


def audit_command(
    user: Annotated[str, typer.Argument(help="the user whose records to show", show_default=False)],
    follow_: Annotated[
        bool,
        typer.Option("--follow", "-f", help="keep printing new records (survives log rotation)"),
    ] = False,
    since: Annotated[
        str | None,
        typer.Option("--since", help="only records from this long ago (30m, 1h, 2d) or this time"),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the records as JSON lines, as in the log")
    ] = False,
    audit_dir: Annotated[
        Path, typer.Option("--audit-dir", help="the hub's --audit-dir")
    ] = DEFAULT_AUDIT_DIR,
) -> None:
    """Show a user's audit records: every docker event on their own daemon (docs/audit.md).

    Records the hub caused itself (the environment container's lifecycle, the template image
    transfer) are shown dimmed, with "by hub". Exit codes: 0 shown (also when none matched),
    1 no log for the user or it cannot be read, 2 bad arguments.
    """
    try:
        since_time = parse_since(since) if since else None
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    try:
        path = AuditLog(audit_dir).path(user)
    except UsernameError as exc:
        fail(f"user {user!r}: {exc.user_message}", EXIT_USAGE)

    if follow_:
        _follow(path, since_time, as_json)
        return
    try:
        records = list(read_records(path, since_time))
    except FileNotFoundError:
        fail(f"no audit log for {user} at {path}: check the user name and --audit-dir")
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}", EXIT_FAILURE)
    if as_json:
        for record in records:
            typer.echo(_json_line(record))
        return
    if not records:
        err_console.print(
            f"no records for {field(user)}" + (f" since {field(since)}" if since else "")
        )
        return
    table = Table(title=f"audit log of {field(user)} ({field(str(path))})", title_justify="left")
    for col in COLUMNS:
        table.add_column(col, overflow="fold")
    for record in records:
        table.add_row(*row(record))
    console.print(table)


def _follow(path: Path, since_time: datetime | None, as_json: bool) -> None:
    if not path.exists():
        err_console.print(f"waiting for {field(str(path))} ...")
    try:
        for record in follow(path, since_time):
            if as_json:
                typer.echo(_json_line(record))
            else:
                console.print("  ".join(row(record)), soft_wrap=True)
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}", EXIT_FAILURE)


def register(app: typer.Typer) -> None:
    app.command("audit")(audit_command)
