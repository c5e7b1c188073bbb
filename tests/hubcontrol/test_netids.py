"""Network-ID allocation with a real registry directory and real file locks (no mocks)."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from hubcontrol.errors import NetworkError
from hubcontrol.netids import (
    MARKER,
    NetIdRegistry,
    index_of,
    net_id_for_index,
    read_marker,
    write_marker,
)


def IDLE(net_id: int) -> bool:  # a constant-like stand-in
    """These registries live in temp dirs: whether this host's daemons use an ID is irrelevant."""
    return False


@pytest.fixture
def registry(tmp_path):
    return NetIdRegistry(tmp_path / "registry", max_users=64, in_use=IDLE)


@pytest.mark.parametrize(("index", "net_id"), [(0, 32768), (1, 32832), (4095, 294848)])
def test_ids_are_32768_plus_64k(index, net_id):
    assert net_id_for_index(index) == net_id
    assert index_of(net_id) == index


@pytest.mark.parametrize("bad", [0, 32767, 32769, 32768 - 64, 40001])
def test_non_user_ids_are_refused(bad):
    with pytest.raises(ValueError):
        index_of(bad)


def test_first_user_gets_the_first_id_and_a_marker(registry, tmp_path):
    root = tmp_path / "alice-docker"
    assert registry.allocate(root) == 32768
    assert (root / MARKER).read_text() == "32768\n"
    assert registry.owner(32768) == root


def test_returning_user_gets_the_same_id(registry, tmp_path):
    a, b = tmp_path / "a-docker", tmp_path / "b-docker"
    first = registry.allocate(a)
    registry.allocate(b)
    assert registry.allocate(a) == first
    # a fresh registry (another host-wide state, e.g. after a reboot wiped /run) re-claims it
    other = NetIdRegistry(tmp_path / "registry2", in_use=IDLE)
    assert other.allocate(b) == read_marker(b)


def test_the_hubs_own_network_id_is_never_handed_out(registry, tmp_path):
    assert registry.allocate(tmp_path / "a", reserved=frozenset({32768})) == 32832
    # even a marker pointing at it is not honoured
    write_marker(tmp_path / "a", 32768)
    assert registry.allocate(tmp_path / "a", reserved=frozenset({32768})) != 32768


def test_a_copied_data_root_does_not_share_the_id(registry, tmp_path):
    a, copy = tmp_path / "a", tmp_path / "copy"
    net_id = registry.allocate(a)
    copy.mkdir()
    write_marker(copy, net_id)
    assert registry.allocate(copy) != net_id
    assert read_marker(a) == net_id


def test_stale_claims_are_taken_over(registry, tmp_path):
    gone = tmp_path / "gone"
    net_id = registry.allocate(gone)
    (gone / MARKER).unlink()
    gone.rmdir()
    assert registry.allocate(tmp_path / "new") == net_id


def test_release_frees_the_id(registry, tmp_path):
    net_id = registry.allocate(tmp_path / "a")
    registry.release(net_id, tmp_path / "b")  # not the owner: no effect
    assert registry.owner(net_id) is not None
    registry.release(net_id, tmp_path / "a")
    assert registry.owner(net_id) is None


def test_concurrent_allocations_never_share_an_id(tmp_path):
    # Separate registry objects, as separate hubs on one host would have; real flock/O_EXCL.
    roots = [tmp_path / f"u{i}-docker" for i in range(40)]
    barrier = threading.Barrier(8)

    def allocate(root):
        if roots.index(root) < 8:
            barrier.wait()
        return NetIdRegistry(tmp_path / "registry", in_use=IDLE).allocate(root)

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(allocate, roots))
    assert len(set(ids)) == len(ids)
    assert all(read_marker(r) == i for r, i in zip(roots, ids, strict=True))


def test_a_full_registry_is_a_clear_error(tmp_path):
    registry = NetIdRegistry(tmp_path / "r", max_users=2, in_use=IDLE)
    registry.allocate(tmp_path / "a")
    registry.allocate(tmp_path / "b")
    with pytest.raises(NetworkError) as info:
        registry.allocate(tmp_path / "c")
    assert "claimed" in info.value.log_message


def test_garbage_markers_are_ignored(registry, tmp_path):
    root = tmp_path / "a"
    root.mkdir()
    (root / MARKER).write_text("not a number")
    assert read_marker(root) is None
    assert registry.allocate(root) == 32768


def test_a_claim_whose_data_root_vanished_is_kept_while_its_daemon_runs(tmp_path):
    # e.g. a test's temp dir removed under a hub that still runs the user's daemon
    busy = {32768}
    registry = NetIdRegistry(tmp_path / "r", max_users=4, in_use=lambda net_id: net_id in busy)
    gone = tmp_path / "gone"
    assert registry.allocate(gone) == 32768
    (gone / MARKER).unlink()
    assert registry.allocate(tmp_path / "new") == 32832  # 32768 still in use
    busy.clear()
    assert registry.allocate(tmp_path / "newer") == 32768  # now it is free


def test_in_use_sees_a_listening_daemon_socket(tmp_path):
    import socket

    from hubcontrol.netids import in_use

    sock_dir = tmp_path / "run" / "40000"
    sock_dir.mkdir(parents=True)
    assert not in_use(40000, run_dir=tmp_path / "run", sys_net=tmp_path / "sys")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(sock_dir / "docker.sock"))
        server.listen()
        assert in_use(40000, run_dir=tmp_path / "run", sys_net=tmp_path / "sys")
    (tmp_path / "sys" / "rdh40000e" / "brif" / "veth1").mkdir(parents=True)
    assert in_use(40000, run_dir=tmp_path / "run", sys_net=tmp_path / "sys")


def test_an_id_still_in_use_is_not_released(tmp_path):
    busy = {32768}
    registry = NetIdRegistry(tmp_path / "r", in_use=lambda net_id: net_id in busy)
    assert registry.allocate(tmp_path / "a") == 32768
    assert registry.release(32768, tmp_path / "a") is False  # its daemon did not stop
    assert registry.owner(32768) is not None
    busy.clear()
    assert registry.release(32768, tmp_path / "a") is True


def test_a_returning_user_refreshes_the_marker_age(tmp_path):
    """hub gc judges abandonment by the marker's age: a login must make the data-root young."""
    registry = NetIdRegistry(tmp_path / "registry", in_use=IDLE)
    root = tmp_path / "alice-docker"
    net_id = registry.allocate(root)
    old = 1_000_000_000
    os.utime(root / ".networkid", (old, old))
    assert registry.allocate(root) == net_id
    assert (root / ".networkid").stat().st_mtime > old + 10**8
