"""The hub's uvicorn WebSocket protocol (streams/live/wsserver.py), served for real by uvicorn.

A small ASGI app stands in for the ingest consumer: it records what reaches it through
receive() and through the `streamhub.binary_frames` handler, so the tests can check what the
protocol promises: order, reassembly, the size limit, RFC 6455 errors, pings, direct writes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import os
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
import uvloop
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from streams.live.wsserver import FRAMES_EXTENSION, IngestWebSocketProtocol


class App:
    """Accepts, opts into the extension unless told not to, records every message."""

    def __init__(self, *, use_handler: bool = True, hold_text: float = 0.0) -> None:
        self.use_handler = use_handler
        self.hold_text = hold_text  # seconds to wait after each text message (the queue fills meanwhile)
        self.got: list[tuple[str, Any]] = []
        self.extension: dict[str, Any] | None = None
        self.closed = asyncio.Event()

    @property
    def messages(self) -> list[tuple[str, Any]]:
        return [entry for entry in self.got if entry[0] != "disconnect"]

    def handler(self, data: bytes) -> bool:
        if data == b"queue me" or data.startswith(b"QQ"):
            return False
        self.got.append(("handler", data))
        return True

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "websocket"
        self.extension = scope["extensions"].get(FRAMES_EXTENSION)
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        if self.use_handler and self.extension is not None:
            self.extension["set_binary_handler"](self.handler)
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.got.append(("disconnect", message.get("code")))
                self.closed.set()
                return
            if message.get("text") is not None:
                self.got.append(("text", message["text"]))
                if message["text"] == "echo":
                    assert self.extension is not None
                    assert self.extension["send_binary"](b"\x01\x02" * 200)
                await asyncio.sleep(self.hold_text)
            else:
                self.got.append(("receive", message["bytes"]))


@contextlib.asynccontextmanager
async def serving(app: App, max_size: int = 16 * 1024 * 1024, deflate: bool = False) -> AsyncIterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        ws=IngestWebSocketProtocol,
        ws_max_size=max_size,
        ws_per_message_deflate=deflate,
        lifespan="off",
        log_level="warning",
    )
    server = uvicorn.Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(200):
            if server.started:
                break
            await asyncio.sleep(0.02)
        yield f"ws://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def until(condition: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("deflate", [False, True], ids=["own-parser", "permessage-deflate"])
async def test_audio_frames_reach_the_handler_and_text_reaches_receive_in_order(deflate: bool) -> None:
    app = App()
    async with serving(app, deflate=deflate) as url, connect(url) as ws:
        await ws.send("meta")
        await until(lambda: ("text", "meta") in app.got)
        for i in range(5):
            await ws.send(bytes([i]) * 320)
        await ws.send(b"queue me")  # the handler declines it: it comes through receive()
        await ws.send(b"Q" * 320)  # declined too, on the one-frame-per-read path
        await ws.send("dtmf")
        await until(lambda: len(app.messages) == 9)
    assert app.extension is not None
    assert app.messages == [
        ("text", "meta"),
        *[("handler", bytes([i]) * 320) for i in range(5)],
        ("receive", b"queue me"),
        ("receive", b"Q" * 320),
        ("text", "dtmf"),
    ]


@pytest.mark.parametrize("deflate", [False, True], ids=["own-parser", "permessage-deflate"])
async def test_audio_waits_behind_a_text_message_the_app_has_not_taken(deflate: bool) -> None:
    app = App(hold_text=0.3)
    async with serving(app, deflate=deflate) as url, connect(url) as ws:
        await ws.send("first")
        await until(lambda: ("text", "first") in app.got)
        await ws.send("second")  # queued while the app still holds "first"
        await ws.send(b"a" * 320)  # must not overtake "second"
        await until(lambda: len(app.messages) == 3, timeout=10)
    assert app.messages == [("text", "first"), ("text", "second"), ("receive", b"a" * 320)]


@pytest.mark.parametrize("deflate", [False, True], ids=["own-parser", "permessage-deflate"])
async def test_fragmented_messages_are_reassembled(deflate: bool) -> None:
    app = App()
    async with serving(app, deflate=deflate) as url, connect(url) as ws:
        await ws.send([b"ab", b"cd", b"ef"])
        await ws.send(["hel", "lo"])
        await until(lambda: len(app.messages) == 2)
    assert app.messages == [("handler", b"abcdef"), ("text", "hello")]


async def test_without_the_handler_everything_comes_through_receive() -> None:
    app = App(use_handler=False)
    async with serving(app) as url, connect(url) as ws:
        await ws.send(b"x" * 320)
        await ws.send("t")
        await until(lambda: len(app.messages) == 2)
    assert app.messages == [("receive", b"x" * 320), ("text", "t")]


async def test_send_binary_writes_a_frame_at_once() -> None:
    app = App()
    async with serving(app) as url, connect(url) as ws:
        await ws.send("echo")
        assert await asyncio.wait_for(ws.recv(), 5) == b"\x01\x02" * 200


async def test_pings_are_answered() -> None:
    app = App()
    async with serving(app) as url, connect(url) as ws:
        await ws.send(b"a" * 10)
        pong = await ws.ping(b"hi")
        await asyncio.wait_for(pong, 5)
        await ws.send(b"b" * 10)
        await until(lambda: len(app.messages) == 2)
    assert app.messages == [("handler", b"a" * 10), ("handler", b"b" * 10)]


@pytest.mark.parametrize("fragmented", [False, True])
async def test_a_message_over_the_size_limit_closes_with_1009(fragmented: bool) -> None:
    app = App()
    async with serving(app, max_size=1000) as url, connect(url, max_size=None) as ws:
        await ws.send([b"a" * 600, b"b" * 600] if fragmented else b"a" * 1200)
        with pytest.raises(ConnectionClosed) as caught:
            await asyncio.wait_for(ws.recv(), 5)
        await asyncio.wait_for(app.closed.wait(), 5)
    assert caught.value.rcvd is not None and caught.value.rcvd.code == 1009
    assert app.got == [("disconnect", 1009)]


async def test_invalid_utf8_text_closes_with_1007() -> None:
    app = App()
    async with serving(app) as url:
        reply = await raw_frames(url, [frame(0x81, b"\xff\xfe")])
    assert reply[0] == 0x88 and struct.unpack("!H", reply[2:4])[0] == 1007


async def test_an_unmasked_frame_closes_with_1002() -> None:
    app = App()
    async with serving(app) as url:
        reply = await raw_frames(url, [bytes((0x82, 3)) + b"abc"])
    assert reply[0] == 0x88 and struct.unpack("!H", reply[2:4])[0] == 1002
    await asyncio.wait_for(app.closed.wait(), 5)
    assert app.got == [("disconnect", 1002)]


async def test_frames_split_across_reads_and_reads_holding_many_frames() -> None:
    app = App()
    async with serving(app) as url:
        data = b"".join(frame(0x82, bytes([i]) * 320) for i in range(4))
        pieces = [data[:3], data[3:700], data[700:701], data[701:]]  # a header split, frames split and joined
        await raw_frames(url, pieces, expect_close=False)
        await until(lambda: len(app.messages) == 4)
    assert app.messages == [("handler", bytes([i]) * 320) for i in range(4)]


def frame(b0: int, payload: bytes) -> bytes:
    """A masked client frame."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes((b0, 0x80 | n)) if n < 126 else bytes((b0, 0x80 | 126)) + struct.pack("!H", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def raw_frames(url: str, pieces: list[bytes], *, expect_close: bool = True) -> bytes:
    """Upgrade by hand, write `pieces` one by one; the server's first frame after the 101 (if any)."""
    port = int(url.rsplit(":", 1)[1].strip("/"))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101")
    for piece in pieces:
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.02)
    reply = b""
    if expect_close:
        reply = await asyncio.wait_for(reader.read(200), 5)
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return reply


