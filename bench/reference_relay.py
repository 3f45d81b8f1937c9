"""The reference: a minimal relay in plain asyncio + websockets, no Django.

It does the hub's per-frame work as cheaply as plain Python allows: the hub's own `media`
template (streams.core.plivo.MediaTemplate: constants baked in, one f-string) and pybase64,
per-stream sequence/chunk/timestamp, one `await send()` per frame. So the hub/reference ratio
measures the hub's stack (Django, Channels, the session, the relay, the servers' WebSocket
code), not a JSON encoder.
Usage: python bench/reference_relay.py PORT
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
import time
import uuid
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from streams.core.plivo import MediaTemplate, start_message  # pure: no Django

# wss:// customers: the CA bundle the hub is given (STREAMHUB_CUSTOMER_CA_BUNDLE)
CA = os.environ.get("STREAMHUB_CUSTOMER_CA_BUNDLE") or None


async def handle(gateway: ServerConnection) -> None:
    meta = json.loads(await gateway.recv())
    url = meta["streams"][0]["serviceUrl"]
    stream_id, call_id = str(uuid.uuid4()), str(uuid.uuid4())
    render = MediaTemplate(stream_id, "").render
    tls = ssl.create_default_context(cafile=CA) if url.startswith("wss:") else None
    async with connect(url, compression=None, max_size=None, ssl=tls) as customer:
        await customer.send(
            start_message(
                call_id=call_id,
                stream_id=stream_id,
                account_id="MA0",
                tracks=["inbound"],
                encoding="audio/x-l16",
                sample_rate=8000,
                extra_headers="",
            )
        )
        send = customer.send
        seq, chunk, start_ms = 1, 0, int(time.time() * 1000)
        async for frame in gateway:
            if isinstance(frame, str):
                continue
            seq += 1
            chunk += 1
            await send(render(seq, "inbound", start_ms + 20 * (chunk - 1), chunk, frame))


async def main(port: int) -> None:
    async with serve(handle, "127.0.0.1", port, compression=None, max_size=None):
        await asyncio.Future()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main(int(sys.argv[1])))
    except ImportError:
        asyncio.run(main(int(sys.argv[1])))
