"""``hub doctor``: check this host's prerequisites (hubcontrol.doctor) and say how to fix each.

``hub start`` and ``hub install`` run the same checks first (``precheck``): failures stop them
with this table's rows, warnings are printed and they go on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from hubcli.exitcodes import EXIT_HOST, EXIT_USAGE
from hubcli.output import console, err_console, fail, field, print_error, print_json, print_warning
from hubcontrol import doctor
from hubcontrol.config import HubConfig, load_config
from hubcontrol.errors import ConfigError

STYLE = {doctor.OK: "green", doctor.WARN: "yellow", doctor.FAIL: "bold red"}


def checks_table(checks: list[doctor.Check]) -> Table:
    table = Table(title="hub doctor", title_justify="left")
    table.add_column("check", style="bold")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    table.add_column("fix", overflow="fold")
    for c in checks:
        table.add_row(c.name, f"[{STYLE[c.status]}]{c.status}[/]", field(c.detail), field(c.fix))
    return table


def precheck(config: HubConfig, command: str) -> None:
    """The doctor's checks for ``config`` before ``command`` (``hub start``, ``hub install``):
    each warning printed on stderr; on any failure every failed check (what is missing and the
    command that fixes it) and exit ``EXIT_HOST``."""
    checks = doctor.run_checks(
        workspace_dir=config.workspace_dir,
        checkpoint=doctor.checkpoint_wanted(config),
        userns_remap=config.userns_remap,
    )
    for c in checks:
        if c.status == doctor.WARN:
            print_warning(f"{c.name}: {c.detail}" + (f" (fix: {c.fix})" if c.fix else ""))
    failed = doctor.failures(checks)
    if failed:
        for c in failed:
            print_error(f"{c.name}: {c.detail}" + (f"; fix: {c.fix}" if c.fix else ""))
        print_error(
            f"{command} stopped: this host lacks what the hub needs (above; `hub doctor` shows "
            "every check, `hub install --setup-host` fixes what a command can)"
        )
        raise typer.Exit(EXIT_HOST)


def doctor_command(
    workspace_dir: Annotated[
        Path | None,
        typer.Option(
            "--workspace-dir",
            help="the hub's --workspace-dir, whose filesystem decides seeded data-roots "
            f"(default: from --labels, else {HubConfig.workspace_dir})",
            show_default=False,
        ),
    ] = None,
    checkpoint: Annotated[
        bool | None,
        typer.Option(
            "--checkpoint/--no-checkpoint",
            help="checkpointing is on (CRIU's prerequisites fail when missing) or off (not "
            "checked) (default: from --labels, else not known: they are warnings)",
            show_default=False,
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            "--labels", help="the hub's compose file or hub.labels.yaml, as for hub start"
        ),
    ] = None,
    env_file: Annotated[
        Path | None, typer.Option("--env-file", help="extra env file, as for hub start")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the checks as JSON")] = False,
) -> None:
    """Check this host's prerequisites: dockerd, tini-static, iptables, cgroups, the workspace
    dir's filesystem, and for checkpoints CRIU, runc.conf, io_uring and CAP_SYS_RESOURCE.

    Each row says what was found and the command that fixes it; hub install --setup-host does
    every fix a command can.

    Exit codes: 0 nothing failed (warnings allowed), 6 a check failed (hub start and hub
    install refuse to run), 2 bad --labels or --env-file.
    """
    userns_remap = False
    if labels is not None:
        try:
            config = load_config(labels, env_file=env_file)
        except ConfigError as exc:
            fail(exc, EXIT_USAGE)
        if workspace_dir is None:
            workspace_dir = config.workspace_dir
        if checkpoint is None:
            checkpoint = doctor.checkpoint_wanted(config)
        userns_remap = config.userns_remap
    workspace_dir = workspace_dir or HubConfig.workspace_dir
    checks = doctor.run_checks(
        workspace_dir=workspace_dir, checkpoint=checkpoint, userns_remap=userns_remap
    )
    failed = doctor.failures(checks)
    if as_json:
        print_json(
            {
                "schema_version": 1,
                "ok": not failed,
                "checkpoint": checkpoint,
                "workspace_dir": str(workspace_dir),
                "checks": [c.as_dict() for c in checks],
            }
        )
    else:
        console.print(checks_table(checks))
        if failed:
            err_console.print(
                f"[bold red]{len(failed)} failed:[/] the hub cannot run here until they are "
                "fixed (`hub install --setup-host` does what a command can)"
            )
    if failed:
        raise typer.Exit(EXIT_HOST)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor_command)
