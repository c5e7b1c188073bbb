"""``hub gc WORKSPACE_DIR``: prune abandoned per-user data-roots and orphaned checkpoint images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.filesize import decimal
from rich.table import Table

from hubcli.exitcodes import EXIT_FAILURE, EXIT_USAGE
from hubcli.output import console, err_console, fail, field, print_json
from hubcontrol import gc
from hubcontrol.durations import format_duration, parse_duration
from hubcontrol.errors import GCError

ACTION_STYLE = {gc.Action.REMOVE: "red", gc.Action.KEEP: "green", gc.Action.REFUSE: "yellow"}


def _count(n: int) -> str:
    return f"{n} candidate" + ("" if n == 1 else "s")


def _table(plan: gc.GCPlan, dry_run: bool) -> Table:
    title = f"hub gc {field(plan.workspace_dir)} (max age {format_duration(plan.max_age)})"
    table = Table(title=title + (" [dim]dry run[/]" if dry_run else ""), title_justify="left")
    for col in ("path", "net id", "age", "size", "action", "reason"):
        table.add_column(col, justify="right" if col in ("net id", "age", "size") else "left")
    if not dry_run:
        table.add_column("outcome")
    order = {gc.Action.REMOVE: 0, gc.Action.REFUSE: 1, gc.Action.KEEP: 2}
    for e in sorted(plan.entries, key=lambda e: (order[e.action], e.user, str(e.path))):
        row = [
            field(str(e.path.relative_to(plan.workspace_dir))),
            "" if e.net_id is None else str(e.net_id),
            "" if e.age is None else format_duration(e.age, parts=2),
            "" if e.size is None else decimal(e.size),
            f"[{ACTION_STYLE[e.action]}]{e.action}[/]",
            field(e.reason),
        ]
        if not dry_run:
            outcome = e.outcome or ""
            row.append(
                f"[red]{field(outcome)}[/]" if outcome.startswith("failed") else field(outcome)
            )
        table.add_row(*row)
    return table


def _usage_error(message: str, as_json: bool) -> NoReturn:
    if as_json:  # automation reads stdout: give it something to parse
        print_json({"schema_version": 1, "errors": [message]})
    fail(message, EXIT_USAGE)


def gc_command(
    workspace_dir: Annotated[
        Path, typer.Argument(help="the hub's --workspace-dir", show_default=False)
    ],
    max_age: Annotated[
        str, typer.Option("--max-age", help="remove what has been unused for longer than this")
    ] = "30d",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="list candidates; remove nothing")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the result as JSON (docs/operations.md)")
    ] = False,
    netid_registry: Annotated[
        Path, typer.Option("--netid-registry", help="directory of host-wide network-ID claims")
    ] = gc.DEFAULT_CLAIMS_DIR,
) -> None:
    """Prune abandoned per-user data-roots and orphaned checkpoint images.

    A data-root is removed when unused for longer than --max-age and its daemon is neither
    running nor configured; a checkpoint image when no container can restore it any more.
    Workspaces are never touched. Exit codes: 0 done (also when nothing was eligible), 1 some
    removals failed (the others went ahead), 2 bad arguments (workspace dir, --max-age).
    """
    try:
        seconds = parse_duration(max_age)
    except ValueError as exc:
        _usage_error(f"--max-age: {exc}", as_json)
    probe = gc.HostProbe(claims_dir=netid_registry)
    try:
        plan = gc.plan_gc(workspace_dir, max_age=seconds, probe=probe)
    except GCError as exc:
        _usage_error(exc.user_message, as_json)
    if not dry_run and plan.candidates:
        with err_console.status(f"removing {len(plan.candidates)} candidates ..."):
            plan = gc.apply_gc(plan, probe=probe)
    removed = [e for e in plan.entries if (e.outcome or "").startswith("removed")]
    freed = sum(e.size or 0 for e in removed)
    if as_json:
        print_json(
            {
                "schema_version": 1,
                "workspace_dir": str(plan.workspace_dir),
                "max_age_seconds": int(plan.max_age),
                "dry_run": dry_run,
                "entries": [e.to_json() for e in plan.entries],
                "candidates": len(plan.candidates),
                "removed": len(removed),
                "failed": len(plan.failed),
                "freed_bytes": freed,
            }
        )
    else:
        if plan.entries:
            console.print(_table(plan, dry_run))
        would = sum(e.size or 0 for e in plan.candidates)
        if dry_run:
            console.print(
                f"{_count(len(plan.candidates))}, {decimal(would)}; dry run: nothing removed"
            )
        else:
            console.print(
                f"removed {len(removed)} of {_count(len(plan.candidates))}, freed {decimal(freed)}"
            )
    if plan.failed:
        raise typer.Exit(EXIT_FAILURE)


def register(app: typer.Typer) -> None:
    app.command("gc")(gc_command)
