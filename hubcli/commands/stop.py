"""``hub stop USERNAME [--checkpoint]``: stop one user's environment through the running hub.

Exit status: 0 stopped, 1 the hub failed to stop it, 3 no hub answers at --url, 4 the hub has no
such user, 5 the admin token is missing, unreadable or refused (docs/api.md).
"""

from __future__ import annotations

from typing import Annotated

import typer

from hubcli.commands.status import TokenOption, UrlOption
from hubcli.hubclient import DEFAULT_TOKEN_FILE, DEFAULT_URL, HubClient, HubClientError
from hubcli.output import console, err_console, fail, field, print_json


def stop(
    username: Annotated[str, typer.Argument(help="the user's OAuth username", show_default=False)],
    checkpoint: Annotated[
        bool,
        typer.Option("--checkpoint", help="CRIU-checkpoint it (resumes on next visit) instead"),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the API's JSON")] = False,
    url: UrlOption = DEFAULT_URL,
    token_file: TokenOption = DEFAULT_TOKEN_FILE,
) -> None:
    """Stop one user's environment through the running hub.

    The container and the user's daemon stop; the workspace stays and the next visit starts it
    again (or resumes it, with --checkpoint). Exit status: 0 stopped, 1 the hub failed, 3 no hub
    answers at --url, 4 no such user, 5 the admin token is missing, unreadable or refused.
    """
    action = "checkpoint" if checkpoint else "stop"
    try:
        with err_console.status(
            f"{'Checkpointing' if checkpoint else 'Stopping'} {field(username)}..."
        ):
            result = HubClient(url=url, token_file=token_file).act(username, action)
    except HubClientError as e:
        fail(e.message, e.code)
    if as_json:
        print_json(result)
        return
    state = result.get("state") or "?"
    console.print(f"{field(result.get('user', username))}: {field(state)}")
    if checkpoint and state != "checkpointed":
        err_console.print(
            "[yellow]warning:[/] the checkpoint did not succeed; the environment was stopped "
            "instead (see `hub status` for the failure count)"
        )


def register(app: typer.Typer) -> None:
    app.command("stop")(stop)
