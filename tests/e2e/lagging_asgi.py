"""The hub's ASGI application with a switch that makes its event loop lag (the loop-lag guard's tests).

`GET /test/lag?ms=N` starts a task that blocks the loop for N ms at a time with short gaps
between: to the loop-lag ticker it looks like a hub with more work than its loop can carry.
`ms=0` stops it. Only tests start a hub with this application.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import parse_qs

from streamhub.asgi import application as hub

_blocker: asyncio.Task[None] | None = None


async def _block(ms: int) -> None:
    while True:
        time.sleep(ms / 1000)  # noqa: ASYNC251 -- blocks the loop on purpose, as a saturated one would
        await asyncio.sleep(0.005)


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _blocker
    if scope["type"] == "http" and scope["path"] == "/test/lag":
        ms = int(parse_qs(scope["query_string"].decode()).get("ms", ["0"])[0])
        if _blocker is not None:
            _blocker.cancel()
            _blocker = None
        if ms:
            _blocker = asyncio.get_running_loop().create_task(_block(ms))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    await hub(scope, receive, send)
