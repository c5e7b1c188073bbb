"""Making a template image available in a user's daemon.

Order: already there; else transferred from the host daemon (``--docker-socket``) when it has the
image, streamed ``save | load`` so a large image is never held in memory; else pulled (which works
against a registry, local or remote). An ImageError names the image and every way that failed.
"""

from __future__ import annotations

import logging

import docker
import docker.errors

from hubcontrol.errors import ImageError

log = logging.getLogger(__name__)

CHUNK = 1 << 20


def has_image(client: docker.DockerClient, image: str) -> bool:
    try:
        client.images.get(image)
        return True
    except docker.errors.ImageNotFound:
        return False


def transfer(source: docker.DockerClient, target: docker.DockerClient, image: str) -> None:
    """Stream ``image`` from ``source`` to ``target`` (docker save | docker load)."""
    stream = source.api.get_image(image, chunk_size=CHUNK)
    try:
        # the answer is a stream of progress messages: read it to the end, so the load has
        # finished, its errors are seen and the connection is released
        for message in target.api.load_image(stream, quiet=True):
            error = message.get("error") or (message.get("errorDetail") or {}).get("message")
            if error:
                raise ImageError(
                    f"The image {image} could not be loaded into your daemon.",
                    f"docker load of {image}: {error}",
                )
    finally:
        stream.close()
    if not has_image(target, image):
        raise ImageError(
            f"The image {image} could not be loaded into your daemon.",
            f"docker load of {image} reported success but the image is missing",
        )


def ensure_image(target: docker.DockerClient, image: str, host: docker.DockerClient | None) -> str:
    """Make ``image`` available in ``target``; returns how: "present", "transfer" or "pull"."""
    if has_image(target, image):
        return "present"
    failures = []
    if host is not None:
        try:
            if has_image(host, image):
                transfer(host, target, image)
                return "transfer"
            failures.append("not in the host daemon")
        except (docker.errors.DockerException, ImageError) as e:
            failures.append(f"transfer from the host daemon failed: {e}")
    try:
        target.images.pull(image)  # docker-py splits the tag; a bare name means :latest
        if has_image(target, image):
            return "pull"
        failures.append("pull finished without the image")
    except docker.errors.DockerException as e:
        failures.append(f"pull failed: {e}")
    raise ImageError(
        f"The environment image {image} is not available; ask the operator to build or push it.",
        f"image {image}: " + "; ".join(failures),
    )
