"""The services around a Hub are wired from outside its constructor, against ``HubServices``."""

from __future__ import annotations

import anyio
import pytest

from hubcontrol.audit import AuditManager
from hubcontrol.checkpoint import after_failure
from hubcontrol.config import HubConfig, Template
from hubcontrol.hub import Hub
from hubcontrol.idle import IdleCuller
from hubcontrol.policysockets import PolicySockets
from hubcontrol.services import HubServices, Services, wire_no_services
from hubcontrol.stats import StatsSampler


@pytest.fixture
def config(tmp_path):
    return HubConfig(
        routes={"code": 8080},
        templates={"default": Template(name="default", image="img")},
        workspace_dir=tmp_path / "w",
        state_dir=tmp_path / "s",
        supervisor="local",
        idle_timeout=1800.0,
    )


def test_a_hub_wires_the_production_services_by_default_and_implements_their_contract(config):
    hub = Hub(config, checkpointer=None)
    assert isinstance(hub, HubServices)  # every member the services may use is there
    services = hub.services
    assert isinstance(services.audit, AuditManager) and hub.audit is services.audit
    assert isinstance(services.policy_sockets, PolicySockets) and services.policy_sockets.hub is hub
    assert isinstance(services.culler, IdleCuller) and isinstance(services.stats, StatsSampler)
    # each registered itself: the audit streams, the culler and the sampler run in run()
    assert hub._services == [services.audit.run, services.culler.run, services.stats.run]
    assert len(hub._listeners) == 2  # the audit windows and the lifecycle counts
    # dockerd serving the environment's socket itself: no policy sockets
    assert Hub(config, checkpointer=None, env_socket_by_daemon=True).policy_sockets is None


def test_another_wiring_gets_the_hub_and_a_bare_hub_still_reports_status(config):
    wired = []

    def wiring(hub: HubServices) -> Services:
        wired.append(hub)
        return wire_no_services(hub)

    hub = Hub(config, checkpointer=None, services=wiring)
    assert wired == [hub] and hub.services == Services()
    assert (hub.audit, hub.policy_sockets, hub.culler, hub.stats) == (None, None, None, None)
    assert hub._services == [] and hub._listeners == []
    hub.update_record("alice", user="alice")
    [row] = anyio.run(hub.status)
    assert (row.user, row.state, dict(row.stats), row.idle) == ("alice", "stopped", {}, None)


def test_the_sampler_reads_rows_that_never_read_the_sampler(config):
    """The Hub <-> StatsSampler cycle is gone: status_rows() (what the sampler reads) does not
    touch the sampler; only status() (for scripts) adds its numbers."""

    class Unreadable(StatsSampler):
        def view(self):
            raise AssertionError("status_rows read the sampler")

    def wiring(hub: HubServices) -> Services:
        return Services(stats=Unreadable(hub))

    hub = Hub(config, checkpointer=None, services=wiring)
    hub.update_record("alice", user="alice")
    assert [r.user for r in anyio.run(hub.status_rows)] == ["alice"]
    with pytest.raises(AssertionError, match="status_rows read the sampler"):
        anyio.run(hub.status)


def test_checkpoint_health_has_one_store_the_checkpointer_writes_and_the_sampler_reads(config):
    """What the checkpointer records about a user (three failures: checkpointing disabled) is
    what the sampler's view, and so `hub status` and the dashboard, shows: one store, one lock."""
    hub = Hub(config, checkpointer="recreate")
    assert hub.checkpoint_health is hub.checkpointer.store
    hub.update_record("alice", user="alice")
    for _ in range(3):
        hub.checkpointer.store.update("alice", lambda h: after_failure(h, "dump failed", 5.0))
    view = anyio.run(hub.stats.refresh)
    assert view.checkpoints["alice"].disabled and view.checkpoints["alice"].failures == 3
    # without a checkpointer the files are still read, from the same directory
    bare = Hub(config, checkpointer=None)
    assert bare.checkpoint_health.get("alice").disabled
