"""The reference: a minimal relay in plain asyncio + websockets, no Django.

It does the same per-frame work as the hub (JSON `media` message, base64 payload,
per-stream sequence/chunk/timestamp) so that the hub's cost can be compared with it.
Usage: python bench/reference_relay.py PORT
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
import uuid
from functools import partial

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

dumps = partial(json.dumps, separators=(",", ":"))


async def handle(gateway: ServerConnection) -> None:
    meta = json.loads(await gateway.recv())
    url = meta["streams"][0]["serviceUrl"]
    stream_id, call_id = str(uuid.uuid4()), str(uuid.uuid4())
    async with connect(url, compression=None, max_size=None) as customer:
        await customer.send(
            dumps(
                {
                    "event": "start",
                    "sequenceNumber": 1,
                    "start": {
                        "callId": call_id,
                        "streamId": stream_id,
                        "accountId": "MA0",
                        "tracks": ["inbound"],
                        "mediaFormat": {"encoding": "audio/x-l16", "sampleRate": 8000},
                    },
                    "extra_headers": "",
                }
            )
        )
        seq, chunk, start_ms = 1, 0, int(time.time() * 1000)
        async for frame in gateway:
            if isinstance(frame, str):
                continue
            seq += 1
            chunk += 1
            await customer.send(
                dumps(
                    {
                        "event": "media",
                        "sequenceNumber": seq,
                        "streamId": stream_id,
                        "media": {
                            "track": "inbound",
                            "timestamp": str(start_ms + 20 * (chunk - 1)),
                            "chunk": chunk,
                            "payload": base64.b64encode(frame).decode(),
                        },
                        "extra_headers": "",
                    }
                )
            )


async def main(port: int) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    async with serve(handle, "127.0.0.1", port, compression=None, max_size=None):
        await asyncio.Future()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main(int(sys.argv[1])))
    except ImportError:
        asyncio.run(main(int(sys.argv[1])))
