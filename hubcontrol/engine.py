"""Docker engine access: docker-py clients per daemon, called from worker threads.

docker-py is blocking. Every call the hub makes goes through ``Engine.call`` (``anyio.to_thread``
with one shared ``CapacityLimiter``), so the event loop never blocks and a burst of logins cannot
start an unbounded number of threads.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import docker
from docker.models.containers import Container

T = TypeVar("T")

DEFAULT_THREADS = 16
API_TIMEOUT = 120


class Engine:
    """docker-py clients keyed by socket URL, and a limiter for the threads that use them."""

    def __init__(self, threads: int = DEFAULT_THREADS) -> None:
        self.limiter = anyio.CapacityLimiter(threads)
        self._clients: dict[str, docker.DockerClient] = {}
        self._lock = threading.Lock()

    def client(self, url: str) -> docker.DockerClient:
        """The (cached) client for ``url`` ("unix:///path" or a path)."""
        if url.startswith("/"):
            url = f"unix://{url}"
        with self._lock:
            client = self._clients.get(url)
            if client is None:
                client = docker.DockerClient(base_url=url, version="1.41", timeout=API_TIMEOUT)
                self._clients[url] = client
            return client

    def forget(self, url: str) -> None:
        """Close the client of a daemon that stopped (its connections are dead)."""
        if url.startswith("/"):
            url = f"unix://{url}"
        with self._lock:
            client = self._clients.pop(url, None)
        if client is not None:
            client.close()

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking function in a worker thread (cancellation waits for it to finish)."""
        return await anyio.to_thread.run_sync(
            functools.partial(fn, *args, **kwargs), limiter=self.limiter
        )

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()


def id_of(container: Container) -> str:
    """The ID of a container its daemon described (docker-py types ``id`` Optional, for models
    made without attributes; one from ``containers.get`` or ``list`` always has it)."""
    if container.id is None:
        raise TypeError(f"container {container.name} came back from its daemon without an ID")
    return container.id
