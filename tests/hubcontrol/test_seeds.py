"""Seed data-roots and per-layer image updates: the pure decisions, the save-stream filter, and
``hub gc``'s handling of seeds on an ordinary directory tree (no docker)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hubcli.app import app
from hubcontrol import gc, images, names, seeds
from hubcontrol.supervisor import storage_driver

A, B, C = ("sha256:" + hashlib.sha256(x).hexdigest() for x in (b"a", b"b", b"c"))


# -- where and how -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filesystem", "reflink", "method"),
    [("btrfs", False, "snapshot"), ("btrfs", True, "snapshot"), ("xfs", True, "reflink"),
     ("ext2/ext3", False, None), ("tmpfs", False, None), ("overlayfs", False, None)],
)  # fmt: skip
def test_clone_method(filesystem, reflink, method):
    assert seeds.clone_method(filesystem, reflink) == method


@pytest.mark.parametrize(
    ("filesystem", "entries", "driver"),
    [
        ("btrfs", set(), "overlay2"),  # a new data-root: never docker's btrfs driver
        ("btrfs", {"overlay2", "image"}, "overlay2"),  # a clone of a seed
        ("btrfs", {"btrfs", "image"}, None),  # an older hub's btrfs-driver data-root keeps it
        ("btrfs", {"btrfs", "overlay2"}, "overlay2"),
        ("ext2/ext3", set(), None),  # dockerd's own default (overlay2)
        ("overlayfs", set(), None),  # overlay2 cannot run there: let dockerd choose
        ("xfs", {"overlay2"}, None),
    ],
)
def test_storage_driver(filesystem, entries, driver):
    assert storage_driver(filesystem, entries) == driver


def test_seeds_live_where_no_safe_name_reaches():
    assert names.owned_by_hub(seeds.SEEDS_DIR)
    assert not names.is_safe_name(seeds.SEEDS_DIR)
    for username in (".seeds", "seeds", "Seeds", ".seed-0a1b2c3d"):
        assert names.safe_name(username) != seeds.SEEDS_DIR


@pytest.mark.parametrize("bad", ["", "sha256:", "sha256:xyz", "../" + "a" * 61, "A" * 64, "a" * 63])
def test_hex_id_refuses_what_is_not_an_image_id(bad):
    with pytest.raises(ValueError):
        seeds.hex_id(bad)


def test_hex_id():
    assert seeds.hex_id(A) == A[len("sha256:") :] == seeds.hex_id(A[len("sha256:") :])


@pytest.mark.parametrize(
    ("wanted", "busy", "remove", "reason"),
    [
        (None, False, False, "has not recorded"),
        ({"x"}, False, True, "no configured template"),
        ({"x", "h"}, False, False, "configured template"),
        ({"x"}, True, False, "being built or cloned"),
        (None, True, False, "being built or cloned"),
    ],
)
def test_seed_verdict(wanted, busy, remove, reason):
    got_remove, got_reason = seeds.seed_verdict("h", wanted, busy)
    assert got_remove is remove and reason in got_reason


# -- layers ------------------------------------------------------------------------------------


def test_chain_ids_follow_docker():
    chains = images.chain_ids([A, B, C])
    assert chains[0] == A
    assert chains[1] == "sha256:" + hashlib.sha256(f"{A} {B}".encode()).hexdigest()
    assert chains[2] == "sha256:" + hashlib.sha256(f"{chains[1]} {C}".encode()).hexdigest()


@pytest.mark.parametrize(
    ("present", "skip"),
    [
        (set(), set()),
        ({"a"}, {"1/layer.tar"}),
        ({"a", "ab"}, {"1/layer.tar", "2/layer.tar"}),
        ({"ab"}, {"2/layer.tar"}),  # a chain is what counts
        ({"a", "ab", "abc"}, {"1/layer.tar", "2/layer.tar", "3/layer.tar"}),
    ],
)
def test_layers_to_skip(present, skip):
    chains = dict(zip(("a", "ab", "abc"), images.chain_ids([A, B, C]), strict=True))
    members = ["1/layer.tar", "2/layer.tar", "3/layer.tar"]
    assert images.layers_to_skip(members, [A, B, C], {chains[p] for p in present}) == skip


def test_a_member_needed_anywhere_is_sent():
    chains = images.chain_ids([A, A])
    # the same member at two positions, one of them missing: sent
    assert images.layers_to_skip(["1/layer.tar", "1/layer.tar"], [A, A], {chains[0]}) == set()


def test_a_manifest_of_another_shape_skips_nothing():
    assert images.layers_to_skip(["1/layer.tar"], [A, B], set(images.chain_ids([A, B]))) == set()


def save_stream(members: list[tuple[str, bytes]], fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


LONG = "d/" + "x" * 150 + "/layer.tar"  # a PAX or GNU long-name header precedes it


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
@pytest.mark.parametrize("chunk", [1, 511, 512, 4096, 1 << 20])
def test_the_save_stream_filter_drops_layers_and_keeps_the_rest(fmt, chunk):
    manifest = json.dumps([{"Config": "c.json", "Layers": ["a/layer.tar", "b/layer.tar"]}])
    members = [
        ("a/json", b"{}"),
        ("a/layer.tar", os.urandom(3000)),
        ("b/layer.tar", os.urandom(700)),
        ("c.json", b'{"rootfs": {}}'),
        ("empty", b""),
        ("manifest.json", manifest.encode()),
    ]
    if fmt != tarfile.USTAR_FORMAT:
        members.insert(3, (LONG, os.urandom(1500)))
    raw = save_stream(members, fmt)
    drop = {"a/layer.tar", LONG}
    tar = images.TarFilter(drop=drop.__contains__, capture=["manifest.json"])
    out = b"".join(tar.feed(raw[i : i + chunk]) for i in range(0, len(raw), chunk))
    with tarfile.open(fileobj=io.BytesIO(out)) as result:
        kept = {m.name: result.extractfile(m).read() for m in result.getmembers()}
    assert kept == {name: data for name, data in members if name not in drop}
    assert images.manifest_layers(tar.captured["manifest.json"]) == ["a/layer.tar", "b/layer.tar"]
    assert tar.sent == len(out) and tar.dropped >= 3000 + (1500 if LONG in dict(members) else 0)
    assert tar.sent + tar.dropped == len(raw)


@pytest.mark.parametrize(
    ("text", "layers"),
    [(b"[]", []), (b"nonsense", []), (b'[{"Layers": ["x"]}, {"Layers": ["y"]}]', []),
     (b'[{"Layers": ["x/layer.tar"]}]', ["x/layer.tar"]), (b'[{"Layers": 3}]', [])],
)  # fmt: skip
def test_manifest_layers(text, layers):
    assert images.manifest_layers(text) == layers


def test_the_layer_index_outlives_the_process_in_its_directory(tmp_path):
    first = images.LayerIndex(tmp_path)
    first.put(A, ["1/layer.tar"])
    assert images.LayerIndex(tmp_path).get(A) == ["1/layer.tar"]
    assert images.LayerIndex().get(A) is None
    first.forget(A)
    (tmp_path / f"{seeds.hex_id(A)}.layers.json").unlink()
    assert first.get(A) is None


# -- hub gc and seeds --------------------------------------------------------------------------


def make_seeds(workspace: Path, wanted: set[str] | None) -> seeds.SeedPaths:
    paths = seeds.SeedPaths(workspace)
    paths.ensure()
    for image in (A, B):
        (paths.seed(seeds.hex_id(image)) / "overlay2").mkdir(parents=True)
    if wanted is not None:
        paths.write_wanted({seeds.hex_id(i): ["default"] for i in wanted})
    return paths


def seed_entries(plan: gc.GCPlan) -> dict[str, tuple[gc.Action, str | None]]:
    return {e.path.name: (e.action, e.outcome) for e in plan.entries if e.kind is gc.Kind.SEED}


def test_gc_removes_the_seeds_no_template_uses(tmp_path):
    paths = make_seeds(tmp_path / "ws", wanted={A})
    build = paths.dir / f"{seeds.BUILD_PREFIX}{seeds.hex_id(C)}-0a1b2c3d"  # a crashed build
    (build / "data").mkdir(parents=True)
    plan = gc.plan_gc(tmp_path / "ws")
    assert seed_entries(plan) == {
        seeds.hex_id(A): (gc.Action.KEEP, None),
        seeds.hex_id(B): (gc.Action.REMOVE, None),
        build.name: (gc.Action.REMOVE, None),
    }
    done = gc.apply_gc(plan)
    assert seed_entries(done)[seeds.hex_id(B)] == (gc.Action.REMOVE, "removed")
    assert paths.seeds() == [seeds.hex_id(A)] and not build.exists()


def test_gc_never_removes_a_seed_being_built_or_cloned(tmp_path):
    paths = make_seeds(tmp_path / "ws", wanted=set())
    build = paths.dir / f"{seeds.BUILD_PREFIX}{seeds.hex_id(C)}-0a1b2c3d"
    build.mkdir()
    with (
        seeds.seed_lock(paths.lock(seeds.hex_id(A)), exclusive=False),  # a clone
        seeds.seed_lock(paths.lock(seeds.hex_id(C)), exclusive=True),  # a build
    ):
        plan = gc.plan_gc(tmp_path / "ws")
        verdicts = {k: a for k, (a, _) in seed_entries(plan).items()}
        assert verdicts[seeds.hex_id(A)] is gc.Action.KEEP
        assert verdicts[build.name] is gc.Action.KEEP
        # taken between the plan and the removal: re-checked under the lock
        with seeds.seed_lock(paths.lock(seeds.hex_id(B)), exclusive=False):
            done = gc.apply_gc(plan)
        assert seed_entries(done)[seeds.hex_id(B)][1] == "skipped: being built or cloned"
    assert set(paths.seeds()) == {seeds.hex_id(A), seeds.hex_id(B)} and build.exists()


def test_gc_keeps_every_seed_until_a_hub_records_what_it_uses(tmp_path):
    make_seeds(tmp_path / "ws", wanted=None)
    plan = gc.plan_gc(tmp_path / "ws")
    assert {a for a, _ in seed_entries(plan).values()} == {gc.Action.KEEP}


def test_hub_gc_dry_run_lists_seeds(tmp_path):
    paths = make_seeds(tmp_path / "ws", wanted={A})
    result = CliRunner().invoke(app, ["gc", str(tmp_path / "ws"), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    listed = {Path(e["path"]).name: e for e in out["entries"] if e["kind"] == "seed"}
    assert listed[seeds.hex_id(B)]["action"] == "remove"
    assert "no configured template" in listed[seeds.hex_id(B)]["reason"]
    assert listed[seeds.hex_id(A)]["action"] == "keep"
    assert set(paths.seeds()) == {seeds.hex_id(A), seeds.hex_id(B)}  # a dry run removes nothing
