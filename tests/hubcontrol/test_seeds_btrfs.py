"""Seed data-roots on a real BTRFS filesystem (a loop file of the test's own), real per-user
dockerd (LocalSupervisor), real CRIU, and a 1 GiB image built on the host daemon once per run.

What a user and an operator would notice: a new user's start clones the template's seed instead
of loading the image (seconds, a few hundred KiB of disk of their own); the cloned daemon runs
containers, builds images, is checkpointed and restored, and switches templates; an image the
operator rebuilds reaches a returning user with only its new layers; ``hub gc`` removes the seed
nobody uses any more; on an ordinary filesystem the hub loads the image as before.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import time
from pathlib import Path

import docker
import pytest

from hubcontrol import gc, seeds, storage
from hubcontrol.config import HubConfig, Template
from hubcontrol.embed import embedded
from tests.support.btrfs import btrfs_loop, build, exclusive_bytes, large_image
from tests.support.containers import run_output
from tests.support.hubcore import (
    COMMAND,
    HOST_SOCKET,
    ROUTES,
    host_test_image,
    unique_user,
)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

LARGE_MB = 1024
COUNTER = "(i=0; while :; do i=$((i+1)); echo $i > /workspace/counter; sleep 0.3; done) & "


@pytest.fixture(scope="module")
def host():
    client = docker.DockerClient(base_url=f"unix://{HOST_SOCKET}", version="1.41", timeout=600)
    yield client
    client.close()


@pytest.fixture(scope="module")
def fs(tmp_path_factory):
    with btrfs_loop(tmp_path_factory.mktemp("btrfs")) as mount:
        yield mount


@pytest.fixture(scope="module")
def small():
    with host_test_image() as ref:
        yield ref


@pytest.fixture(scope="module")
def large(host, small):
    with large_image(host, small, LARGE_MB) as ref:
        yield ref


def config_for(base: Path, workspace: Path, templates: dict[str, Template]) -> HubConfig:
    return HubConfig(
        routes=ROUTES,
        templates=templates,
        docker_socket=HOST_SOCKET,
        workspace_dir=workspace,
        state_dir=base / "state",
        audit_dir=base / "audit",
        supervisor="local",
    )


def template(name: str, image: str, **fields) -> Template:
    values = {"command": COMMAND, "docker": "per-user", "cpu": "50%", "memory": "256M"}
    values.update(fields)
    return Template(name=name, image=image, **values)


@pytest.fixture(scope="module")
def config(fs, tmp_path_factory, large, small) -> HubConfig:
    base = tmp_path_factory.mktemp("hub")
    return config_for(
        base,
        fs / "workspaces",
        {
            "default": template("default", large),
            "small": template("small", small),
            # root: this host's root lacks CAP_SYS_RESOURCE, so CRIU dumps only root processes
            "root": template("root", large, user="root", command=COUNTER + COMMAND,
                             checkpoint=True),
        },
    )  # fmt: skip


@contextlib.contextmanager
def hub_on(config: HubConfig, **options):
    """A Hub in a background loop; every user it touched is destroyed with its data afterwards."""
    with embedded(config, ready_timeout=30, **options) as hub:
        try:
            yield hub
        finally:
            for row in hub.status():
                with contextlib.suppress(Exception):
                    hub.destroy(row.user, remove_data=True)


def data_root(config: HubConfig, env) -> Path:
    return storage.UserPaths(Path(config.workspace_dir), env.name).data_root


def wait_for_seed(config: HubConfig, image_id: str, timeout: float = 600) -> Path:
    path = seeds.SeedPaths(Path(config.workspace_dir)).seed(seeds.hex_id(image_id))
    deadline = time.monotonic() + timeout
    while not path.is_dir():
        assert time.monotonic() < deadline, f"no seed at {path}"
        time.sleep(0.5)
    return path


def client_of(env) -> docker.DockerClient:
    return docker.DockerClient(base_url=env.docker_url, version="1.41", timeout=300)


def read_counter(path: Path) -> int:
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int(path.read_text().strip())
        assert time.monotonic() < deadline, f"{path} has no counter"
        time.sleep(0.1)


def test_a_new_user_arriving_during_the_build_waits_for_it_and_gets_a_clone(config, host, large):
    """The hub builds the seed at start; a user who logs in meanwhile shares that build, and
    the next user's start is a clone: seconds, and a few hundred KiB of disk of their own."""
    want = host.images.get(large).id
    first, second = unique_user("seed"), unique_user("seed")
    with hub_on(config) as hub:
        env = hub.ensure_running(first)  # the seed is still being built: this start waits for it
        seed = wait_for_seed(config, want, timeout=1)
        assert hub.hub.record(first)["seeded"] == "snapshot"
        started = time.monotonic()
        env2 = hub.ensure_running(second)
        took = time.monotonic() - started
        assert hub.hub.record(second)["seeded"] == "snapshot"
        for e in (env, env2):
            root = data_root(config, e)
            assert storage.is_subvolume(root)  # a snapshot of the seed
            assert exclusive_bytes(root) < 0.02 * (LARGE_MB << 20), exclusive_bytes(root)
        assert took < 20, f"a cloned start took {took:.1f} s"
        # the seed itself is complete, read-only, and holds nothing of its daemon's own state
        assert sorted(os.listdir(seed)) == ["image", "overlay2", "trust", "volumes"]
        assert not [p for p in seeds.SeedPaths(Path(config.workspace_dir)).builds()]

        client = client_of(env)
        try:
            info = client.info()
            assert info["Driver"] == "overlay2"
            assert ["Backing Filesystem", "btrfs"] in info["DriverStatus"]
            assert client.images.get(large).id == want
            assert run_output(client, large, "cat /tag").strip()
            client.images.build(
                fileobj=io.BytesIO(f"FROM {large}\nRUN echo built > /b\n".encode()),
                tag="mine:1",
                rm=True,
            )
            assert run_output(client, "mine:1", "cat /b") == b"built\n"
        finally:
            client.close()


