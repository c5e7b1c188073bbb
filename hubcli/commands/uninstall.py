"""``hub uninstall COMPOSE_FILE``: stop and disable rediacc-hub and remove what ``hub install`` wrote;
users' data-roots and workspaces stay."""

from __future__ import annotations

import subprocess
from pathlib import Path

import typer

from hubcli.commands.install import (
    ComposeArg,
    DryRunOpt,
    RootOpt,
    _changes_table,
    print_systemctl_hint,
    systemd_absent_reason,
)
from hubcli.exitcodes import EXIT_FAILURE
from hubcli.output import console, fail, field, print_warning
from hubcontrol import gc
from hubcontrol import install as inst
from hubcontrol.config import load_config
from hubcontrol.errors import HubError


def _workspace_dir(compose_file: Path) -> Path | None:
    try:
        return load_config(compose_file, require_oauth=False).workspace_dir
    except HubError as exc:
        print_warning(
            f"cannot read {compose_file} ({exc.user_message.splitlines()[0]}); removing the installed files anyway"
        )
        return None


def _warn_running_daemons(workspace: Path | None) -> None:
    """Per-user daemons outlive the hub (KillMode=process): say which ones still run."""
    if workspace is None or not workspace.is_dir():
        return
    try:
        plan = gc.plan_gc(workspace, sizes=False)
    except HubError:
        return
    running = [e for e in plan.entries if e.kind is gc.Kind.DATA_ROOT and "running" in e.reason]
    for e in running:
        print_warning(
            f"the daemon of user {e.user} keeps running without the hub ({e.reason}); "
            "`hub stop <user>` before `hub uninstall` stops it cleanly, or stop that process"
        )


def uninstall_command(
    compose_file: ComposeArg, root: RootOpt = Path("/"), dry_run: DryRunOpt = False
) -> None:
    """Stop and disable rediacc-hub and remove its unit, labels, environment, Traefik and GC files.

    Per-user data-roots (<workspace>/<user>-docker/), workspaces (<workspace>/<user>/), audit
    logs and the hub's state are preserved; `hub gc` prunes data-roots later. Exit codes: 0
    removed (or nothing installed), 1 removing or systemctl failed.
    """
    workspace = _workspace_dir(compose_file)
    systemd = inst.systemd_running(root)
    if dry_run:
        for path in inst.ALL_PATHS:
            target = inst.under_root(root, path)
            state = "would be removed" if target.exists() else "absent"
            console.print(f"{field(str(target))}: {state}")
        console.print("[dim]dry run: nothing removed[/]")
        return
    if systemd:
        # "disable --now" of a unit that was never installed fails; that is not an error here.
        for cmd in inst.UNINSTALL_STOP:
            subprocess.run(cmd, capture_output=True, check=False)
    try:
        changes = inst.remove_artefacts(inst.ALL_PATHS, root)
        if systemd:
            inst.run_systemctl(inst.UNINSTALL_RELOAD)
    except HubError as exc:
        fail(exc, EXIT_FAILURE)
    console.print(_changes_table(changes, title="hub uninstall"))
    if not systemd:
        print_systemctl_hint(
            [*inst.UNINSTALL_STOP, *inst.UNINSTALL_RELOAD], root, systemd_absent_reason(root)
        )
    _warn_running_daemons(workspace)
    where = str(workspace) if workspace else "<workspace-dir>"
    console.print(
        f"[green]preserved:[/] data-roots {field(where)}/<user>-docker/, workspaces "
        f"{field(where)}/<user>/, audit logs and hub state. Per-user daemons that were running keep "
        "running until stopped; prune data-roots with `hub gc`."
    )


def register(app: typer.Typer) -> None:
    app.command("uninstall")(uninstall_command)
