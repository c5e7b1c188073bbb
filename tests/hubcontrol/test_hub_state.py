"""The Hub's in-memory state without daemons: route table, activity stamps, progress, records."""

from __future__ import annotations

import threading

import pytest

from hubcontrol.config import HubConfig, Template
from hubcontrol.hub import Hub, Progress, Route, RouteTable
from hubcontrol.names import safe_name


def test_route_table_is_immutable_and_replaced_by_reference():
    empty = RouteTable()
    route = Route("Alice", safe_name("Alice"), "running", "10.208.0.2", {"code": 8080})
    table = empty.replace(route.name, route)
    assert table is not empty and len(empty) == 0
    assert table.get("Alice") is route  # the raw username
    assert table.by_name(safe_name("Alice")) is route
    assert "Alice" in table and list(table) == [route] and len(table) == 1
    assert table.get("alice") is None  # a different user
    # someone whose username is Alice's hashed safe name is a different user, not Alice
    assert table.get(safe_name("Alice")) is None
    assert table.get("") is None  # unmappable names are simply absent
    assert route.target("code") == ("10.208.0.2", 8080) and route.target("nope") is None
    with pytest.raises(TypeError):
        route.ports["x"] = 1  # type: ignore[index]
    assert table.replace(route.name, None).get("Alice") is None and table.get("Alice") is route


@pytest.fixture
def hub(tmp_path):
    tpl = Template(name="default", image="img")
    config = HubConfig(
        routes={"code": 8080}, templates={"default": tpl},
        workspace_dir=tmp_path / "w", state_dir=tmp_path / "s", supervisor="local",
    )  # fmt: skip
    # No daemons here, and no run(): nothing that would start per-user sockets or streams.
    return Hub(config, clock=lambda: 1234.5, checkpointer=None, env_socket_by_daemon=True)


def test_touch_stamps_time_and_kind_from_any_thread(hub):
    threads = [threading.Thread(target=hub.touch, args=(f"u{i}", "ws-in")) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert hub.activity("u7") == (1234.5, "ws-in")
    hub.touch("u7")
    assert hub.activity("u7") == (1234.5, "http")
    assert hub.activity("nobody") is None


def test_progress_of_unknown_and_unmappable_users(hub):
    assert hub.progress("ghost") == Progress()
    bad = hub.progress("")
    assert bad.state == "failed" and bad.error


def test_records_persist_atomically_and_reload(hub, tmp_path):
    rec = hub.update_record("Alice", user="Alice", net_id=32768, state="stopped", extra={"a": 1})
    assert rec["name"] == safe_name("Alice")
    path = tmp_path / "s" / "users" / f"{safe_name('Alice')}.json"
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    fresh = Hub(hub.config, checkpointer=None, env_socket_by_daemon=True)
    assert fresh.record("Alice")["extra"] == {"a": 1}
    assert fresh.daemon_spec(safe_name("Alice")).net_id == 32768  # by safe name
    assert fresh.daemon_spec("Alice") is None  # not a safe name
    assert fresh.daemon_spec("../etc") is None
    assert fresh.record("nobody") is None and fresh.daemon_spec("nobody") is None
    # a user whose username is Alice's safe name is someone else
    assert fresh.record(safe_name("Alice")) is None


def test_listeners_get_copies_of_records_and_cannot_break_the_hub(hub):
    seen = []

    def bad(event, rec):
        raise RuntimeError("listener bug")

    hub.add_listener(bad)
    hub.add_listener(lambda event, rec: seen.append((event, rec)))
    hub.update_record("x", user="x", restored={"checkpoint": "hub-1"})
    hub._emit("environment-running", hub.records.get(safe_name("x")))
    [(event, rec)] = seen
    assert event == "environment-running" and rec.user == "x"
    rec.state = "failed"
    rec.restored["checkpoint"] = "forged"
    assert hub.record("x")["state"] == "stopped"  # the hub's record is untouched
    assert hub.record("x")["restored"] == {"checkpoint": "hub-1"}
