"""``hub start`` with tests.support.proxyharness's ``StubHub`` as its control plane, as a real process.

    python -O -m tests.hubproxy.workerhub --labels L --env-file E --port=P --workers=2 ...

Everything after the control plane is ``hub start``'s own code path
(``hubproxy.server.startup.run_proxy``: worker 0, the real ``python -O -m hubproxy.workers``
children, ``SO_REUSEPORT``, the link); only the Hub is the stub, which "starts" a user by pointing
their route at an echo server (``STUB_ADDRESSES``, comma-separated, one per new user). Each ``touch`` is appended as a JSON
line to ``STUB_TOUCHES`` so the test can see activity that workers reported to worker 0.
"""

from __future__ import annotations

import json
import logging
import os
import sys

from hubcontrol.config import load_config, parse_start_flags
from hubproxy.context import HubContext
from hubproxy.server.startup import run_proxy, start_control_plane
from tests.support.proxyharness import StubHub


class FileStubHub(StubHub):
    def touch(self, user, kind="http"):
        super().touch(user, kind)
        with open(os.environ["STUB_TOUCHES"], "a") as f:
            f.write(json.dumps([user, kind, os.getpid()]) + "\n")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    flags = parse_start_flags(sys.argv[1:])
    labels = flags.pop("labels")
    env_file = flags.pop("env_file", None)
    config = load_config(labels, env_file=env_file, flags=flags)
    ports = dict(config.routes)
    hub = FileStubHub(os.environ["STUB_ADDRESSES"].split(","), ports, start_delay=0.3)
    context = HubContext()
    thread = start_control_plane(config, context, hub=hub)
    try:
        run_proxy(config, context, thread, sys.argv[1:])
    finally:
        thread.stop()


if __name__ == "__main__":
    main()
