"""Fixtures shared by the tests in tests/security/."""

from __future__ import annotations

import pytest

from tests.security.policyhub import cli_rootfs_tar
from tests.support.hubcore import host_test_image


@pytest.fixture(scope="module")
def image():
    with host_test_image("hub-test/policy-env", cli_rootfs_tar, timeout=300) as ref:
        yield ref
