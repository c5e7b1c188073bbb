"""Checkpoints of an environment running as uid 1000, with and without ``--userns-remap``.

Real Hub (embedded), real per-user dockerd (LocalSupervisor), real CRIU 4.2.1. On this machine
kind (a Firecracker VM) root lacks CAP_SYS_RESOURCE, so without remapping CRIU cannot read the
rlimits of a uid-1000 process and the dump fails; with ``--userns-remap`` the container's user
namespace is owned by root, the same environment is dumped, its daemon stopped, and restored
with its memory. The workspace files it writes are the user's ids inside and the user's own
host range outside. The account and ``/etc/subuid``/``/etc/subgid`` lines the hub adds are
removed at the end (``userns.remove_account``) and checked gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import docker
import pytest

from hubcontrol import userns
from hubcontrol.checkpoint import host_can_dump_other_users
from hubcontrol.embed import embedded
from hubcontrol.supervisor import RUN_DIR, remapped_exec_roots
from tests.support.hubcore import COMMAND, host_test_image, make_config, unique_user

pytestmark = [pytest.mark.docker, pytest.mark.criu, pytest.mark.timeout(300)]

COUNTER = "(i=0; while :; do i=$((i+1)); echo $i > /workspace/counter; sleep 0.3; done) & "


@pytest.fixture(scope="module")
def image():
    with host_test_image() as ref:
        yield ref


@pytest.fixture
def workspace_root():
    """A ``--workspace-dir`` parent every remapped root can pass (pytest's tmp dirs are 0700,
    and dockerd refuses a data-root below a directory the remapped root cannot search)."""
    root = Path(tempfile.mkdtemp(prefix="hub-uns-", dir="/tmp"))
    root.chmod(0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def read_counter(path: Path) -> int:
    deadline = time.monotonic() + 10
    while True:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int(path.read_text().strip())
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} has no counter")
        time.sleep(0.1)


def host_uid(docker_url: str, container_id: str) -> int:
    """The host uid of the container's PID 1 (tini) child: the template's command."""
    client = docker.DockerClient(base_url=docker_url, version="1.41")
    try:
        pid = client.api.inspect_container(container_id)["State"]["Pid"]
    finally:
        client.close()
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    status = Path(f"/proc/{children[0]}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


def subid_lines(name: str) -> list[str]:
    return [
        line
        for path in (userns.SUBUID, userns.SUBGID)
        for line in path.read_text().splitlines()
        if line.startswith(f"{name}:")
    ]


def test_a_uid_1000_environment_is_restored_with_its_memory_under_userns_remap(
    workspace_root, image
):
    user = unique_user("uns")
    config = dataclasses.replace(
        make_config(workspace_root, image, user="1000:1000", command=COUNTER + COMMAND),
        checkpoint=True,
        userns_remap=True,
    )
    net_id = None
    try:
        with embedded(config, ready_timeout=60) as hub:
            env = hub.ensure_running(user)
            rec = hub.hub.record(user)
            net_id = rec["net_id"]
            ids = userns.id_range(net_id)
            name = userns.account_name(net_id)
            assert subid_lines(name) == [f"{name}:{ids.start}:65536"] * 2
            # uid 1000 inside is the user's own host uid outside, shared with no other user
            assert host_uid(rec["docker_url"], env.container_id) == ids.start + 1000
            counter = workspace_root / "workspaces" / env.name / "counter"
            read_counter(counter)
            st = counter.stat()
            assert (st.st_uid, st.st_gid) == (ids.start + 1000, ids.start + 1000)
            # as the user sees it: their own ids; the workspace is not open to other host ids
            client = docker.DockerClient(base_url=rec["docker_url"], version="1.41")
            try:
                seen = client.containers.get(env.container_id).exec_run(
                    "sh -c 'id -u; ls -ln /workspace/counter'", user="1000"
                )
            finally:
                client.close()
            lines = seen.output.decode().split("\n")
            assert lines[0] == "1000" and lines[1].split()[2:4] == ["1000", "1000"], seen.output
            top = (workspace_root / "workspaces" / env.name).stat()
            assert stat.S_IMODE(top.st_mode) & 0o007 == 0
            # <workspace-dir> is passable now, the workspace is still closed to other accounts
            other = subprocess.run(
                [
                    "setpriv",
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    "cat",
                    str(counter),
                ],
                capture_output=True,
                text=True,
            )
            assert other.returncode != 0 and "Permission denied" in other.stderr
            assert stat.S_IMODE((workspace_root / "workspaces").stat().st_mode) == 0o711

            time.sleep(1)
            started = time.monotonic()
            hub.stop(user)  # by configuration: checkpoint (CRIU dump, daemon stopped)
            dumped = time.monotonic() - started
            assert hub.hub.record(user)["state"] == "checkpointed"
            frozen = read_counter(counter)
            time.sleep(1)
            assert read_counter(counter) == frozen  # nothing runs while suspended

            started = time.monotonic()
            again = hub.ensure_running(user)  # daemon start, CRIU restore, verification
            resumed = time.monotonic() - started
            assert again.container_id == env.container_id
            assert "restored with their memory" in hub.hub.record(user)["restored"]["detail"]
            time.sleep(1)
            now = read_counter(counter)
            assert frozen < now < frozen + 20  # continued, not restarted from 1
            print(f"suspend (dump + daemon stop) {dumped:.2f} s, resume {resumed:.2f} s")
    finally:
        with embedded(config) as hub, contextlib.suppress(Exception):
            hub.destroy(user, remove_data=True)
        if net_id is not None:
            # destroy took dockerd's <exec-root>.<uid>.<gid>, the account and its id ranges
            leftovers = remapped_exec_roots(RUN_DIR, net_id)
            had_account = userns.remove_account(net_id)  # whatever happened above: clean up
            assert leftovers == [] and not had_account
            assert subid_lines(userns.account_name(net_id)) == []
            with pytest.raises(KeyError):
                pwd.getpwnam(userns.account_name(net_id))


def test_without_userns_remap_the_same_environment_cannot_be_dumped_here(tmp_path, image, caplog):
    """What --userns-remap is for: on a host whose root lacks CAP_SYS_RESOURCE (this one), the
    dump of a uid-1000 environment fails with CRIU's rlimit error, and the hint names the fix."""
    user = unique_user("nouns")
    config = dataclasses.replace(
        make_config(tmp_path, image, user="1000:1000", command=COUNTER + COMMAND), checkpoint=True
    )
    try:
        with embedded(config, ready_timeout=60) as hub:
            hub.ensure_running(user)
            hub.stop(user)
            state = hub.hub.record(user)["state"]
            failures = hub.hub.checkpointer.health(user).failures
    finally:
        with embedded(config) as hub, contextlib.suppress(Exception):
            hub.destroy(user, remove_data=True)
    if host_can_dump_other_users():  # a host that grants the capability needs no remapping
        assert state == "checkpointed"
        return
    assert state != "checkpointed" and failures == 1
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == "hubcontrol.checkpoint")
    assert "Can't get rlimit" in logged and "Operation not permitted" in logged
    assert "--userns-remap" in logged  # the hint


