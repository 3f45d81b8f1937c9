"""The ceiling: the reference relay written on picows (Cython WebSockets) for both sides.

The same per-frame work as bench/reference_relay.py (the hub's `media` template and
pybase64, per-stream sequence/chunk/timestamp), but the gateway socket is served by picows
and each customer is a picows client: frames are parsed and framed in C, and a BINARY frame
becomes a `media` message in the server's callback (no queue, no task wake-up, no await).
It is not a hub (no database, no REST, no buffer accounting): it shows what Python can reach
on this machine, and bench/run.py reports the hub against it.
Usage: python bench/picows_relay.py PORT
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import sys
import time
import uuid
from pathlib import Path

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect, ws_create_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from streams.core.plivo import MediaTemplate, start_message  # pure: no Django

TEXT, BINARY, CLOSE = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CLOSE
CA = os.environ.get("STREAMHUB_CUSTOMER_CA_BUNDLE") or None


class Customer(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()


class Gateway(WSListener):
    def __init__(self) -> None:
        self.customer: WSTransport | None = None
        self.pending: list[bytes] | None = []
        self.task: asyncio.Task[None] | None = None
        self.stream_id = str(uuid.uuid4())
        self.render = MediaTemplate(self.stream_id, "").render
        self.seq, self.chunk, self.start_ms = 1, 0, 0

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is BINARY:
            if self.customer is not None:
                self.seq += 1
                chunk = self.chunk = self.chunk + 1
                pcm = frame.get_payload_as_bytes()
                self.customer.send(TEXT, self.render(self.seq, "inbound", self.start_ms + 20 * (chunk - 1), chunk, pcm))
            elif self.pending is not None:
                self.pending.append(frame.get_payload_as_bytes())
        elif kind is TEXT and self.task is None:
            url = json.loads(frame.get_payload_as_utf8_text())["streams"][0]["serviceUrl"]
            self.task = asyncio.get_running_loop().create_task(self.connect(url))
        elif kind is CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()

    async def connect(self, url: str) -> None:
        tls = ssl.create_default_context(cafile=CA) if url.startswith("wss:") else None
        customer, _ = await ws_connect(Customer, url, ssl_context=tls, max_frame_size=16 << 20)
        customer.send(
            TEXT,
            start_message(
                call_id=str(uuid.uuid4()),
                stream_id=self.stream_id,
                account_id="MA0",
                tracks=["inbound"],
                encoding="audio/x-l16",
                sample_rate=8000,
                extra_headers="",
            ),
        )
        self.start_ms = int(time.time() * 1000)
        self.customer = customer
        for pcm in self.pending or ():
            self.seq += 1
            chunk = self.chunk = self.chunk + 1
            customer.send(TEXT, self.render(self.seq, "inbound", self.start_ms + 20 * (chunk - 1), chunk, pcm))
        self.pending = None

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.customer is not None:
            self.customer.send_close(WSCloseCode.OK, b"call ended")
            self.customer.disconnect()
        elif self.task is not None:
            self.task.cancel()


async def main(port: int) -> None:
    server = await ws_create_server(lambda request: Gateway(), "127.0.0.1", port, backlog=4096)
    async with server:
        await asyncio.Future()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    import uvloop

    uvloop.run(main(int(sys.argv[1])))
