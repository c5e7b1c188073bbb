"""The hub under ``mitmdump -s addons/hub.py``: options, configuration and the control plane.

Every ``hub start`` flag is an option ``hub_<flag>`` (``--set hub_base_domain=example.com``),
plus ``hub_labels`` and ``hub_env_file``. A bad configuration fails startup with the list of
problems; ``done`` stops the control-plane thread without stopping user environments.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from mitmproxy import ctx, exceptions

from hubcontrol import DEFAULT_LABELS_FILE, START_FLAGS, ConfigError, load_config
from hubproxy.addons import PROXY_OPTIONS
from hubproxy.context import HubContext
from hubproxy.server.startup import start_control_plane

if TYPE_CHECKING:
    from mitmproxy.addonmanager import Loader

    from hubcontrol import Hub, HubConfig

log = logging.getLogger("hubproxy")

# Flags that mitmdump itself owns (the listen port) or that name the files read here.
# not mitmdump options: the listening port is mitmdump's own (--mode), and one mitmdump is one
# process (run several yourself for more cores); `hub doctor`'s checks run before `hub start` only
_NOT_OPTIONS = ("port", "labels", "env-file", "workers", "skip-checks")


def option_name(flag: str) -> str:
    return "hub_" + flag.replace("-", "_")


class Bootstrap:
    def __init__(
        self, context: HubContext, hub_factory: Callable[[HubConfig], Hub] | None = None
    ) -> None:
        self.context = context
        self.hub_factory = hub_factory
        self.config = None
        self.thread = None

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "hub_labels", str, str(DEFAULT_LABELS_FILE), "hub.labels.yaml or compose file"
        )
        loader.add_option("hub_env_file", str, "", "env file with HUB_* variables")
        for name, spec in START_FLAGS.items():
            if name not in _NOT_OPTIONS:
                loader.add_option(option_name(name), str, "", f"hub start --{name}: {spec.help}")

    def configure(self, updated: set[str]) -> None:
        # mitmdump's Block addon refuses public client addresses by default; behind Traefik (or
        # any reverse proxy) every client may be public.
        required = {**PROXY_OPTIONS, "block_global": False}
        for key, value in required.items():
            if key in ctx.options and getattr(ctx.options, key) != value:
                ctx.options.update(**{key: value})
        if self.config is not None or not any(u.startswith("hub_") for u in updated):
            return
        flags = {
            spec.key: getattr(ctx.options, option_name(name))
            for name, spec in START_FLAGS.items()
            if name not in _NOT_OPTIONS and getattr(ctx.options, option_name(name))
        }
        try:
            self.config = load_config(
                ctx.options.hub_labels, env_file=ctx.options.hub_env_file or None, flags=flags
            )
        except ConfigError as e:
            raise exceptions.OptionsError(
                "hub: the configuration is invalid:\n  " + "\n  ".join(e.problems)
            ) from None
        except OSError as e:
            raise exceptions.OptionsError(
                f"hub: cannot read {ctx.options.hub_labels}: {e}"
            ) from None
        for warning in self.config.warnings:
            log.warning("hub: %s", warning)

    async def running(self) -> None:
        if self.config is None:
            self.configure({"hub_labels"})
        hub = self.hub_factory(self.config) if self.hub_factory else None
        self.thread = await asyncio.to_thread(start_control_plane, self.config, self.context, hub)
        log.info("hub: ready for %s", self.config.base_domain)

    def done(self) -> None:
        if self.thread is not None:
            self.thread.stop()
            self.thread = None
