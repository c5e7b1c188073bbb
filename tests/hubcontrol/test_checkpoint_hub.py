"""Checkpoints outlive the hub: a user checkpointed by one hub process is restored by the next.

Real per-user dockerd (LocalSupervisor), real CRIU. The environment keeps a counter in shell
memory and writes it to the workspace; after the hub restarts in between, the restored counter
goes on from where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path

import pytest

from hubcontrol.embed import embedded
from tests.support.hubcore import COMMAND, host_test_image, make_config, unique_user

pytestmark = [pytest.mark.docker, pytest.mark.criu, pytest.mark.timeout(240)]

COUNTER = "(i=0; while :; do i=$((i+1)); echo $i > /workspace/counter; sleep 0.3; done) & "


@pytest.fixture(scope="module")
def image():
    with host_test_image() as ref:
        yield ref


def read_counter(path: Path) -> int:
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int(path.read_text().strip())
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} has no counter")
        time.sleep(0.1)


def assert_breakdown(record: dict, must: list[str]) -> dict[str, dict]:
    """The steps of a start's ``last_start``, checked: every ``must`` step in that order, the
    steps adding up to the total, the daemon step's dockerd start measured as a part."""
    steps = {s["step"]: s for s in record["steps"]}
    names = [s["step"] for s in record["steps"]]
    assert [n for n in names if n in must] == must, names
    assert sum(s["seconds"] for s in record["steps"]) == pytest.approx(record["seconds"], abs=0.01)
    assert steps["daemon"]["parts"]["dockerd"] > 0
    return steps


def test_a_restarted_hub_restores_what_the_previous_one_checkpointed(tmp_path, image):
    user = unique_user("restart")
    # root: this host's root lacks CAP_SYS_RESOURCE, so CRIU cannot dump other users' processes
    config = dataclasses.replace(
        make_config(tmp_path, image, user="root", command=COUNTER + COMMAND), checkpoint=True
    )
    try:
        with embedded(config, ready_timeout=30) as hub:
            env = hub.ensure_running(user)
            first = hub.hub.record(user)["last_start"]
            assert first["outcome"] == "started"
            assert_breakdown(first, ["storage", "daemon", "network", "image", "container", "ready"])
            counter = tmp_path / "workspaces" / env.name / "counter"
            time.sleep(1)
            hub.stop(user)  # by configuration: checkpoint
            assert hub.hub.record(user)["state"] == "checkpointed"
            frozen = read_counter(counter)
        # the hub process is gone; nothing of the environment runs
        time.sleep(1)
        assert read_counter(counter) == frozen
        with embedded(config, ready_timeout=30) as hub:
            row = next(r for r in hub.status() if r.user == user)
            assert row.state == "checkpointed" and row.checkpoint["checkpoint"]
            again = hub.ensure_running(user)
            assert again.container_id == env.container_id
            assert "restored with their memory" in hub.hub.record(user)["restored"]["detail"]
            # where the resume's time went, for bench/resume.py and the operator's log
            resumed = hub.hub.record(user)["last_start"]
            assert resumed["outcome"] == "restored"
            restore = assert_breakdown(resumed, ["daemon", "restore", "ready"])["restore"]
            assert {"criu", "verify"} <= set(restore["parts"])
            assert restore["parts"]["criu"] > 0
            time.sleep(1)
            now = read_counter(counter)
            assert frozen < now < frozen + 20  # continued, not restarted from 1
    finally:
        with embedded(config) as hub, contextlib.suppress(Exception):
            hub.destroy(user, remove_data=True)
