"""The per-user policy socket: the ``/var/run/docker.sock`` an environment sees.

One small long-lived process per user (``python -m hubcontrol.policysocket``), started by the hub
right after the user's dockerd and stopped with it (the hub's side: ``hubcontrol.policysockets``).
It does not run inside the hub process on purpose: users' open ``docker exec -it``, ``attach`` and
``logs -f`` sessions run through this socket, and a separate process keeps them alive across hub
restarts (docs/security.md, "The policy socket").

This package is that process and nothing else, and it stays small: it imports anyio, the policy
(``hubcontrol.dockerpolicy``), the mount helpers and, once it has a refusal to record, the audit
log; never docker-py, httpx, yaml or the Hub (``hubcontrol/__init__.py`` imports lazily, so
``python -m`` loads no more than this).

- ``http1``: strict HTTP/1.1 request heads and chunked framing, refusals as Docker errors;
- ``server``: ``PolicySocket``, one client connection and its own upstream connection each;
- ``pins``: allowed bind sources pinned by descriptor, so a symlink swapped in later never leads
  out of the workspace;
- ``bindroot``: the no-symlink view of the workspace that containers of earlier versions use;
- ``__main__``: the command line the hub starts it with.
"""
