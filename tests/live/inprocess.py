"""The hub served in the test's own process: uvicorn with the hub's WebSocket protocol and the
real consumers, as the README runs it in production, so a test can look inside it (the garbage
collector, which path a frame took)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import socket
from collections.abc import AsyncIterator

import uvicorn
from channels.routing import ProtocolTypeRouter, URLRouter

from streams.live.routing import websocket_urlpatterns
from streams.live.wsserver import IngestWebSocketProtocol
from tests.support import eventually


@contextlib.asynccontextmanager
async def hub_in_process() -> AsyncIterator[str]:
    """Serves the ingest routes on a free port; yields their base URL (ws://…/ingest)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = ProtocolTypeRouter({"websocket": URLRouter(websocket_urlpatterns)})
    config = uvicorn.Config(app, ws=IngestWebSocketProtocol, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    # a fresh context, as in a hub process: nothing this test's context holds (Django's per-context
    # database connections and caches) is inherited by the connections' tasks
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]), context=contextvars.Context())
    try:
        await eventually(lambda: server.started)
        yield f"ws://127.0.0.1:{port}/ingest"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
