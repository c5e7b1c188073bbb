"""``hub status`` and ``hub stop`` against a running hub (the real proxy and Hub of
tests/support/statussite.py), and every way they can fail: no hub, no token, a wrong token, an
unknown user. The comparison with docker's own numbers is in tests/e2e/test_dashboard_browser.py.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import warnings

import pytest
from rich.console import Console
from typer.testing import CliRunner

with warnings.catch_warnings():  # as tests/hubproxy/conftest.py: ldap3's pyasn1 deprecation
    warnings.simplefilter("ignore", DeprecationWarning)
    import mitmproxy.addons  # noqa: F401

from hubcli.app import app
from hubcli.commands.status import status_table
from hubcli.exitcodes import EXIT_AUTH, EXIT_NO_HUB, EXIT_NO_USER
from hubcli.hubclient import user_segment
from hubcontrol.names import safe_name
from hubproxy.addons.adminapi import TOKEN_FILE
from tests.support.oidc_provider import free_port
from tests.support.statussite import ADMIN, seeded_site

runner = CliRunner()


@pytest.fixture
def site(tmp_path):
    with seeded_site(tmp_path) as s:
        yield s


def cli(site, *args):
    proxy, _, config = site
    return runner.invoke(
        app,
        [
            *args,
            "--url",
            f"http://127.0.0.1:{proxy.port}",
            "--token-file",
            str(config.state_dir / TOKEN_FILE),
        ],
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, ""), (0, "0s"), (59.9, "59s"), (61, "1m1s"), (3725, "1h2m"), (90000, "1d1h")],
)
def test_idle_column(seconds, text):
    """The idle time in the duration spelling every hub command uses (hubcontrol.durations)."""
    doc = {
        "users": [
            {"user": "alice", "state": "running", "template": "python", "idle_seconds": seconds}
        ]
    }
    out = Console(width=120, record=True, file=io.StringIO())
    out.print(status_table(doc))
    row = out.export_text().splitlines()[-1].split()
    assert row[:3] == ["alice", "running", "python"]
    assert row[3] == (text or "0")  # no idle time: the next cell shown is ckpt's 0


@pytest.mark.parametrize(
    ("user", "segment"),
    [
        ("alice", "alice"),
        ("Alice.Smith@example.com", "Alice.Smith@example.com"),
        ("name with space", safe_name("name with space")),
        ("a/b", safe_name("a/b")),
        ("ö", safe_name("ö")),
    ],
)
def test_user_segment(user, segment):
    assert user_segment(user) == segment


def test_status_json_is_the_api_document(site):
    result = cli(site, "status", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert sorted(u["user"] for u in doc["users"]) == ["alice", "bob", "carol"]
    assert doc["viewer"]["admin"] is True


def test_status_table(site):
    result = cli(site, "status")
    assert result.exit_code == 0, result.output
    for word in ("alice", "bob", "carol", "checkpointed", "python", "state", "imgs"):
        assert word in result.stdout


def test_stop_then_status_shows_it(site):
    _, hub, _ = site
    result = cli(site, "stop", "alice")
    assert result.exit_code == 0, result.output
    assert "alice: stopped" in result.stdout
    assert hub.record("alice")["state"] == "stopped"
    doc = json.loads(cli(site, "status", "--json").stdout)
    assert next(u for u in doc["users"] if u["user"] == "alice")["state"] == "stopped"


def test_stop_unknown_user_exits_4(site):
    result = cli(site, "stop", "nobody")
    assert result.exit_code == EXIT_NO_USER
    assert "no user 'nobody'" in result.stderr


def test_wrong_token_exits_5(site, tmp_path):
    proxy, _, _ = site
    bad = tmp_path / "bad.token"
    bad.write_text("not-the-token\n")
    result = runner.invoke(
        app, ["status", "--url", f"http://127.0.0.1:{proxy.port}", "--token-file", str(bad)]
    )
    assert result.exit_code == EXIT_AUTH
    assert "refused the admin token" in result.stderr


def test_missing_token_exits_5(tmp_path):
    result = runner.invoke(app, ["status", "--token-file", str(tmp_path / "nope")])
    assert result.exit_code == EXIT_AUTH
    assert "no admin token at" in result.stderr and "--token-file" in result.stderr


def test_no_hub_running_exits_3(tmp_path):
    token = tmp_path / "admin.token"
    token.write_text("x\n")
    port = free_port()  # nothing listens there
    for args in (["status"], ["stop", "alice"]):
        result = runner.invoke(
            app, [*args, "--url", f"http://127.0.0.1:{port}", "--token-file", str(token)]
        )
        assert result.exit_code == EXIT_NO_HUB, result.output
        assert f"no hub answering at http://127.0.0.1:{port}; is `hub start` running?" in (
            result.stderr
        )


def test_something_else_answering_exits_3(tmp_path):
    """A port that answers, but not with the hub's JSON (another service on 7112)."""
    token = tmp_path / "admin.token"
    token.write_text("x\n")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def answer():
            conn, _ = server.accept()
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
            conn.close()

        t = threading.Thread(target=answer)
        t.start()
        result = runner.invoke(
            app, ["status", "--url", f"http://127.0.0.1:{port}", "--token-file", str(token)]
        )
        t.join(5)
    assert result.exit_code == EXIT_NO_HUB
    assert "is it the hub?" in result.stderr


