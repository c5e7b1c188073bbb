"""User records on disk: ``UserRecord`` (typed, to/from JSON) and ``RecordStore`` (one file per
user, atomic, 0600), against files written the way earlier versions wrote them."""

from __future__ import annotations

import json
import logging
import stat

import pytest

from hubcontrol.config import HubConfig, Template
from hubcontrol.hub import Hub
from hubcontrol.names import safe_name
from hubcontrol.records import RecordStore, UserRecord

# A record exactly as the previous version wrote it (a dict, ``json.dumps(rec, indent=2,
# sort_keys=True)``): a per-user environment that was checkpointed after a restore, with the
# ``on_create`` null a new container left, and a key this version does not know.
OLD_RECORD = """{
  "container_id": "4f0c2a3b1d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a",
  "docker_url": "unix:///run/rediacc/hub/32768/docker.sock",
  "from_a_later_version": {"kept": [1, 2]},
  "mode": "persistent",
  "name": "alice",
  "net_id": 32768,
  "on_create": null,
  "per_user_docker": true,
  "restored": {
    "checkpoint": "hub-1700000000",
    "detail": "processes restored with their memory",
    "hook_error": null,
    "seconds": 1.25
  },
  "service_ip": "10.208.0.2",
  "started_at": 1700000000.5,
  "state": "checkpointed",
  "subvolume": false,
  "template": "default",
  "updated_at": 1700000100.25,
  "user": "alice"
}
"""


@pytest.fixture
def hub(tmp_path):
    config = HubConfig(
        routes={"code": 8080},
        templates={"default": Template(name="default", image="img")},
        workspace_dir=tmp_path / "w",
        state_dir=tmp_path / "s",
        supervisor="local",
    )
    return Hub(config, clock=lambda: 1800000000.0, checkpointer=None, env_socket_by_daemon=True)


def test_a_record_written_by_the_previous_version_loads_and_saves_back_compatibly(hub):
    hub.users_dir.mkdir(parents=True)
    (hub.users_dir / "alice.json").write_text(OLD_RECORD)
    old = json.loads(OLD_RECORD)

    rec = hub.user_record("alice")
    assert (rec.name, rec.user, rec.state, rec.net_id, rec.per_user_docker) == (
        "alice", "alice", "checkpointed", 32768, True,
    )  # fmt: skip
    assert rec.restored["seconds"] == 1.25 and rec.started_at == 1700000000.5
    assert rec.unknown == {"from_a_later_version": {"kept": [1, 2]}}
    assert hub.daemon_spec("alice").net_id == 32768
    assert hub.docker_url("alice") == old["docker_url"]
    # the JSON view (the status API's) is the file's, without the null it held
    assert hub.record("alice") == {k: v for k, v in old.items() if v is not None}

    hub.update_record("alice", state="stopped")
    written = json.loads((hub.users_dir / "alice.json").read_text())
    want = {k: v for k, v in old.items() if v is not None}
    assert written == {**want, "state": "stopped", "updated_at": 1800000000.0}
    # and the previous version's way of reading it still works on what this one wrote
    assert written.get("per_user_docker") is True and "per_user_docker" in written


def test_records_are_written_atomically_and_only_for_root(tmp_path):
    store = RecordStore(tmp_path / "users", clock=lambda: 5.0)
    rec = UserRecord(safe_name("Alice"), user="Alice", net_id=32768)
    store.save(rec)
    path = store.path(rec.name)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    assert json.loads(path.read_text()) == {
        "name": rec.name, "user": "Alice", "state": "stopped", "net_id": 32768, "updated_at": 5.0,
    }  # fmt: skip
    fresh = RecordStore(tmp_path / "users")
    assert fresh.get(rec.name) == rec and [r.name for r in fresh.all()] == [rec.name]
    fresh.delete(rec.name)
    assert not path.exists() and fresh.get(rec.name) is None


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{not json", "Expecting property name"),
        ('["alice"]', "JSON object, not list"),
        ('{"user": "alice"}', "'name' is not a user's name"),
        ('{"name": "bob", "user": "bob"}', "it names 'bob', not 'alice'"),
        ('{"name": "alice", "net_id": "32768"}', "'net_id' has the wrong type"),
        ('{"name": "alice", "net_id": true}', "'net_id' has the wrong type"),
        ('{"name": "alice", "per_user_docker": "yes"}', "'per_user_docker' has the wrong type"),
        ('{"name": "alice", "restored": "hub-1"}', "'restored' has the wrong type"),
    ],
)
def test_an_unreadable_record_is_no_record_and_says_why(hub, caplog, text, why):
    """As before: the user is treated as new (and the other users are unaffected); the log now
    names the file and what is wrong with it."""
    hub.users_dir.mkdir(parents=True)
    (hub.users_dir / "alice.json").write_text(text)
    (hub.users_dir / "carol.json").write_text('{"name": "carol", "user": "carol"}')
    with caplog.at_level(logging.WARNING, logger="hubcontrol.records"):
        assert hub.record("alice") is None and hub.user_record("alice") is None
    assert why in caplog.text and "alice.json" in caplog.text
    assert [r.name for r in hub.records.all()] == ["carol"]
    # a start writes a fresh record over it
    hub.update_record("alice", user="alice")
    assert hub.record("alice") == {"name": "alice", "user": "alice", "state": "stopped",
                                   "updated_at": 1800000000.0}  # fmt: skip


@pytest.mark.parametrize(
    "rec",
    [
        UserRecord("alice"),
        UserRecord(
            "alice",
            user="Alice",
            state="running",
            template="py",
            mode="ephemeral",
            per_user_docker=False,
            net_id=32832,
            service_ip="10.208.1.2",
            docker_url="unix:///var/run/docker.sock",
            container_id="c" * 64,
            subvolume=True,
            error="e",
            checkpoint_error="c",
            restore_error="r",
            restored={"checkpoint": "x", "seconds": 1},
            on_create={"exit_code": 0},
            started_at=1,
            updated_at=2.5,
            unknown={"x": [1]},
        ),  # fmt: skip
    ],
)
def test_to_json_and_from_json_round_trip(rec):
    assert UserRecord.from_json(json.loads(json.dumps(rec.to_json()))) == rec


def test_updates_of_fields_this_version_does_not_know_are_kept(hub):
    hub.update_record("Alice", user="Alice", extra={"a": 1}, net_id=32768)
    rec = hub.user_record("Alice")
    assert rec.unknown == {"extra": {"a": 1}} and rec.net_id == 32768
    assert hub.record("Alice")["extra"] == {"a": 1}