class Refusing(App):
    """Closes at once with an application code, as the ingest consumer refuses a call."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4503})
        self.closed.set()


def protocols_in_garbage() -> int:
    """Collects, keeping the garbage to look at: how many of our protocols only the collector freed."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return sum(1 for obj in gc.garbage if isinstance(obj, IngestWebSocketProtocol))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


class Many:
    """One server, many connections, each served by a new app of the given kind."""

    def __init__(self, make_app: Any) -> None:
        self.make_app = make_app
        self.apps: list[App] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        app = self.make_app()
        self.apps.append(app)
        await app(scope, receive, send)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("make_app", [App, Refusing], ids=["hung-up-by-the-client", "refused-by-the-app"])
def test_an_ended_connection_is_freed_by_reference_counting(make_app: Any, loop: str) -> None:
    # Each connection the collector has to find costs a pause later: at a few hundred calls
    # a process carries, one generation-1 collection scanned 140,000 objects for ~100 ms
    # (bench/RESULTS.md). So a connection, once closed and its app done, is no cycle.
    async def calls() -> int:
        many = Many(make_app)
        async with serving(many) as url:  # type: ignore[arg-type]
            gc.collect()
            for n in range(1, 6):
                with contextlib.suppress(ConnectionClosed):
                    async with connect(url) as ws:
                        await ws.send("meta")
                        await ws.send(b"a" * 320)
                        if make_app is App:
                            await until(lambda n=n: len(many.apps) == n and len(many.apps[-1].got) == 2)
                await until(lambda n=n: len(many.apps) == n and many.apps[-1].closed.is_set())
            await asyncio.sleep(0.1)  # the server's side of the last close
            return protocols_in_garbage()

    runner = uvloop.run if loop == "uvloop" else asyncio.run
    assert runner(calls()) == 0