def test_stop_checkpoint_warns_when_the_hub_could_not_checkpoint(site):
    """This hub has no checkpointer (no --checkpoint): the environment is stopped instead."""
    result = cli(site, "stop", "alice", "--checkpoint")
    assert result.exit_code == 0, result.output
    assert "alice: stopped" in result.stdout
    assert "the checkpoint did not succeed" in result.stderr


@pytest.mark.timeout(120)
def test_a_bounded_disk_walk_shows_as_at_least(tmp_path):
    """A workspace of more files than the sampler walks (hubcontrol.du) is reported as a lower
    bound: ``disk_partial`` in the API, "≥" in ``hub status``."""
    import os
    import time

    from hubcontrol import du
    from tests.support.tmpfs import tmpfs

    with tmpfs(tmp_path / "ws" / "alice") as workspace:
        for d in range(du.WALK_MAX_ENTRIES // 1000 + 20):
            os.mkdir(workspace / f"d{d}")
            for i in range(1000):
                os.close(os.open(workspace / f"d{d}" / f"f{i}", os.O_CREAT | os.O_WRONLY))
        with seeded_site(tmp_path) as site:
            _, hub, _ = site
            deadline = time.monotonic() + 60
            while "alice" not in hub.stats.view().stats and time.monotonic() < deadline:
                time.sleep(0.1)
            doc = json.loads(cli(site, "status", "--json").stdout)
            users = {u["user"]: u for u in doc["users"]}
            assert users["alice"]["disk_partial"] is True
            assert users["carol"]["disk_partial"] is False
            table = cli(site, "status").stdout
            assert "≥" in next(line for line in table.splitlines() if "alice" in line)
            assert "≥" not in next(line for line in table.splitlines() if "carol" in line)


# Names with control characters are refused at login (hubcontrol.names); markup is not. The
# record's other fields carry what a name cannot.
HOSTILE_USER = "[bold]mallory[/]"
HOSTILE_USERS = {
    HOSTILE_USER: {"state": "running\x1b]0;owned\x07", "template": "[red]x[/]\nroot\x9b1m\u2028"},
    "alice": {"state": "running", "template": "default"},
    ADMIN: {"state": "stopped", "template": "default"},
}


def test_status_shows_hostile_names_templates_and_states_as_text(tmp_path, monkeypatch):
    from hubcli.output import console

    monkeypatch.setattr(console, "_width", 300)  # every cell on one line
    with seeded_site(tmp_path, HOSTILE_USERS) as site:
        table = cli(site, "status")
        as_json = cli(site, "status", "--json")
    assert table.exit_code == 0, table.output
    out = table.stdout
    assert not any(c in out for c in ("\x1b", "\x07", "\x9b", "\u2028")), repr(out)
    (line,) = [line for line in out.splitlines() if "mallory" in line]
    for shown in ("[bold]mallory[/]", "running\\x1b]0;owned\\x07", "[red]x[/]\\nroot"):
        assert shown in line, shown  # escaped, on the user's own row, markup not applied
    assert as_json.exit_code == 0
    assert not any(c in as_json.stdout for c in ("\x1b", "\x07", "\x9b", "\u2028"))
    users = {u["user"]: u for u in json.loads(as_json.stdout)["users"]}
    assert users[HOSTILE_USER]["template"] == HOSTILE_USERS[HOSTILE_USER]["template"]


def test_checkpoint_reset_turns_checkpointing_back_on_after_three_strikes(tmp_path):
    """`hub checkpoint reset` (and its API, admins only) undo the three-strike rule: the
    environment's next idle stop checkpoints again. No CLI or API could before."""
    from hubcontrol.checkpoint import MAX_FAILURES, after_failure

    with seeded_site(tmp_path, checkpoint=True) as site:
        _, hub, _ = site
        for n in range(MAX_FAILURES):
            hub.checkpointer.store.update("bob", lambda h, n=n: after_failure(h, "dump", n))
        assert hub.checkpointer.health("bob").disabled

        result = cli(site, "checkpoint", "reset", "bob")
        assert result.exit_code == 0, result.output
        assert "bob: checkpointing on (environment checkpointed)" in result.stdout
        health = hub.checkpointer.health("bob")
        assert not health.disabled and health.failures == 0
        users = {u["user"]: u for u in json.loads(cli(site, "status", "--json").stdout)["users"]}
        assert users["bob"]["checkpoint_disabled"] is False

        missing = cli(site, "checkpoint", "reset", "nobody")
        assert missing.exit_code == 4, missing.output


def test_checkpoint_reset_on_a_hub_that_does_not_checkpoint_says_so(site):
    result = cli(site, "checkpoint", "reset", "bob")
    assert result.exit_code == 1
    assert "does not checkpoint" in result.stderr
