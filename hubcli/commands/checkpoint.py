"""``hub checkpoint reset USERNAME``: turn a user's checkpointing back on after three strikes.

The seed's rule turns checkpointing off for a user after three failed checkpoints or restores in
a row; idle environments are then stopped and recreated. Once the operator has fixed the cause
(`hub status` shows the last error), this turns it back on through the running hub.

Exit status: 0 done, 1 the hub failed (e.g. it does not checkpoint at all), 3 no hub answers at
--url, 4 the hub has no such user, 5 the admin token is missing, unreadable or refused.
"""

from __future__ import annotations

from typing import Annotated

import typer

from hubcli.commands.status import TokenOption, UrlOption
from hubcli.hubclient import DEFAULT_TOKEN_FILE, DEFAULT_URL, HubClient, HubClientError
from hubcli.output import console, err_console, fail, field, print_json

checkpoint_app = typer.Typer(
    name="checkpoint",
    help="Checkpointing of users' environments (CRIU).",
    no_args_is_help=True,
)


@checkpoint_app.command("reset")
def reset(
    username: Annotated[str, typer.Argument(help="the user's OAuth username", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="print the API's JSON")] = False,
    url: UrlOption = DEFAULT_URL,
    token_file: TokenOption = DEFAULT_TOKEN_FILE,
) -> None:
    """Turn a user's checkpointing back on after three failures in a row turned it off.

    Exit status: 0 done, 1 the hub failed, 3 no hub answers at --url, 4 no such user, 5 the
    admin token is missing, unreadable or refused.
    """
    try:
        with err_console.status(f"Turning checkpointing back on for {field(username)}..."):
            result = HubClient(url=url, token_file=token_file).act(username, "checkpoint-reset")
    except HubClientError as e:
        fail(e.message, e.code)
    if as_json:
        print_json(result)
        return
    console.print(
        f"{field(result.get('user', username))}: checkpointing on "
        f"(environment {field(result.get('state') or '?')})"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(checkpoint_app)