@pytest.mark.criu
def test_a_cloned_data_root_is_checkpointed_and_restored(config, host, large):
    wait_for_seed(config, host.images.get(large).id)
    user = unique_user("ckpt")
    with hub_on(config) as hub:
        env = hub.ensure_running(user, "root")
        assert hub.hub.record(user)["seeded"] == "snapshot"
        counter = Path(config.workspace_dir) / env.name / "counter"
        time.sleep(1)
        hub.stop(user)  # the template asks for checkpoints
        assert hub.hub.record(user)["state"] == "checkpointed"
        # the memory waits beside the images, out of dockerd's tar; the restore below stages it
        # into the daemon's TMPDIR, another subvolume (a reflink: no hard link across them)
        checkpoints = Path(config.workspace_dir) / env.name / ".checkpoint"
        assert list(checkpoints.glob("*.pages/pages-*.img"))
        frozen = read_counter(counter)
        again = hub.ensure_running(user)
        assert again.container_id == env.container_id
        assert "restored with their memory" in hub.hub.record(user)["restored"]["detail"]
        time.sleep(1)
        assert frozen < read_counter(counter) < frozen + 20  # went on, not restarted from 1


def test_a_template_switch_on_a_cloned_data_root_keeps_the_workspace(config, host, large, small):
    wait_for_seed(config, host.images.get(large).id)
    user = unique_user("switch")
    with hub_on(config) as hub:
        env = hub.ensure_running(user)
        assert hub.hub.record(user)["seeded"] == "snapshot"
        (Path(config.workspace_dir) / env.name / "kept").write_text("yes")
        switched = hub.ensure_running(user, "small")
        assert switched.template == "small"
        client = client_of(switched)
        try:
            container = client.containers.get(switched.container_id)
            assert container.image.id == host.images.get(small).id
            code, out = container.exec_run(["cat", "/workspace/kept"])
            assert (code, out) == (0, b"yes")
        finally:
            client.close()


