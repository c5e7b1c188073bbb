"""The pure parts of the audit trail: which docker events become records, and how."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from hubcontrol.audit import (
    AUDITED,
    AuditManager,
    HubActions,
    gap_record,
    iso_ts,
    origin_of,
    split_action,
    to_record,
)
from hubcontrol.auditlog import (
    RESUME_OVERLAP_NS,
    Cursor,
    event_key,
    file_stem,
    format_record,
    parse_since,
)
from hubcontrol.errors import UsernameError
from hubcontrol.records import UserRecord

NANO = 1_776_318_792_123_456_789  # 2026-04-16T05:53:12.123456789Z, the seed's example time
CID = "abc123" + "0" * 58


def event(etype="container", action="start", actor_id=CID, attrs=None, nano=NANO):
    return {
        "Type": etype,
        "Action": action,
        "Actor": {"ID": actor_id, "Attributes": attrs or {}},
        "scope": "local",
        "time": nano // 1_000_000_000,
        "timeNano": nano,
    }


def test_the_seed_example_record_byte_for_byte():
    ev = event(attrs={"image": "hello-world:latest", "name": "happy_pike", "team": "x"})
    record = to_record(ev, user="alice", net_id=32768)
    assert format_record(record) == (
        b'{"ts":"2026-04-16T05:53:12Z","user":"alice","net_id":32768,"type":"container",'
        b'"action":"start","resource":"' + CID.encode() + b'","attrs":{"image":'
        b'"hello-world:latest","name":"happy_pike"}}\n'
    )


@pytest.mark.parametrize(
    ("etype", "action"),
    [(t, a) for t, actions in sorted(AUDITED.items()) for a in sorted(actions)],
)
def test_every_audited_action_becomes_a_record(etype, action):
    record = to_record(event(etype, action), user="u", net_id=1)
    assert record is not None
    assert (record["type"], record["action"]) == (etype, action)


@pytest.mark.parametrize(
    ("etype", "action"),
    [
        ("container", "attach"),
        ("container", "detach"),
        ("container", "resize"),
        ("container", "top"),
        ("container", "exec_create: sh -c ls"),
        ("container", "exec_detach"),
        ("container", "health_status: healthy"),
        ("container", "archive-path"),
        ("container", "extract-to-dir"),
        ("network", "connect"),
        ("network", "disconnect"),
        ("volume", "mount"),
        ("volume", "unmount"),
        ("daemon", "reload"),
        ("plugin", "enable"),
        ("image", "frobnicate"),
        (None, "start"),
        ("container", ""),
    ],
)
def test_noise_and_unknown_events_are_dropped(etype, action):
    assert to_record(event(etype, action), user="u", net_id=1) is None


@pytest.mark.parametrize(
    ("action", "attrs", "want_action", "want_attrs"),
    [
        (
            "die",
            {"image": "i", "name": "n", "exitCode": "137", "lbl": "x"},
            "die",
            {"image": "i", "name": "n", "exitCode": "137"},
        ),
        ("kill", {"name": "n", "image": "i", "signal": "9"}, "kill", {"image": "i", "name": "n", "signal": "9"}),
        (
            "exec_start: sh -c 'rm -rf /x'",
            {"image": "i", "name": "n", "execID": "e1"},
            "exec_start",
            {"image": "i", "name": "n", "execID": "e1", "command": "sh -c 'rm -rf /x'"},
        ),
        ("exec_die", {"execID": "e1", "exitCode": "2"}, "exec_die", {"exitCode": "2", "execID": "e1"}),
        ("rename", {"name": "new", "oldName": "/old"}, "rename", {"name": "new", "oldName": "/old"}),
        ("create", {}, "create", {}),
    ],
)  # fmt: skip
def test_attrs_keep_image_and_name_first_plus_useful_extras(action, attrs, want_action, want_attrs):
    record = to_record(event(action=action, attrs=attrs), user="u", net_id=1)
    assert record["action"] == want_action
    assert record["attrs"] == want_attrs
    assert list(record["attrs"]) == list(want_attrs)  # order: image, name, then extras


@pytest.mark.parametrize(
    ("etype", "action", "actor", "attrs", "resource", "want_attrs"),
    [
        ("image", "pull", "busybox:latest", {"name": "busybox"}, "busybox:latest", {"name": "busybox"}),
        ("image", "tag", "sha256:ab", {"name": "me/img:1"}, "sha256:ab", {"name": "me/img:1"}),
        ("network", "create", "n1", {"name": "web", "type": "bridge"}, "n1", {"name": "web", "type": "bridge"}),
        ("volume", "create", "data", {"driver": "local"}, "data", {"driver": "local"}),
    ],
)  # fmt: skip
def test_image_network_and_volume_records(etype, action, actor, attrs, resource, want_attrs):
    record = to_record(event(etype, action, actor, attrs), user="u", net_id=7)
    assert record["resource"] == resource
    assert record["attrs"] == want_attrs


HUB_EXEC = "e" * 64  # an exec ID the hub created (a hook)
USER_EXEC = "f" * 64
ENV = {"image": "i", "name": "rediacc-hub-env", "rediacc.hub.role": "environment"}


def hub_actions() -> HubActions:
    actions = HubActions()
    actions.exec_created(HUB_EXEC)
    actions.container_created(CID)  # the environment
    return actions


@pytest.mark.parametrize(
    ("etype", "action", "actor", "attrs", "hub_acting", "origin"),
    [
        # execs: by exec ID alone, whatever the container, its labels or the time
        ("container", "exec_start: sh -c hook", CID, {**ENV, "execID": HUB_EXEC}, False, "hub"),
        ("container", "exec_die", CID, {**ENV, "execID": HUB_EXEC, "exitCode": "0"}, False, "hub"),
        ("container", "exec_start: ls", CID, {**ENV, "execID": USER_EXEC}, False, None),
        ("container", "exec_die", CID, {**ENV, "execID": USER_EXEC}, False, None),
        ("container", "exec_start: ls", CID, {**ENV, "execID": USER_EXEC}, True, None),
        ("container", "exec_start: ls", "c" * 64, {"execID": USER_EXEC}, False, None),
        ("container", "exec_start: ls", CID, {**ENV}, False, None),  # no ID: not the hub's
        # the environment's lifecycle: the hub's; what a user may do to it: theirs
        ("container", "create", CID, ENV, False, "hub"),
        ("container", "start", CID, ENV, False, "hub"),
        ("container", "checkpoint", CID, ENV, False, "hub"),
        ("container", "die", CID, {**ENV, "exitCode": "137"}, False, "hub"),
        ("container", "commit", CID, ENV, False, None),
        ("container", "export", CID, ENV, True, None),
        # a label proves nothing: anyone can build an image with it
        ("container", "create", "c" * 64, ENV, False, None),
        ("container", "start", "c" * 64, ENV, False, None),
        ("container", "start", "c" * 64, {"image": "i", "name": "job"}, False, None),
        # while the hub works and the user has no environment
        ("container", "stop", "c" * 64, {"image": "i", "name": "job"}, True, "hub"),
        ("image", "load", "img:1", {}, True, "hub"),
        ("image", "pull", "img:1", {}, False, None),
        ("network", "create", "n" * 64, {"name": "env", "type": "bridge"}, True, "hub"),
    ],
)
def test_who_did_it(etype, action, actor, attrs, hub_acting, origin):
    ev = event(etype, action, actor, attrs)
    assert origin_of(ev, hub_acting=hub_acting, hub_actions=hub_actions()) == origin
    record = to_record(ev, user="u", net_id=1, hub_acting=hub_acting, hub_actions=hub_actions())
    assert record is not None
    assert record["attrs"].get("origin") == origin
    assert "rediacc.hub.role" not in record["attrs"]  # labels are not copied


def test_the_hubs_create_is_known_by_name_before_its_id():
    actions = HubActions()
    ev = event(action="create", actor_id=CID, attrs={"name": "rediacc-hub-env-alice"})
    assert origin_of(ev, hub_actions=actions) is None
    with actions.creating("rediacc-hub-env-alice"):
        assert origin_of(ev, hub_actions=actions) == "hub"
        # only its create: a start of a container by that name needs the ID the hub recorded
        assert origin_of(event(action="start", attrs={"name": "rediacc-hub-env-alice"}),
                         hub_actions=actions) is None  # fmt: skip
        actions.container_created(CID)
    assert origin_of(ev, hub_actions=actions) == "hub"


def test_hub_actions_keep_the_newest_ids():
    actions = HubActions(keep=3)
    for i in range(5):
        actions.exec_created(str(i))
    assert [actions.is_exec(str(i)) for i in range(5)] == [False, False, True, True, True]


def test_time_falls_back_to_seconds_without_time_nano():
    ev = event()
    del ev["timeNano"]
    assert to_record(ev, user="u", net_id=1)["ts"] == "2026-04-16T05:53:12Z"


@pytest.mark.parametrize(
    ("action", "want"),
    [
        ("start", ("start", None)),
        ("exec_start: ls -l /", ("exec_start", "ls -l /")),
        ("exec_create: a: b", ("exec_create", "a: b")),
        ("health_status: healthy", ("health_status", "healthy")),
    ],
)
def test_split_action(action, want):
    assert split_action(action) == want


def test_iso_ts_truncates_to_whole_seconds_in_utc():
    assert iso_ts(NANO) == "2026-04-16T05:53:12Z"
    assert iso_ts(0) == "1970-01-01T00:00:00Z"


def test_gap_record_has_the_record_shape():
    r = gap_record(user="u", net_id=3, after_nano=NANO, before_nano=NANO + 60 * 10**9)
    assert list(r) == ["ts", "user", "net_id", "type", "action", "resource", "attrs"]
    assert (r["type"], r["action"]) == ("audit", "gap")
    assert r["attrs"] == {"after": "2026-04-16T05:53:12Z", "before": "2026-04-16T05:54:12Z"}


def test_event_identity_uses_type_action_actor_and_nanoseconds():
    a = event()
    assert event_key(a) == event_key(dict(a))
    assert event_key(a) != event_key(event(nano=NANO + 1))
    assert event_key(a) != event_key(event(action="stop"))
    assert event_key(a) != event_key(event(actor_id="other"))
    assert event_key(a) != event_key(event(etype="image"))


# --- the cursor ---------------------------------------------------------------------------------


def test_a_new_cursor_asks_for_the_daemons_whole_buffer():
    c = Cursor()
    assert c.since() == "1"
    assert not c.seen("k", 5)


def test_cursor_resumes_a_little_before_the_newest_event():
    c = Cursor()
    c.advance("k1", NANO)
    start = NANO - RESUME_OVERLAP_NS
    assert c.since() == f"{start // 10**9}.{start % 10**9:09d}"


def test_cursor_drops_seen_events_by_identity_only():
    c = Cursor()
    c.advance("a", NANO)
    c.advance("b", NANO - 1_000)  # arrived after a, stamped before it
    assert c.seen("a", NANO) and c.seen("b", NANO - 1_000)
    assert not c.seen("c", NANO - 1_000)  # same time, other event: new
    assert not c.seen("d", NANO + 1)
    assert not c.seen("clock-set-back", NANO - RESUME_OVERLAP_NS - 1)  # new, whatever its time


def test_cursor_forgets_keys_outside_its_window():
    c = Cursor()
    c.advance("a", NANO)
    c.advance("b", NANO + RESUME_OVERLAP_NS + 1)
    assert set(c.recent) == {"b"}
    assert c.nano == NANO + RESUME_OVERLAP_NS + 1


def test_cursor_round_trips_and_survives_damage(tmp_path):
    path = tmp_path / "c.json"
    c = Cursor()
    c.advance("a", NANO)
    c.advance("b", NANO + 5)
    c.save(path)
    assert Cursor.load(path) == c
    path.write_text("{not json")
    assert Cursor.load(path) == Cursor()
    assert Cursor.load(tmp_path / "missing.json") == Cursor()


# --- names and --since --------------------------------------------------------------------------


@pytest.mark.parametrize("user", ["alice", "a-1", "bob2"])
def test_canonical_user_names_are_their_own_file_names(user):
    assert file_stem(user) == user


@pytest.mark.parametrize("user", ["../etc/passwd", "Alice", "a/b", "x.log", ".hidden"])
def test_unsafe_user_names_never_become_paths(user):
    stem = file_stem(user)
    assert "/" not in stem and "." not in stem and stem != user


@pytest.mark.parametrize("user", ["", "..", "/"])
def test_user_names_without_a_safe_form_are_refused(user):
    with pytest.raises(UsernameError):
        file_stem(user)


NOW = datetime(2026, 4, 16, 6, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("1h", NOW - timedelta(hours=1)),
        ("30m", NOW - timedelta(minutes=30)),
        ("90s", NOW - timedelta(seconds=90)),
        ("2d", NOW - timedelta(days=2)),
        ("1w", NOW - timedelta(weeks=1)),
        ("1h30m", NOW - timedelta(minutes=90)),
        ("2026-04-16T05:53:12Z", datetime(2026, 4, 16, 5, 53, 12, tzinfo=UTC)),
        ("2026-04-16T05:53:12", datetime(2026, 4, 16, 5, 53, 12, tzinfo=UTC)),
        ("2026-04-16", datetime(2026, 4, 16, tzinfo=UTC)),
        ("2026-04-16T07:53:12+02:00", datetime(2026, 4, 16, 5, 53, 12, tzinfo=UTC)),
    ],
)
def test_parse_since(text, want):
    assert parse_since(text, NOW) == want


@pytest.mark.parametrize("text", ["yesterday", "1y", "", "-1h", "12"])
def test_parse_since_names_the_accepted_forms(text):
    with pytest.raises(ValueError, match="30m, 1h"):
        parse_since(text, NOW)


# --- following a Hub's lifecycle (the listener's decisions; the real Hub is in test_audit_hub) ---


class _RecordingHub:
    """Just the two registration points and docker_url that attach() uses."""

    def __init__(self):
        self.listeners, self.services = [], []

    def add_listener(self, fn):
        self.listeners.append(fn)

    def add_service(self, fn):
        self.services.append(fn)

    def docker_url(self, user):
        return f"unix:///run/rediacc/hub/{user}/docker.sock"


def test_attach_queues_arm_on_daemon_start_and_marks_until_the_environment_runs(tmp_path):
    hub = _RecordingHub()
    audit = AuditManager(audit_dir=tmp_path)
    audit.attach(hub)
    assert hub.services == [audit.run]
    emit = hub.listeners[0]
    rec = UserRecord("alice", user="alice", net_id=32768, per_user_docker=True)
    emit("daemon-started", rec)
    assert [(op.__name__, args) for op, args in audit._pending] == [
        ("arm", ("alice", 32768, "unix:///run/rediacc/hub/alice/docker.sock"))
    ]
    windows = audit._windows["alice"]
    during = time.time_ns()
    assert windows.covers(during)  # image transfer, env network: the hub's
    emit("environment-running", rec)
    after = time.time_ns() + 10_000_000
    assert windows.covers(during) and not windows.covers(after)
    emit("daemon-stopping", rec)
    assert windows.covers(time.time_ns() + 10_000_000)  # the shutdown's events: the hub's
    emit("environment-destroyed", rec)
    assert [op.__name__ for op, _ in audit._pending] == ["arm", "disarm"]


def test_attach_ignores_environments_on_a_shared_daemon(tmp_path):
    hub = _RecordingHub()
    audit = AuditManager(audit_dir=tmp_path)
    audit.attach(hub)
    hub.listeners[0]("daemon-started", UserRecord("bob", user="bob", net_id=32832))
    assert not audit._pending and "bob" not in audit._windows


def test_attach_records_the_environment_and_opens_no_window_when_adopting_a_running_one(tmp_path):
    from hubcontrol.audit import HUB_ACTIONS

    hub = _RecordingHub()
    audit = AuditManager(audit_dir=tmp_path)
    audit.attach(hub)
    env_id = "d" * 64
    rec = UserRecord("alice", user="alice", net_id=32768, per_user_docker=True,
                     state="running", container_id=env_id)  # fmt: skip
    hub.listeners[0]("daemon-started", rec)  # a hub restart adopting a running environment
    assert HUB_ACTIONS.is_container(env_id)
    # the user is working in it right now: nothing they do is the hub's
    assert not audit._windows["alice"].covers(time.time_ns())


def test_the_environments_start_ends_the_hubs_window():
    from hubcontrol.audit import _Windows

    windows = _Windows([])
    windows.open()
    start = time.time_ns()
    windows.close_at(start)
    assert windows.covers(start - 1) and not windows.covers(start + 1)
