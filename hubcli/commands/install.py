"""``hub install COMPOSE_FILE``: turn the hub's compose service into a systemd unit, its labels file,
its environment file and Traefik routes, then start it."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table

from hubcli.commands.doctor import precheck
from hubcli.exitcodes import EXIT_FAILURE, EXIT_USAGE
from hubcli.output import console, err_console, fail, field, print_warning
from hubcontrol import hostsetup
from hubcontrol import install as inst
from hubcontrol.compose import load_compose
from hubcontrol.config import load_config
from hubcontrol.durations import parse_duration
from hubcontrol.errors import ConfigError, HubError

STATUS_STYLE = {
    "created": "green",
    "updated": "yellow",
    "unchanged": "dim",
    "removed": "red",
    "absent": "dim",
}

ComposeArg = Annotated[
    Path, typer.Argument(help="the repo's docker-compose.yml", show_default=False)
]
OptionalComposeArg = Annotated[
    Path | None,
    typer.Argument(
        help="the repo's docker-compose.yml (optional with --setup-host)", show_default=False
    ),
]
RootOpt = Annotated[
    Path,
    typer.Option("--root", help="write under this directory instead of / (packaging, tests)"),
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="show what would change; write nothing")]


def hub_executable() -> str:
    """The absolute path of the ``hub`` command of this installation (kept unresolved, so a
    symlink such as /usr/local/bin/hub survives upgrades)."""
    sibling = Path(sys.executable).parent / "hub"
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return str(sibling)
    found = shutil.which("hub")
    if found:
        return os.path.abspath(found)
    raise ConfigError("cannot find the `hub` executable; install the package so `hub` is on PATH")


def _lexer(path: Path) -> str:
    return {".service": "ini", ".yaml": "yaml"}.get(path.suffix, "bash")


def _redacted(content: str) -> str:
    lines = []
    for line in content.splitlines():
        if line and not line.startswith("#") and "=" in line:
            line = line.split("=", 1)[0] + "=<redacted>"
        lines.append(line)
    return "\n".join(lines)


def _would(art: inst.Artefact, root: Path) -> str:
    target = art.under(root)
    try:
        same = target.read_text(encoding="utf-8") == art.content
        return "unchanged" if same and (target.stat().st_mode & 0o7777) == art.mode else "updated"
    except FileNotFoundError:
        return "created"
    except (OSError, UnicodeDecodeError):
        return "updated"


def _changes_table(
    changes: list[inst.Change], artefacts: list[inst.Artefact] | None = None, title: str = ""
) -> Table:
    table = Table(title=title or None, title_justify="left")
    table.add_column("file", overflow="fold")
    table.add_column("what")
    table.add_column("mode")
    table.add_column("status")
    whats = {a.path.name: (a.what, f"{a.mode:04o}") for a in artefacts or []}
    for change in changes:
        what, mode = whats.get(change.path.name, ("", ""))
        style = STATUS_STYLE.get(change.status, "")
        table.add_row(field(str(change.path)), what, mode, f"[{style}]{change.status}[/]")
    return table


def print_systemctl_hint(cmds: list[list[str]], root: Path, why: str) -> None:
    console.print(f"[yellow]systemd not used:[/] {field(why)}. Run these where the hub will run:")
    for cmd in cmds:
        console.print("  " + field(" ".join(cmd)))


def systemd_absent_reason(root: Path) -> str:
    if root.resolve() != Path("/"):
        return f"files were written under --root {root}"
    try:
        pid1 = Path("/proc/1/comm").read_text().strip()
    except OSError:
        pid1 = "unknown"
    return f"PID 1 is {pid1!r}, not systemd"


def install_command(
    compose_file: OptionalComposeArg = None,
    service: Annotated[
        str | None,
        typer.Option(
            "--service",
            help="the compose service, when several are labelled rediacc.install_as=systemd",
        ),
    ] = None,
    env_file: Annotated[
        Path | None,
        typer.Option(
            "--env-file",
            help="extra env file with HUB_* variables (wins over the service's env_file)",
        ),
    ] = None,
    root: RootOpt = Path("/"),
    dry_run: DryRunOpt = False,
    upstream_host: Annotated[
        str,
        typer.Option("--upstream-host", help="address Traefik uses to reach the hub's --port"),
    ] = inst.DEFAULT_UPSTREAM_HOST,
    gc_timer: Annotated[
        bool | None,
        typer.Option(
            "--gc-timer/--no-gc-timer",
            help="also install (or remove) a daily `hub gc` timer for the hub's workspace dir; "
            "by default an existing timer is left as it is",
            show_default=False,
        ),
    ] = None,
    gc_max_age: Annotated[
        str, typer.Option("--gc-max-age", help="--max-age of the GC timer's `hub gc`")
    ] = "30d",
    setup_host: Annotated[
        bool,
        typer.Option(
            "--setup-host",
            help="first prepare this host: Debian packages, CRIU 4.2.1 in /opt/rediacc/criu, "
            "runc.conf, kernel.io_uring_disabled (docs/operations.md); alone, only that",
        ),
    ] = False,
    criu_debs: Annotated[
        Path | None,
        typer.Option(
            "--criu-debs",
            help="with --setup-host: a directory holding the pinned CRIU .debs (e.g. a "
            "checkout's ../shared/vendor/criu); without it they are fetched from this host's "
            "Debian mirror",
            show_default=False,
        ),
    ] = None,
    skip_checks: Annotated[
        bool,
        typer.Option(
            "--skip-checks",
            help="install even when a host check of `hub doctor` fails (at your own risk)",
        ),
    ] = False,
) -> None:
    """Install the hub as the systemd service rediacc-hub and start it.

    Writes /etc/systemd/system/rediacc-hub.service, /etc/rediacc/hub/hub.labels.yaml,
    /etc/rediacc/hub/hub.env (0600, the env_file's secrets) and
    /opt/rediacc/proxy/traefik/dynamic/rediacc-hub.yaml, rewriting only what changed; then
    `systemctl daemon-reload && systemctl enable --now rediacc-hub` where systemd runs.
    The host is checked first as `hub doctor` does; a failed check stops the install (exit 6)
    unless --skip-checks. --setup-host prepares the host before that (alone: only that).
    Exit codes: 0 installed (or nothing to change), 1 writing, systemctl or the host setup
    failed, 2 bad compose file, env file or configuration, 6 a host check failed.
    """
    if criu_debs is not None and not setup_host:
        fail("--criu-debs is only used with --setup-host", EXIT_USAGE)
    if setup_host:
        _setup_host(criu_debs, root, dry_run)
        if compose_file is None:
            return
    elif compose_file is None:
        fail(
            "missing COMPOSE_FILE: hub install <docker-compose.yml> (or --setup-host alone to "
            "prepare this host)",
            EXIT_USAGE,
        )
    try:
        svc = load_compose(compose_file, service=service, env_file=env_file)
        # Refuse to install a configuration the hub would refuse to start with.
        config = load_config(compose_file, service=service, env_file=env_file)
        parse_duration(gc_max_age)
        plan = inst.plan_install(
            svc,
            hub_exe=hub_executable(),
            upstream_host=upstream_host,
            gc_timer=gc_timer,
            gc_max_age=gc_max_age,
            workspace_dir=config.workspace_dir,
        )
    except ConfigError as exc:
        fail(exc, EXIT_USAGE)
    except ValueError as exc:
        fail(f"--gc-max-age: {exc}", EXIT_USAGE)
    for warning in (*svc.warnings, *plan.warnings):
        print_warning(warning)
    if root.resolve() == Path("/") and not skip_checks:
        precheck(config, "hub install")  # files under another --root are for another machine
    artefacts = list(plan.artefacts)

    if dry_run:
        for art in artefacts:
            status = _would(art, root)
            body = _redacted(art.content) if art.secret else art.content
            title = f"{art.under(root)}  [dim]({art.what}, {art.mode:04o}, would be {status})[/]"
            console.print(
                Panel(
                    Syntax(body, _lexer(art.path), word_wrap=True), title=title, title_align="left"
                )
            )
        for path in plan.remove:
            if inst.under_root(root, path).exists():
                console.print(f"{field(str(inst.under_root(root, path)))}: would be removed")
        console.print("[dim]dry run: nothing written[/]")
        return

    if root.resolve() == Path("/") and os.geteuid() != 0:
        fail(
            "hub install writes to /etc and /opt: run it as root",
            EXIT_FAILURE,
        )
    stop = inst.stop_commands(plan, root)  # before the files it names are gone
    try:
        if inst.systemd_running(root):
            inst.run_systemctl(stop)
        changes = inst.write_artefacts(artefacts, root)
        changes += [c for c in inst.remove_artefacts(plan.remove, root) if c.status == "removed"]
    except HubError as exc:
        fail(exc, EXIT_FAILURE)
    console.print(_changes_table(changes, artefacts, title="hub install"))
    cmds = inst.install_commands(changes)
    if inst.systemd_running(root):
        try:
            with err_console.status("systemctl daemon-reload, enable --now rediacc-hub ..."):
                inst.run_systemctl(cmds)
        except HubError as exc:
            fail(exc, EXIT_FAILURE)
        console.print(f"[green]started:[/] {inst.UNIT_NAME} (systemctl status {inst.UNIT_NAME})")
    else:
        enable = inst.offline_enable_command(root, changes)
        if enable is not None:
            try:
                inst.run_systemctl([enable])
                console.print(
                    f"[green]enabled:[/] {', '.join(enable[3:])} start at the next boot with systemd"
                )
            except HubError as exc:
                print_warning(f"could not enable the units offline: {exc.user_message}")
        print_systemctl_hint([*stop, *cmds], root, systemd_absent_reason(root))
    if all(c.status == "unchanged" for c in changes):
        console.print("[dim]already installed: nothing changed[/]")


def _setup_host(criu_debs: Path | None, root: Path, dry_run: bool) -> None:
    """``--setup-host``: hubcontrol.hostsetup's steps on this host, as a table."""
    if root.resolve() != Path("/"):
        fail("--setup-host prepares this host: it cannot be combined with --root", EXIT_USAGE)
    if dry_run:
        fail("--setup-host has no --dry-run: `hub doctor` shows what it would fix", EXIT_USAGE)
    if os.geteuid() != 0:
        fail("--setup-host installs packages and writes to /etc and /opt: run it as root")
    table = Table(title="hub install --setup-host", title_justify="left")
    table.add_column("step", style="bold")
    table.add_column("outcome")
    table.add_column("detail", overflow="fold")
    style = {"present": "dim", "done": "green", "warning": "yellow"}
    for what, step in hostsetup.steps(criu_debs):
        try:
            with err_console.status(f"{what} ..."):
                done = step()
        except HubError as exc:
            console.print(table)
            fail(exc, EXIT_FAILURE)
        except OSError as exc:  # a file the step writes (runc.conf, sysctl.d, /opt)
            console.print(table)
            fail(f"{what}: {exc}", EXIT_FAILURE)
        table.add_row(done.name, f"[{style[done.outcome]}]{done.outcome}[/]", field(done.detail))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("install")(install_command)