def test_an_image_update_reaches_a_returning_user_with_only_its_new_layers(
    fs, tmp_path, host, small, caplog
):
    """The operator rebuilds the template's image; a returning user's next start gets it, and
    only the new layer travels. The old image stays while the old container uses it; the next
    seed is built, and ``hub gc`` removes the seed nobody uses."""
    tag = f"hub-test/update:{os.getpid()}-{time.monotonic_ns() % 10**6}"
    v1 = build(host, f"FROM {small}\nRUN head -c {64 << 20} /dev/urandom > /v1\n", tag)
    config = config_for(tmp_path, fs / "ws-update", {"default": template("default", tag)})
    user, newcomer = unique_user("upd"), unique_user("upd")
    v2 = None
    caplog.set_level(logging.INFO, logger="hubcontrol.images")
    try:
        with hub_on(config) as hub:
            hub.ensure_running(user)
            assert hub.hub.record(user)["seeded"] == "snapshot"
            hub.stop(user)
            v2 = build(host, f"FROM {tag}\nRUN echo two > /v2\n", tag)  # the same tag, moved
            hub.portal.call(hub.hub.seeds.refresh)  # what the hub does within 10 s by itself
            wait_for_seed(config, v2, timeout=1)
            caplog.clear()
            again = hub.ensure_running(user)
            moved = [r.getMessage() for r in caplog.records if "sent" in r.getMessage()]
            assert moved, "no transfer logged"
            sent, had = map(int, re.search(r"sent (\d+) MB, (\d+) MB", moved[-1]).groups())
            assert sent < 4 and had >= 64, moved
            client = client_of(again)
            try:
                container = client.containers.get(again.container_id)
                assert container.image.id == v2
                assert container.exec_run(["cat", "/v2"]).output == b"two\n"
                # the old image stays until nothing uses it: it went with the old container
                record = hub.hub.record(user)
                assert record["image_id"] == v2
                assert record["stale_images"] == [v1]
                hub.stop(user)
                hub.ensure_running(user)
                assert hub.hub.record(user)["stale_images"] == []
                with pytest.raises(docker.errors.ImageNotFound):
                    client.images.get(v1)
            finally:
                client.close()
            # a new user now gets a clone of the new seed
            fresh = hub.ensure_running(newcomer)
            assert hub.hub.record(newcomer)["seeded"] == "snapshot"
            assert storage.is_subvolume(data_root(config, fresh))

            # hub gc: the old image's seed is unused, the new one is the template's
            ws = Path(config.workspace_dir)
            paths = seeds.SeedPaths(ws)
            plan = gc.plan_gc(ws, max_age=gc.DEFAULT_MAX_AGE)
            verdicts = {e.path.name: e.action for e in plan.entries if e.kind is gc.Kind.SEED}
            assert verdicts == {
                seeds.hex_id(v1): gc.Action.REMOVE,
                seeds.hex_id(v2): gc.Action.KEEP,
            }
            with seeds.seed_lock(paths.lock(seeds.hex_id(v1)), exclusive=False):  # a clone
                done = gc.apply_gc(plan)
                outcome = {e.path.name: e.outcome for e in done.entries if e.kind is gc.Kind.SEED}
                assert outcome[seeds.hex_id(v1)] == "skipped: being built or cloned"
                assert paths.seed(seeds.hex_id(v1)).is_dir()
            done = gc.apply_gc(gc.plan_gc(ws))
            assert not paths.seed(seeds.hex_id(v1)).exists()
            assert paths.seed(seeds.hex_id(v2)).is_dir()
            assert paths.seeds() == [seeds.hex_id(v2)]
    finally:
        for ref in (v2, tag, v1):
            with contextlib.suppress(docker.errors.DockerException, TypeError):
                host.images.remove(ref, force=True)


def test_reflink_clones_where_there_are_no_subvolumes(fs, tmp_path, small, monkeypatch):
    """``cp --reflink=always`` (XFS and the like; tried here on BTRFS without its snapshots)."""
    monkeypatch.setattr(seeds, "detect_method", lambda paths: (paths.ensure(), "reflink")[1])
    config = config_for(tmp_path, fs / "ws-reflink", {"default": template("default", small)})
    user = unique_user("reflink")
    with hub_on(config) as hub:
        env = hub.ensure_running(user)
        assert hub.hub.record(user)["seeded"] == "reflink"
        root = data_root(config, env)
        assert not storage.is_subvolume(root)
        assert (root / "overlay2").is_dir()
        client = client_of(env)
        try:
            assert run_output(client, small, "echo ok") == b"ok\n"
        finally:
            client.close()


def test_an_ordinary_filesystem_loads_the_image_as_before(tmp_path, small):
    """No snapshots, no reflinks (ext4 here): nothing is seeded, the image is transferred."""
    assert storage.filesystem_type(tmp_path) != "btrfs"
    config = config_for(tmp_path, tmp_path / "workspaces", {"default": template("default", small)})
    user = unique_user("plain")
    with hub_on(config) as hub:
        env = hub.ensure_running(user)
        record = hub.hub.record(user)
        assert "seeded" not in record
        assert record["image_id"]
        assert seeds.SeedPaths(Path(config.workspace_dir)).seeds() == []
        client = client_of(env)
        try:
            assert client.images.get(small).id == record["image_id"]
        finally:
            client.close()
