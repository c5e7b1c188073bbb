"""Whether the tests run in CI, where a missing requirement is a failure rather than a skip."""

from __future__ import annotations

import os

IN_CI = os.environ.get("CI", "").lower() == "true"
