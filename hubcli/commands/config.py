"""``hub config check FILE``: validate a compose file or hub.labels.yaml and show what it resolves to."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from hubcli.exitcodes import EXIT_USAGE
from hubcli.output import console, field, print_json, print_problems, print_warning
from hubcontrol.config import REDACTED, START_FLAGS, HubConfig, config_as_dict, load_config
from hubcontrol.environment import template_shells
from hubcontrol.errors import ConfigError

config_app = typer.Typer(
    name="config",
    help="Inspect the hub's configuration (labels, flags and HUB_* variables).",
    no_args_is_help=True,
)


@config_app.command("check")
def check(
    file: Annotated[
        Path, typer.Argument(help="docker-compose.yml or hub.labels.yaml", show_default=False)
    ],
    env_file: Annotated[
        Path | None,
        typer.Option(
            "--env-file",
            help="extra env file with HUB_* variables (wins over the service's env_file)",
        ),
    ] = None,
    service: Annotated[
        str | None,
        typer.Option(
            "--service",
            help="the compose service, when several are labelled rediacc.install_as=systemd",
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="print the resolved configuration as JSON (docs/configuration.md)"
        ),
    ] = False,
    images: Annotated[
        bool,
        typer.Option(
            "--images/--no-images",
            help="look into the template images in the --docker-socket daemon (never pulled) to "
            "show the shell commands and hooks will run with",
        ),
    ] = True,
) -> None:
    """Validate FILE with its env files and the environment; print the resolved configuration.

    Exits 0 when the configuration is valid, 2 with every problem (one per line, on stderr) when not.
    """
    try:
        config = load_config(file, env_file=env_file, service=service)
    except ConfigError as exc:
        if as_json:
            print_json(
                {"schema_version": 1, "valid": False, "errors": exc.problems, "warnings": []}
            )
        print_problems(exc.problems)
        raise typer.Exit(EXIT_USAGE) from None
    shells, shell_warnings = template_shells(config) if images else ({}, [])
    for warning in (*config.warnings, *shell_warnings):
        print_warning(warning)
    if as_json:
        data = config_as_dict(config)
        data["warnings"] += shell_warnings
        data["shells"] = shells
        data["errors"] = []
        print_json(data)
        return
    _print_config(config, shells)


def _print_config(config: HubConfig, shells: dict[str, dict]) -> None:
    where = f"{config.source}" + (f" (service {config.service})" if config.service else "")
    console.print(f"[bold green]valid:[/] {field(where)}", soft_wrap=True)
    if config.env_files:
        console.print(
            "env files: " + field(", ".join(str(p) for p in config.env_files)), soft_wrap=True
        )

    hub = Table(
        title="hub start", title_justify="left", show_header=False, box=None, padding=(0, 2)
    )
    hub.add_column(style="bold")
    hub.add_column()
    for spec in START_FLAGS.values():
        if spec.attr is not None:
            hub.add_row(f"--{spec.name}", field(spec.shown(config)))
    console.print(hub)

    routes = Table(title="routes", title_justify="left")
    routes.add_column("prefix", style="bold")
    routes.add_column("host")
    routes.add_column("container port", justify="right")
    for prefix, port in config.routes.items():
        routes.add_row(prefix, f"{prefix}.{config.base_domain}", str(port))
    console.print(routes)

    for name, t in config.templates.items():
        title = f"template {name}" + (" (default)" if name == config.default_template else "")
        table = Table(
            title=field(title), title_justify="left", show_header=False, box=None, padding=(0, 2)
        )
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        table.add_row("image", field(t.image))
        table.add_row("command", field(t.command or "(the image's own)"))
        table.add_row("shell", _shell(shells.get(name)))
        table.add_row("user", field(t.user))
        table.add_row("workspace", field(t.workspace))
        table.add_row("shm_size", f"{_size(t.shm_size)} ({t.shm_size} bytes)")
        table.add_row("docker", t.docker or "(none: no docker daemon for the user)")
        table.add_row("limits", f"cpu {t.cpu or 'unlimited'}, memory {t.memory or 'unlimited'}")
        for hook in ("on_create", "pre_dump", "post_restore"):
            if getattr(t, hook):
                table.add_row(f"hook {hook}", field(getattr(t, hook)))
        table.add_row(
            "checkpoint",
            "(--checkpoint)" if t.checkpoint is None else ("true" if t.checkpoint else "false"),
        )
        table.add_row("mode", t.mode)
        if t.cap_add:
            table.add_row("cap_add", ", ".join(t.cap_add))
        console.print(table)

    env = Table(
        title="environment", title_justify="left", show_header=False, box=None, padding=(0, 2)
    )
    env.add_column(style="bold")
    env.add_column(overflow="fold")
    o = config.oauth
    rows = [
        ("HUB_OAUTH_CLIENT_ID", o.client_id if o else None),
        ("HUB_OAUTH_CLIENT_SECRET", REDACTED if o else None),
        ("HUB_OAUTH_AUTHORIZE_URL", o.authorize_url if o else None),
        ("HUB_OAUTH_TOKEN_URL", o.token_url if o else None),
        ("HUB_OAUTH_USERINFO_URL", o.userinfo_url if o else None),
        ("HUB_OAUTH_USERINFO_PATH", o.userinfo_path if o else None),
        ("HUB_OAUTH_GROUPS_PATH", o.groups_path if o else None),
        (
            "HUB_OAUTH_REDIRECT_URI",
            (o.redirect_uri or "(computed from the request host)") if o else None,
        ),
        ("HUB_OAUTH_SCOPES", " ".join(o.scopes) if o else None),
        ("HUB_SESSION_SECRET", REDACTED if config.session_secret else None),
        (
            "HUB_ALLOWED_GROUPS",
            ", ".join(sorted(config.allowed_groups)) or "(anyone who can log in)",
        ),
        ("HUB_ADMIN_USERS", ", ".join(sorted(config.admin_users)) or "(none)"),
    ]
    for name, value in rows:
        env.add_row(name, field(value) if value is not None else "[dim](not set)[/]")
    console.print(env)


def _shell(row: dict | None) -> str:
    if row is None:
        return "chosen at start: bash where the image has it, else sh (images not looked into)"
    if not row["image_seen"]:
        return "chosen at start: bash where the image has it, else sh (image not in the daemon)"
    return field(row["shell"]) if row["shell"] else "[red]none: the image has no shell[/]"


def _size(size: int) -> str:
    for unit, factor in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
