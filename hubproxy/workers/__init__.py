"""``hub start --workers N``: the processes that share the hub's port, and the link between them.

Worker 0 is the ``hub start`` process (it owns the control plane); it runs ``WorkerPool`` and
``WorkerIngress`` and spawns workers 1..N-1 as ``python -O -m hubproxy.workers``. Each of those
runs ``Worker`` with a ``RemoteControlPlane`` and ``Forwarder`` as its first addon.

- ``link.py``: the link's messages and pure decisions (both sides);
- ``workerpool.py``: ``WorkerPool`` (spawn, feed, restart, stop) and ``FleetMetrics``;
- ``workeringress.py``: ``WorkerIngress``, worker 0's trust check for forwarded requests;
- ``worker.py`` (``__main__.py``): one worker process and its ``RemoteControlPlane``;
- ``forwarder.py``: ``Forwarder``, a worker's first addon (``/_hub/`` requests go to worker 0).

docs/performance.md ("Using every core") has the design and its measurements.
"""
