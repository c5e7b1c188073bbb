"""Fixtures shared by the tests in tests/security/."""

from __future__ import annotations

import contextlib

import docker
import pytest

from tests.security.policyhub import cli_rootfs_tar
from tests.support.hubcore import HOST_SOCKET, unique_user


@pytest.fixture(scope="module")
def image():
    client = docker.DockerClient(base_url=f"unix://{HOST_SOCKET}", version="1.41", timeout=300)
    ref = f"hub-test/policy-env:{unique_user('t')}"
    repository, tag = ref.split(":")
    client.api.import_image_from_data(cli_rootfs_tar(), repository=repository, tag=tag)
    try:
        yield ref
    finally:
        with contextlib.suppress(docker.errors.DockerException):
            client.images.remove(ref, force=True)
        client.close()
