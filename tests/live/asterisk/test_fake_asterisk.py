"""The fake Asterisk's queue model (the test double must behave as chan_websocket does).

No socket or event loop, except the last test, which shows the fake closes on an oversize
message exactly as Asterisk does (a local server, no hub).
"""

from __future__ import annotations

import asyncio

from websockets.asyncio.server import ServerConnection, serve

from tests.live.asterisk.fake_asterisk import FakeAsterisk, FrameQueue


def test_fake_queue_sends_xoff_at_900_frames_and_drops_whole_messages_at_1000() -> None:
    queue = FrameQueue(frame_bytes=320)
    assert queue.push_media(b"\x01" * 320 * 899) == []
    assert queue.push_media(b"\x01" * 320) == ["MEDIA_XOFF"]
    assert queue.push_media(b"\x01" * 320 * 99) == []  # 999: still taken, whole
    assert queue.push_media(b"\x01" * 320 * 5) == [] and queue.length == 1004  # taken: the check is before
    assert queue.push_media(b"\x01" * 320) == [] and queue.dropped_messages == 1 and queue.length == 1004


def test_fake_queue_sends_xon_at_the_first_tick_below_800() -> None:
    queue = FrameQueue(frame_bytes=160)
    queue.push_media(b"\x02" * 160 * 900)
    ticks = [queue.tick()[1] for _ in range(102)]
    assert [i for i, events in enumerate(ticks) if events] == [101]
    assert ticks[101] == [("MEDIA_XON", "")] and queue.length == 798


def test_fake_queue_answers_a_mark_once_the_audio_before_it_has_played() -> None:
    queue = FrameQueue(frame_bytes=320)
    queue.push_media(b"\x05" * 320 * 150)  # 3 s of slin
    queue.push_mark("c1")
    queue.push_media(b"\x03" * 100)  # a partial frame is dropped (no START_MEDIA_BUFFERING)
    played = [queue.tick() for _ in range(151)]
    assert all(frame is not None and events == [] for frame, events in played[:150])
    assert played[150] == (None, [("MEDIA_MARK_PROCESSED", "c1")])  # 150 ticks, 3.0 s, after the first frame
    assert queue.dropped_tail_bytes == 100


def test_fake_queue_flush_drops_frames_and_marks() -> None:
    queue = FrameQueue(frame_bytes=160)
    queue.push_media(b"\x04" * 1600)
    queue.push_mark("gone")
    assert queue.flush() == ["gone"]
    assert [queue.tick() for _ in range(3)] == [(None, [])] * 3


async def test_the_fake_asterisk_closes_1009_on_a_message_over_65535_bytes() -> None:
    async def handler(conn: ServerConnection) -> None:
        await conn.recv()  # MEDIA_START
        await conn.send(b"\x00" * 65535)
        await conn.send(b"\x00" * 65536)
        await conn.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        fake = await FakeAsterisk(f"ws://127.0.0.1:{port}/", {}, codec="slin").dial()
        await asyncio.wait_for(fake.wait_closed(), 5)
    assert fake.binary_sizes == [65535]
    assert fake.close_code == 1009
