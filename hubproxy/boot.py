"""Bring a configured hub up: session secret, control-plane thread, shared context."""

from __future__ import annotations

import logging

from hubcontrol.config import HubConfig
from hubproxy.context import HubContext
from hubproxy.runtime import ControlThread
from hubproxy.sessions import load_session_secret

log = logging.getLogger("hubproxy")


def start_control_plane(config: HubConfig, context: HubContext, hub=None) -> ControlThread:
    """Start ``Hub.run()`` in its thread and fill ``context``; returns the thread to stop later.

    ``hub`` defaults to ``hubcontrol.Hub(config)``.
    """
    secret, generated = load_session_secret(config.session_secret, config.state_dir)
    if generated:
        log.warning(
            "hub: HUB_SESSION_SECRET is not set; using the generated secret in %s/session.secret "
            "(set HUB_SESSION_SECRET when several hub processes share sessions)",
            config.state_dir,
        )
    if hub is None:
        from hubcontrol import Hub

        thread = ControlThread(factory=lambda: Hub(config))
    else:
        thread = ControlThread(hub)
    control = thread.start()
    context.setup(config, control, secret)
    return thread
