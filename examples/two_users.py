#!/usr/bin/env python3
"""Bring up two users' environments with hubcontrol from a plain script, check them, clean up.

Run as root on a host prepared by scripts/setup-host.sh, with the environment image built by
scripts/build-image.sh (or any image with bash, ttyd and a docker CLI):

    .venv/bin/python examples/two_users.py [--image rediacc-hub/env:latest] [--keep]

What it shows, in the order docs/scripting.md explains it: a HubConfig built in code,
``hubcontrol.embedded()`` for synchronous use, ``ensure_running`` for two users, the route table,
``status()``, and that each user has their own daemon and cannot reach the other.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker

import hubcontrol
from hubcontrol import HubConfig, Template


def in_env(env: hubcontrol.Environment, script: str) -> tuple[int, str]:
    """Run ``bash -c script`` in the environment as its user, the way a terminal would."""
    client = docker.DockerClient(base_url=env.docker_url, version="1.41")
    try:
        result = client.containers.get(env.container_id).exec_run(
            ["bash", "-c", script], user="vscode"
        )
    finally:
        client.close()
    return result.exit_code, result.output.decode(errors="replace").strip()


def check(what: str, ok: bool, detail: str = "") -> bool:
    print(f"  [{'ok' if ok else 'FAIL'}] {what}{': ' + detail if detail and not ok else ''}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="rediacc-hub/env:latest")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new temp dir")
    parser.add_argument("--keep", action="store_true", help="leave both environments running")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hub-example-"))
    template = Template(
        name="default",
        image=args.image,
        command="exec ttyd --writable --interface __SERVICE_IP__ --port 7681 bash",
        docker="per-user",
        cpu="100%",
        memory="1G",
    )
    config = HubConfig(
        routes={"term": 7681},
        templates={"default": template},
        workspace_dir=workdir / "workspaces",
        state_dir=workdir / "state",
    )
    users = ["ada", "grace"]
    results = []
    with hubcontrol.embedded(config) as hub:
        try:
            started = time.monotonic()
            envs = {user: hub.ensure_running(user) for user in users}
            print(f"two environments up in {time.monotonic() - started:.1f} s")
            for user, env in envs.items():
                route = hub.snapshot().get(user)
                print(
                    f"  {user}: net {env.net_id}, term -> {route.target('term')}, {env.docker_url}"
                )

            ada, grace = envs["ada"], envs["grace"]
            code, out = in_env(ada, "docker ps --format '{{.Names}}'")
            results.append(
                check("ada's docker ps shows only her environment", out == "hub-ada", out)
            )
            code, out = in_env(
                ada, f"docker run --rm {args.image} echo hello from a nested container"
            )
            results.append(check("docker run inside ada's environment works", code == 0, out))
            code, out = in_env(ada, f"timeout 3 bash -c 'echo > /dev/tcp/{grace.service_ip}/7681'")
            results.append(check("ada cannot connect to grace's service address", code != 0, out))
            code, out = in_env(ada, f"timeout 3 bash -c 'echo > /dev/tcp/{ada.service_ip}/7681'")
            results.append(check("ada reaches her own service", code == 0, out))
            in_env(ada, "echo 'left by ada' > /workspace/note.txt")
            for row in hub.status():
                print(
                    f"  status {row.user}: {row.state}, daemon pid {row.daemon.get('pid')}, "
                    f"limits {row.daemon.get('limits')}"
                )

            hub.stop("ada")
            again = hub.ensure_running("ada")
            results.append(
                check("returning ada gets the same network ID", again.net_id == ada.net_id)
            )
            code, out = in_env(again, "cat /workspace/note.txt")
            results.append(check("and finds her file", out == "left by ada", out))
        finally:
            if not args.keep:
                for user in users:
                    hub.destroy(user, remove_data=True)
                subprocess.run(["rm", "-rf", str(workdir)], check=False)
    print("all checks passed" if all(results) else "SOME CHECKS FAILED")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
