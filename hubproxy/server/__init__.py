"""The proxy process: bringing a hub up, the lean mitmproxy master, the control thread.

- ``startup.py``: session secret, control thread and context, then the proxy (``hub start``);
- ``controlthread.py``: ``ControlThread`` (the ``Hub`` on an anyio loop in its own thread) and
  ``EmbeddedControlPlane``, the addons' ``ControlPlane`` over it;
- ``master.py``: the lean embedded mitmproxy ``Master`` and its ``SO_REUSEPORT`` event loop;
- ``dispatch.py``: ``CachedAddonManager``, hook handlers looked up once per hook name;
- ``pyopt.py``: ``hub start`` re-executes itself under ``python -O``.
"""
