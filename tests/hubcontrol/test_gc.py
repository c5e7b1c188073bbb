"""GC's pure decisions and its planning over real directories (no daemon needed)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hubcontrol import gc
from hubcontrol.errors import GCError
from hubcontrol.gc import Action, HostProbe, Kind

DAY = 86400.0
MAX = 30 * DAY


@pytest.mark.parametrize(
    ("age", "running", "configured", "refusal", "action", "why"),
    [
        (31 * DAY, None, None, None, Action.REMOVE, "unused for 31d"),
        (29 * DAY, None, None, None, Action.KEEP, "used 29d ago"),
        (MAX, None, None, None, Action.KEEP, "used 30d ago"),  # not older than max-age
        (MAX + 1, None, None, None, Action.REMOVE, "unused for 30d"),
        (400 * DAY, "dockerd pid 7", None, None, Action.KEEP, "daemon running (dockerd pid 7)"),
        (
            400 * DAY,
            None,
            "systemd unit x",
            None,
            Action.KEEP,
            "daemon configured (systemd unit x)",
        ),
        (400 * DAY, "dockerd pid 7", "systemd unit x", None, Action.KEEP, "running"),
        (None, None, None, None, Action.KEEP, "age unknown"),
        (400 * DAY, None, None, "symlink to /etc", Action.REFUSE, "symlink to /etc"),
        (1.0, "dockerd pid 7", None, "not a directory", Action.REFUSE, "not a directory"),
    ],
)
def test_data_root_verdict(age, running, configured, refusal, action, why):
    got, reason = gc.data_root_verdict(
        age=age, max_age=MAX, running=running, configured=configured, refusal=refusal
    )
    assert got is action
    assert why in reason


@pytest.mark.parametrize(
    ("age", "in_use", "container", "action"),
    [
        (31 * DAY, None, None, Action.REMOVE),
        (29 * DAY, None, None, Action.KEEP),
        (31 * DAY, "running (dockerd pid 1)", None, Action.KEEP),
        (31 * DAY, None, "/x/containers/abc/checkpoints", Action.KEEP),
        (None, None, None, Action.KEEP),
    ],
)
def test_checkpoint_verdict(age, in_use, container, action):
    got, _ = gc.checkpoint_verdict(
        age=age, max_age=MAX, daemon_in_use=in_use, container_left=container
    )
    assert got is action


@pytest.mark.parametrize(
    ("text", "net_id"),
    [
        ("32768\n", 32768),
        ("32832", 32832),
        (" 33024 \n", 33024),
        ("32769", None),  # not on the 64-step grid
        ("1000", None),  # below the user range
        ("-32768", None),
        ("abc", None),
        ("", None),
        ("3" * 40, None),
    ],
)
def test_parse_marker(text, net_id):
    assert gc.parse_marker(text) == net_id


@pytest.mark.parametrize(
    ("argv", "root"),
    [
        (["dockerd", "--data-root", "/a"], "/a"),
        (["/usr/sbin/dockerd", "--data-root=/b", "-H", "unix:///x"], "/b"),
        (["dockerd", "-g", "/c"], "/c"),
        (["dockerd", "-H", "fd://"], "/var/lib/docker"),
        (["containerd", "--data-root", "/a"], None),
        ([], None),
    ],
)
def test_dockerd_data_root(argv, root):
    assert gc.dockerd_data_root(argv) == root


# --- planning over real directories ------------------------------------------------------------


def make_data_root(ws: Path, user: str, net_id: int | str, age_days: float, now: float) -> Path:
    root = ws / f"{user}-docker"
    docker = root / ".rediacc/docker"
    (docker / "data/containers").mkdir(parents=True)
    (root / ".networkid").write_text(f"{net_id}\n")
    (docker / "dockerd.log").write_text("started\n")
    (docker / "data/blob").write_bytes(b"x" * 10000)
    (ws / user).mkdir(exist_ok=True)
    (ws / user / "notes.txt").write_text("keep me")
    stamp = now - age_days * DAY
    for p in (root / ".networkid", docker / "dockerd.log", docker / "data"):
        os.utime(p, (stamp, stamp))
    return root


@pytest.fixture
def probe(tmp_path: Path) -> HostProbe:
    # Unit dirs, claims and bridges under tmp: the host's own (other tests' daemons of these
    # made-up network IDs) must not leak into tests.
    units = tmp_path / "units"
    units.mkdir()
    return HostProbe(
        exec_base=tmp_path / "run",
        claims_dir=tmp_path / "netids",
        unit_dirs=(units,),
        host_cleanup=False,
        sys_net=tmp_path / "sysnet",
    )


def by_path(plan: gc.GCPlan) -> dict[str, gc.GCEntry]:
    return {
        e.path.name if e.kind is Kind.DATA_ROOT else f"{e.user}:{e.path.name}": e
        for e in plan.entries
    }


def test_plan_and_apply_on_plain_directories(tmp_path: Path, probe: HostProbe):
    ws = tmp_path / "ws"
    ws.mkdir()
    now = time.time()
    old = make_data_root(ws, "old", 32768, 40, now)
    make_data_root(ws, "young", 32832, 3, now)
    configured = make_data_root(ws, "conf", 32896, 90, now)
    (probe.unit_dirs[0] / "rediacc-hub-dockerd-conf.service").write_text("[Service]\n")
    # not ours: no marker (and a user whose name ends in -docker)
    (ws / "bob-docker").mkdir()
    (ws / "bob-docker" / "file").write_text("x")
    # a stale claim on old's network ID, and one held by someone else
    probe.claims_dir.mkdir()
    (probe.claims_dir / "32768").write_text(f"{old}\n")
    plan = gc.plan_gc(ws, max_age=MAX, now=now, probe=probe)
    entries = by_path(plan)
    assert entries["old-docker"].action is Action.REMOVE
    assert entries["old-docker"].size and entries["old-docker"].size >= 10000
    assert entries["young-docker"].action is Action.KEEP
    assert entries["conf-docker"].action is Action.KEEP
    assert "rediacc-hub-dockerd-conf.service" in entries["conf-docker"].reason
    assert "bob-docker" not in entries

    done = gc.apply_gc(plan, probe=probe, now=now)
    assert by_path(done)["old-docker"].outcome.startswith("removed")
    assert not old.exists()
    assert (ws / "old" / "notes.txt").read_text() == "keep me"  # workspaces are never touched
    assert not (probe.claims_dir / "32768").exists()
    assert (
        configured.exists() and (ws / "young-docker").exists() and (ws / "bob-docker/file").exists()
    )
    assert not done.failed


def test_a_network_id_claimed_by_someone_else_keeps_its_exec_root(tmp_path: Path, probe: HostProbe):
    """An old data-root still records a network ID that another user (or another hub on the
    host) claims now: GC removes the old data-root, and leaves the exec-root the ID's current
    owner's running daemon lives in (its socket, containerd's state) alone."""
    ws = tmp_path / "ws"
    ws.mkdir()
    now = time.time()
    old = make_data_root(ws, "old", 32768, 40, now)
    probe.claims_dir.mkdir()
    other = tmp_path / "other-hub" / "new-docker"
    (probe.claims_dir / "32768").write_text(f"{other}\n")
    live = probe.exec_base / "32768"
    live.mkdir(parents=True)
    (live / "docker.sock").write_text("")  # stands for the other daemon's socket
    done = gc.apply_gc(gc.plan_gc(ws, max_age=MAX, now=now, probe=probe), probe=probe, now=now)
    assert by_path(done)["old-docker"].outcome.startswith("removed")
    assert not old.exists()
    assert (live / "docker.sock").exists()
    assert (probe.claims_dir / "32768").read_text() == f"{other}\n"


def test_an_exec_root_of_a_released_id_goes_with_its_data_root(tmp_path: Path, probe: HostProbe):
    ws = tmp_path / "ws"
    ws.mkdir()
    now = time.time()
    old = make_data_root(ws, "old", 32768, 40, now)
    left = probe.exec_base / "32768"
    left.mkdir(parents=True)
    (left / "dockerd.pid").write_text("1\n")
    gc.apply_gc(gc.plan_gc(ws, max_age=MAX, now=now, probe=probe), probe=probe, now=now)
    assert not old.exists() and not left.exists()


def test_dry_run_is_plan_only(tmp_path: Path, probe: HostProbe):
    ws = tmp_path / "ws"
    ws.mkdir()
    now = time.time()
    old = make_data_root(ws, "old", 32768, 40, now)
    before = sorted(p for p in tmp_path.rglob("*"))
    plan = gc.plan_gc(ws, max_age=MAX, now=now, probe=probe)
    assert [e.path for e in plan.candidates] == [old]
    assert sorted(p for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("stamp", gc.USE_STAMPS)
def test_any_recent_stamp_counts_as_use(tmp_path: Path, probe: HostProbe, stamp: str):
    ws = tmp_path / "ws"
    ws.mkdir()
    now = time.time()
    root = make_data_root(ws, "back", 32768, 200, now)
    (root / stamp).touch()
    os.utime(root / stamp, (now - DAY, now - DAY))
    (entry,) = gc.plan_gc(ws, max_age=MAX, now=now, probe=probe).entries
    assert entry.action is Action.KEEP and "used 1d ago" in entry.reason


def test_refuses_symlinks_and_bad_markers(tmp_path: Path, probe: HostProbe):
    ws = tmp_path / "ws"
    ws.mkdir()
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / ".networkid").write_text("32768\n")
    (outside / "data").write_text("do not delete")
    os.utime(outside / ".networkid", (0, 0))
    (ws / "evil-docker").symlink_to(outside)
    bad = ws / "bad-docker"
    bad.mkdir()
    (bad / ".networkid").write_text("../../etc\n")
    linked = ws / "lm-docker"
    linked.mkdir()
    (linked / ".networkid").symlink_to(outside / ".networkid")
    now = time.time()
    plan = gc.plan_gc(ws, max_age=0, now=now, probe=probe)
    entries = by_path(plan)
    assert entries["evil-docker"].action is Action.REFUSE
    assert "outside the workspace dir" in entries["evil-docker"].reason
    assert (
        entries["bad-docker"].action is Action.REFUSE
        and "not a user network ID" in entries["bad-docker"].reason
    )
    assert entries["lm-docker"].action is Action.REFUSE
    gc.apply_gc(plan, probe=probe, now=now)
    assert (outside / "data").read_text() == "do not delete"
    assert bad.exists() and linked.exists()


def test_workspace_dir_must_exist(tmp_path: Path):
    with pytest.raises(GCError, match="does not exist"):
        gc.plan_gc(tmp_path / "nope")
    (tmp_path / "f").write_text("")
    with pytest.raises(GCError, match="not a directory"):
        gc.plan_gc(tmp_path / "f")
    with pytest.raises(GCError, match="refusing"):
        gc.plan_gc(Path("/"))


def test_orphaned_checkpoints(tmp_path: Path, probe: HostProbe):
    ws = tmp_path / "ws"
    ws.mkdir()
    now = time.time()
    old = now - 60 * DAY

    def image(user: str, name: str, mtime: float) -> Path:
        p = ws / user / ".checkpoint" / name
        p.mkdir(parents=True)
        (p / "pages-1.img").write_bytes(b"p" * 4096)
        os.utime(p, (mtime, mtime))
        return p

    gone = image("gone", "ck1", old)  # no data-root at all: its container is gone
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (ws / "gone/.checkpoint/ck3").symlink_to(elsewhere)
    os.utime(ws / "gone/.checkpoint/ck3", (old, old), follow_symlinks=False)
    fresh = image("gone", "ck2", now)  # too young
    # kept: a container in the (young) data-root still links to .checkpoint
    make_data_root(ws, "linked", 32768, 1, now)
    linked = image("linked", "ck1", old)
    ctr = ws / "linked-docker/.rediacc/docker/data/containers/abc"
    ctr.mkdir(parents=True)
    (ctr / "checkpoints").symlink_to(ws / "linked/.checkpoint")
    # kept too: --userns-remap's daemon keeps containers in data/<uid>.<gid>/ (docs/checkpoint.md)
    make_data_root(ws, "remapped", 32960, 1, now)
    remapped = image("remapped", "ck1", old)
    ctr = ws / "remapped-docker/.rediacc/docker/data/1073872896.1073872896/containers/def"
    ctr.mkdir(parents=True)
    (ctr / "checkpoints").symlink_to(ws / "remapped/.checkpoint")
    # young data-root without containers: its old images are orphans
    make_data_root(ws, "nolink", 32832, 1, now)
    orphan = image("nolink", "ck1", old)
    # the data-root is removed in this run, but a young image still waits out max-age
    make_data_root(ws, "dead", 32896, 90, now)
    dead = image("dead", "ck1", now)
    plan = gc.plan_gc(ws, max_age=MAX, now=now, probe=probe)
    entries = by_path(plan)
    assert entries["gone:ck1"].action is Action.REMOVE
    assert entries["gone:ck2"].action is Action.KEEP
    assert entries["gone:ck3"].action is Action.REFUSE
    assert entries["linked:ck1"].action is Action.KEEP and "abc" in entries["linked:ck1"].reason
    assert entries["remapped:ck1"].action is Action.KEEP and "def" in entries["remapped:ck1"].reason
    assert entries["nolink:ck1"].action is Action.REMOVE
    assert entries["dead:ck1"].action is Action.KEEP
    gc.apply_gc(plan, probe=probe, now=now)
    assert not gone.exists() and not orphan.exists()
    assert fresh.exists() and linked.exists() and dead.exists() and elsewhere.is_dir()
    assert remapped.exists()
    assert (ws / "gone").is_dir()  # the workspace itself stays
