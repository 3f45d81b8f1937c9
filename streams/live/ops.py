"""The process-wide tasks of a hub server, started on its first connection.

The ASGI application runs with no lifespan protocol (Channels' router has none), so
`instrument` wraps it and starts, once, on the first HTTP request or WebSocket: the
loop-lag ticker, the metrics sampler, the live-snapshot publisher, and the database
executor whose queue /metrics reads. The wrapper costs one attribute test per connection,
nothing per frame.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from streams.live import looplag, metrics, snapshot

Asgi = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
_tasks: set[asyncio.Task[None]] = set()


def start() -> None:
    """Start this process's background tasks on the running loop (idempotent)."""
    looplag.ensure_ticker()
    if _tasks:
        return
    loop = asyncio.get_running_loop()
    metrics.own_db_executor(loop)
    for coro in (metrics.sample_forever(), snapshot.publish_forever()):
        _tasks.add(loop.create_task(coro))


def instrument(app: Asgi) -> Asgi:
    started = False

    async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal started
        if not started:
            started = True
            start()
        await app(scope, receive, send)

    return application
