"""Running a short container and reading what it printed, without docker-py's log race.

``docker.containers.run(..., remove=True)`` follows the container's logs from the moment it
starts and joins the stream only after the container has exited and been removed. On a loaded
machine that stream can come back empty although the command printed (CI saw ``''`` where a
``cat`` had succeeded; docker/docker-py#2427). Here the output is read once the container has
exited, from its finished log, and the container is removed afterwards.
"""

from __future__ import annotations

from typing import Any

import docker
from docker.errors import ContainerError


def run_output(client: docker.DockerClient, image: str, command: Any, **kwargs: Any) -> bytes:
    """What ``command`` printed on stdout in a new container of ``image``; ContainerError (with
    its stderr) when it exits non-zero, as ``containers.run`` raises."""
    container = client.containers.run(image, command, detach=True, **kwargs)
    try:
        status = container.wait(timeout=120)["StatusCode"]
        if status != 0:
            err = container.logs(stdout=False, stderr=True)
            raise ContainerError(container, status, command, image, err)
        return container.logs(stdout=True, stderr=False)
    finally:
        container.remove(force=True)
