"""Bring a configured hub up: session secret, control-plane thread, shared context, proxy."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from hubcontrol import ConfigError, Hub, HubConfig, HubError
from hubproxy.addons.adminapi import ensure_admin_token
from hubproxy.auth.sessionstore import load_session_secret
from hubproxy.context import HubContext
from hubproxy.server.controlthread import ControlThread

log = logging.getLogger("hubproxy")


def start_control_plane(
    config: HubConfig, context: HubContext, hub: Hub | None = None
) -> ControlThread:
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
        thread = ControlThread(factory=lambda: Hub(config))
    else:
        thread = ControlThread(hub)
    control = thread.start()
    context.setup(config, control, secret)
    # before the proxy listens: `hub status` run as soon as the port answers finds the token
    # (the admin API's own hook made it only once mitmproxy had started its addons)
    ensure_admin_token(config.state_dir)
    return thread


def check_workers(config: HubConfig) -> None:
    """Refuse ``config.workers`` > 1 that cannot run (call before starting anything): a state
    dir too long for the link's socket (ConfigError), a port something already listens on
    (HubError: with SO_REUSEPORT the two would silently share it)."""
    if config.workers > 1:
        from hubproxy.workers.link import link_path, port_taken

        try:
            link_path(config.state_dir)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if (e := port_taken(config.port)) is not None:
            raise HubError(
                f"--port={config.port} is in use ({e.strerror or e}); is another hub running?",
                f"port {config.port} probe: {e!r}",
            )


def run_proxy(
    config: HubConfig, context: HubContext, thread: ControlThread, start_args: Sequence[str] = ()
) -> None:
    """Proxy on ``config.port`` until SIGTERM/SIGINT or the control plane ends (``hub start``).

    With ``config.workers`` > 1 this process is worker 0 and keeps the other workers running
    (hubproxy/workers/); they read the same ``start_args`` (the ``hub start`` flags). One worker
    is exactly the single-process hub: no extra process, socket option or link. Raises
    ConfigError when the workers cannot be run as configured.
    """
    from hubproxy.server.master import run_loop, serve

    if config.workers > 1:
        from hubproxy.workers.workerpool import serve_with_workers

        check_workers(config)

        run_loop(
            serve_with_workers(context, config, start_args, stop_when=thread.run_future),
            port=config.port,
            reuse_port=True,
        )
    else:
        run_loop(serve(context, config.port, stop_when=thread.run_future), port=config.port)
