"""``hub start [flags]``: run the hub (proxy and control plane) in this process.

The seed's command line: ``hub start --docker-socket=... --network-id=... --port=7112
--base-domain=... --workspace-dir=... --idle-timeout=30m --checkpoint``, plus ``--labels FILE``
(a compose file or a hub.labels.yaml; default /etc/rediacc/hub/hub.labels.yaml) and
``--env-file FILE``. Flags are parsed by ``hubcontrol.config`` so ``hub start``, ``hub install``
and ``hub config check`` read a command line the same way.
"""

from __future__ import annotations

import faulthandler
import logging
import signal

import typer

from hubcli.commands.doctor import precheck
from hubcli.exitcodes import EXIT_FAILURE, EXIT_USAGE
from hubcli.output import print_error, print_problems, print_warning
from hubcontrol.config import DEFAULT_LABELS_FILE, START_FLAGS, load_config, parse_start_flags
from hubcontrol.errors import ConfigError, HubError
from hubcontrol.text import install_log_formatter

log = logging.getLogger("hubproxy")

_FLAGS_HELP = "\n\n".join(f"--{name}: {spec.help}" for name, spec in START_FLAGS.items())


def start(ctx: typer.Context) -> None:
    """Run the hub: OAuth login, per-user routing and the control plane, on --port (7112).

    SIGTERM or Ctrl-C stop the hub; user environments keep running and the next start picks
    them up. --workers N (or HUB_WORKERS) runs N proxy processes on the port; this one also runs
    the control plane. The host is checked first as `hub doctor` does: a failed check stops the
    start with exit status 6 (--skip-checks starts anyway). Exit status 2 means the
    configuration is invalid (every problem is printed).
    """
    from hubproxy.server.pyopt import reexec_optimized

    reexec_optimized()  # mitmproxy's debug-only checks off (hubproxy/server/pyopt.py)
    try:
        flags = parse_start_flags(list(ctx.args))
    except ConfigError as e:
        print_problems(e.problems)
        raise typer.Exit(EXIT_USAGE) from None
    labels = flags.pop("labels", None) or str(DEFAULT_LABELS_FILE)
    env_file = flags.pop("env_file", None) or None
    skip_checks = bool(flags.pop("skip_checks", False))
    try:
        config = load_config(labels, env_file=env_file, flags=flags)
    except ConfigError as e:
        print_problems(e.problems)
        raise typer.Exit(EXIT_USAGE) from None
    except OSError as e:
        print_error(f"--labels {labels}: {e.strerror or e}")
        raise typer.Exit(EXIT_USAGE) from None
    for warning in config.warnings:
        print_warning(warning)
    if skip_checks:
        print_warning("--skip-checks: the host's prerequisites were not checked (hub doctor)")
    else:
        precheck(config, "hub start")
    from hubproxy.server.startup import check_workers, run_proxy, start_control_plane

    try:
        check_workers(config)
    except ConfigError as e:
        print_problems(e.problems)
        raise typer.Exit(EXIT_USAGE) from None
    except HubError as e:
        print_error(e.user_message)
        raise typer.Exit(EXIT_FAILURE) from None
    # `kill -USR1 <pid>` writes every thread's stack to stderr: what a stuck hub is waiting on.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    log_format = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.INFO, format=log_format)
    # usernames, commands and docker messages in log lines: shown, never interpreted
    install_log_formatter(log_format)
    # per-connection chatter (client connect/disconnect) belongs to debug logs
    for noisy in ("httpx", "httpcore", "mitmproxy.proxy.server"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from hubproxy.context import HubContext
    from hubproxy.server.priority import session_first

    session_first()  # the hub's session ahead of other sessions on the CPU (autogroups)
    context = HubContext()
    try:
        thread = start_control_plane(config, context)
    except ConfigError as e:
        print_problems(e.problems)
        raise typer.Exit(EXIT_USAGE) from None
    except HubError as e:
        log.error("hub: the control plane did not start: %s", e.log_message)
        print_error(e.user_message)
        raise typer.Exit(EXIT_FAILURE) from None
    try:
        run_proxy(config, context, thread, list(ctx.args))
    finally:
        thread.stop()
    failure = thread.failure()
    if failure is not None:
        print_error(f"the control plane failed: {failure}")
        raise typer.Exit(EXIT_FAILURE)


def register(app: typer.Typer) -> None:
    app.command(
        "start",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        epilog="Flags:\n\n" + _FLAGS_HELP,
    )(start)
