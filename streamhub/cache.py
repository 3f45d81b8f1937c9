"""The cache backend: Django's Redis cache with one client per process.

Django keeps a cache object per thread and async context (`django.core.cache.caches`), and its
Redis backend builds a client, with its own connection pool, per cache object. Under ASGI each
request is a context of its own, and so is each gateway connection in the hub (streams/live):
with the stock backend every call's upgrade and every REST request dialled Redis anew for the
failed-authentication counters (streams/throttle.py), one TCP connection each, never closed
until garbage collected. redis-py's pool is thread-safe, so one client per process serves them
all over a few pooled connections.
"""

from __future__ import annotations

import threading
from typing import Any

from django.core.cache.backends.redis import RedisCache, RedisCacheClient
from django.utils.functional import cached_property

_clients: dict[str, RedisCacheClient] = {}
_lock = threading.Lock()


class SharedRedisCache(RedisCache):
    def __init__(self, server: str | list[str], params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._client_key = repr((server, sorted(params.get("OPTIONS", {}).items())))

    @cached_property
    def _cache(self) -> RedisCacheClient:
        with _lock:
            client = _clients.get(self._client_key)
            if client is None:
                client = _clients[self._client_key] = self._new_client()
        return client

    def _new_client(self) -> RedisCacheClient:
        """Django's own client for this backend's servers and options (its `_cache`, uncached)."""
        client: RedisCacheClient = RedisCache._cache.func(self)  # type: ignore[attr-defined]
        return client