def unmounted_v1_controller() -> str | None:
    """A cgroup v1 hierarchy the kernel has but the host does not mount (hugetlb here; its
    controllers joined by commas, as ``mount -o`` takes them), which runc looks for in the
    mount table; None on a host without such (cgroup v2 only)."""
    mounted = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" - ")[1].split()
        if fields[0] == "cgroup":
            mounted.update(fields[2].split(","))
    hierarchies: dict[str, list[str]] = {}
    for line in Path("/proc/cgroups").read_text().splitlines()[1:]:
        name, hierarchy, _, enabled = line.split()
        if enabled == "1" and hierarchy != "0":
            hierarchies.setdefault(hierarchy, []).append(name)
    for names in hierarchies.values():
        if not mounted.intersection(names):
            return ",".join(sorted(names))
    return None


def _remove_yard_once_refused(yard: Path, caplog, limit: float = 60) -> None:
    """The CRIU that made the yard ends: after the hub's first refused start (or ``limit``)."""
    deadline = time.monotonic() + limit
    while "cgroup yard was in the way" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    subprocess.run(["umount", str(yard)], check=False)


def test_a_start_while_another_criu_works_is_retried_under_userns_remap(
    workspace_root, image, caplog
):
    """On this cgroup v1 host, while any CRIU dumps or restores, its cgroup yard (a v1 hierarchy
    the host does not mount, below root-only directories) is in the mount table; runc mounts it
    into a new container, which a remapped root may not look at. Made here as CRIU makes it,
    removed once the hub's first start was refused: the environment starts once it is gone."""
    user = unique_user("yard")
    config = dataclasses.replace(
        make_config(workspace_root, image, user="1000:1000"), userns_remap=True
    )
    caplog.set_level(logging.INFO, logger="hubcontrol.hub")
    controller = unmounted_v1_controller()
    hidden = Path(tempfile.mkdtemp(prefix="yard-", dir="/tmp"))  # 0700, root's
    yard = hidden / ".criu.cgyard.test" / str(controller)
    net_id = None
    try:
        if controller is not None:
            yard.mkdir(parents=True)
            subprocess.run(
                ["mount", "-t", "cgroup", "-o", controller, "none", str(yard)], check=True
            )
            threading.Thread(target=_remove_yard_once_refused, args=(yard, caplog)).start()
        with embedded(config, ready_timeout=60) as hub:
            hub.ensure_running(user)
            net_id = hub.hub.record(user)["net_id"]
            assert hub.hub.record(user)["state"] == "running"
        if controller is not None:
            assert "cgroup yard was in the way" in caplog.text  # refused first, then started
    finally:
        with embedded(config) as hub, contextlib.suppress(Exception):
            hub.destroy(user, remove_data=True)
        deadline = time.monotonic() + 10
        while controller is not None and os.path.ismount(yard) and time.monotonic() < deadline:
            time.sleep(0.1)
        if controller is not None and os.path.ismount(yard):
            subprocess.run(["umount", "-l", str(yard)], check=False)
        shutil.rmtree(hidden, ignore_errors=True)
        if net_id is not None:
            userns.remove_account(net_id)
