"""``hub start``: bad command lines and configurations exit 2 with every problem named, before
anything starts (the running hub itself is tested in tests/e2e and tests/hubproxy)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from hubcli.app import app

LABELS = """version: 1
service: hub
labels:
  rediacc.hub.route.term: "{port}"
  rediacc.hub.image: rediacc-hub/env:latest
"""


@pytest.fixture
def runner():
    return CliRunner()


def test_unknown_flag_is_exit_2(runner):
    result = runner.invoke(app, ["start", "--prot=7112"])
    assert result.exit_code == 2
    assert "unknown flag --prot" in result.output and "--port" in result.output


def test_missing_labels_file_is_exit_2(runner, tmp_path):
    result = runner.invoke(app, ["start", f"--labels={tmp_path}/nope.yaml"])
    assert result.exit_code == 2 and "nope.yaml" in result.output


def test_bad_label_and_missing_oauth_are_all_named(runner, tmp_path, monkeypatch):
    for name in ("HUB_OAUTH_CLIENT_ID", "HUB_OAUTH_CLIENT_SECRET", "HUB_DOMAIN"):
        monkeypatch.delenv(name, raising=False)
    labels = tmp_path / "hub.labels.yaml"
    labels.write_text(LABELS.format(port="99999"))
    result = runner.invoke(app, ["start", "--labels", str(labels), "--port=80x"])
    assert result.exit_code == 2
    for needle in ("rediacc.hub.route.term", "--port", "HUB_OAUTH_CLIENT_ID"):
        assert needle in result.output, result.output
