"""hubproxy: the hub's request path, as mitmproxy addons, and the proxy process around them.

- ``addons/``: one addon per file, named after its class, and the pipeline order (``hub_addons``);
- ``auth/``: cookies, OAuth state, CSRF, identities, the session store (pure, no addons);
- ``web/``: the pages, JSON answers, dashboard page and OpenAPI document the hub renders;
- ``server/``: bringing a hub up, the lean mitmproxy master, the control-plane thread;
- ``workers/``: ``hub start --workers N``, the processes sharing the port and their link;
- ``context.py``: ``HubContext`` and ``ControlPlane``, what every addon shares (the seam to
  ``hubcontrol``); ``guard.py``: ``fail_closed``; ``hosts.py``: Host and path decisions (pure).

Imports run ``addons/`` (the mitmdump script) -> ``hubproxy`` -> ``hubcontrol``; inside,
``addons`` and ``workers`` use ``auth``, ``web``, ``hosts``, ``guard`` and ``context``, never the
other way (docs/architecture.md).
"""
