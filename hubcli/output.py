"""Output helpers shared by every ``hub`` command: one stdout and one stderr console, errors, JSON.

Commands print results to ``console`` (stdout) and everything else (errors, warnings, progress)
to ``err_console`` (stderr), so ``hub ... --json | jq`` always gets clean JSON. Both consoles look
up ``sys.stdout``/``sys.stderr`` when they print, which keeps ``typer.testing.CliRunner`` working.

Every value that did not come from this program's own string literals (usernames, templates,
commands, paths, docker and hub messages) is printed through ``field()``: its control characters
shown as visible escapes (``hubcontrol.text.inert``) and its rich markup escaped, so what users
typed can neither drive the operator's terminal nor restyle the table around it. JSON output is
exact JSON with the same characters escaped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from hubcli.exitcodes import EXIT_FAILURE
from hubcontrol.errors import ConfigError, HubError
from hubcontrol.text import inert

console = Console(highlight=False, soft_wrap=False)
err_console = Console(stderr=True, highlight=False)


def field(value: object) -> str:
    """``value`` as rich markup that prints exactly as visible text: control characters escaped
    (``\\x1b``, ``\\n``, ``\\u202e``), ``[`` not taken for a style tag."""
    return escape(inert(value))


def print_error(message: str) -> None:
    """One error line on stderr, prefixed ``error:``."""
    err_console.print(f"[bold red]error:[/] {field(message)}", soft_wrap=True)


def print_warning(message: str) -> None:
    """One warning line on stderr, prefixed ``warning:``."""
    err_console.print(f"[yellow]warning:[/] {field(message)}", soft_wrap=True)


def print_problems(problems: Iterable[str]) -> None:
    """Each problem on its own ``error:`` line on stderr."""
    for problem in problems:
        print_error(problem)


def problems_of(exc: HubError) -> list[str]:
    """The individual problems in an error (a ConfigError may carry several)."""
    if isinstance(exc, ConfigError):
        return list(exc.problems)
    return [exc.user_message]


def fail(exc: HubError | str | Iterable[str], code: int = EXIT_FAILURE) -> NoReturn:
    """Print the error(s) on stderr and exit with ``code`` (2 for bad configuration or input)."""
    if isinstance(exc, HubError):
        print_problems(problems_of(exc))
    elif isinstance(exc, str):
        print_error(exc)
    else:
        print_problems(exc)
    raise typer.Exit(code)


def print_json(data: object) -> None:
    """``data`` as indented JSON on stdout (plain text: no colour, no wrapping, stable key order).

    ASCII only: every other character, control characters included, is a ``\\uXXXX`` escape."""
    typer.echo(json.dumps(data, indent=2, default=str))
