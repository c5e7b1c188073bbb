"""``hub gc`` as an operator runs it: rich table, --dry-run, --json and the documented exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hubcli.app import app

DAY = 86400.0
# Far above any network ID a hub on this machine hands out, so no live daemon is mistaken for ours.
NET_ID = 32768 + 64 * 4000


def make_data_root(ws: Path, user: str, net_id: int, days: float) -> Path:
    root = ws / f"{user}-docker"
    (root / ".rediacc/docker/data").mkdir(parents=True)
    (root / ".rediacc/docker/data/layer").write_bytes(b"x" * 50_000)
    (root / ".networkid").write_text(f"{net_id}\n")
    (ws / user).mkdir()
    stamp = time.time() - days * DAY
    for p in (root / ".networkid", root / ".rediacc/docker/data"):
        os.utime(p, (stamp, stamp))
    return root


def gc(*args: str):
    return CliRunner().invoke(app, ["gc", *args], catch_exceptions=False)


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    ws = tmp_path / "workspaces"
    ws.mkdir()
    return ws


def test_dry_run_table_then_removal(ws: Path, tmp_path: Path):
    old = make_data_root(ws, "olga", NET_ID, 45)
    young = make_data_root(ws, "yuri", NET_ID + 64, 2)
    registry = ["--netid-registry", str(tmp_path / "netids")]
    dry = gc(str(ws), "--dry-run", *registry)
    assert dry.exit_code == 0, dry.output
    assert "olga-docker" in dry.output and "remove" in dry.output and "45d" in dry.output
    assert "yuri-docker" in dry.output and "keep" in dry.output
    assert "1 candidate," in dry.output and "dry run" in dry.output
    assert old.exists()

    done = gc(str(ws), *registry)
    assert done.exit_code == 0, done.output
    assert "removed 1 of 1" in done.output
    assert not old.exists() and young.exists() and (ws / "olga").is_dir()


def test_json(ws: Path, tmp_path: Path):
    make_data_root(ws, "olga", NET_ID, 10)
    result = gc(
        str(ws), "--max-age", "1w", "--dry-run", "--json", "--netid-registry", str(tmp_path / "n")
    )
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["schema_version"] == 1 and data["dry_run"] is True
    assert data["max_age_seconds"] == 7 * 86400 and data["candidates"] == 1
    (entry,) = data["entries"]
    assert entry["user"] == "olga" and entry["net_id"] == NET_ID and entry["action"] == "remove"
    assert entry["size_bytes"] >= 50_000 and entry["outcome"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-age", "30"], "has no unit"),
        (["--max-age", "soon"], "not a duration"),
    ],
)
def test_usage_errors_exit_2(ws: Path, args, message):
    result = CliRunner().invoke(app, ["gc", str(ws), *args])
    assert result.exit_code == 2
    assert message in result.output


def test_missing_workspace_dir_exits_2(tmp_path: Path):
    result = CliRunner().invoke(app, ["gc", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "does not exist" in result.output
    as_json = CliRunner().invoke(app, ["gc", str(tmp_path / "nope"), "--json"])
    assert as_json.exit_code == 2
    assert "does not exist" in json.loads(as_json.stdout)["errors"][0]


@pytest.mark.docker  # needs root for chattr +i
def test_failed_removal_exits_1_and_others_go_ahead(ws: Path, tmp_path: Path):
    stuck = make_data_root(ws, "ivan", NET_ID, 60)
    gone = make_data_root(ws, "olga", NET_ID + 64, 60)
    pinned = stuck / ".rediacc/docker/data/layer"
    subprocess.run(["chattr", "+i", str(pinned)], check=True)
    try:
        result = gc(str(ws), "--netid-registry", str(tmp_path / "netids"))
        assert result.exit_code == 1, result.output
        assert "failed" in result.output and "removed 1 of 2" in result.output
        assert not gone.exists() and stuck.exists()
    finally:
        subprocess.run(["chattr", "-i", str(pinned)], check=False)
