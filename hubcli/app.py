"""The ``hub`` / ``hubcli`` command line: one typer app, one module per command under commands/."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="hub",
    help="Per-user containerized environments behind OAuth2: run, inspect and maintain the hub.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Per-user containerized environments behind OAuth2."""


# Each module in hubcli/commands/ exposes ``register(app)``; the order here is the order in --help.
COMMANDS: list[str] = [
    "config",
    "doctor",
    "install",
    "uninstall",
    "gc",
    "start",
    "audit",
    "status",
    "stop",
    "checkpoint",
]

for _name in COMMANDS:
    importlib.import_module(f"hubcli.commands.{_name}").register(app)


def main() -> None:
    app()
