"""Helpers shared by the tests/live/asterisk suites: customer variants and stream-log reads."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import ServerConnection

from streams.models import Stream, StreamEvent
from tests.support import Customer, db, eventually


def payloads(customer: Customer, track: str = "inbound") -> list[bytes]:
    return [base64.b64decode(m["media"]["payload"]) for m in customer.events("media") if m["media"]["track"] == track]


def spoken(frames: list[bytes], silent: bytes = b"\x00" * 320) -> bytes:
    """The frames that are not the hub's gap-filling silence (test audio never has a silent frame)."""
    return b"".join(f for f in frames if f != silent)


def stream_rows(**filters: object) -> list[Stream]:
    return list(Stream.objects.filter(**filters).select_related("call").order_by("created_at"))


def events_of(stream: Stream) -> list[tuple[str, str, dict[str, Any]]]:
    return list(StreamEvent.objects.filter(stream=stream).values_list("event", "error", "params"))


async def ended_stream(**filters: object) -> Stream:
    rows: list[Stream] = await eventually(
        db(lambda: [s for s in stream_rows(**filters) if s.end_time is not None]), timeout=15
    )
    return rows[0]


def play(pcm: bytes, content_type: str = "audio/x-l16", rate: int = 8000) -> str:
    media = {"contentType": content_type, "sampleRate": rate, "payload": base64.b64encode(pcm).decode()}
    return json.dumps({"event": "playAudio", "media": media})


def checkpoint(name: str) -> str:
    return json.dumps({"event": "checkpoint", "name": name})


def on_start(*messages: str, keep: dict[str, ServerConnection] | None = None) -> Callable[..., Any]:
    """A customer reply: send these messages as soon as `start` arrives (and keep the socket)."""

    async def reply(conn: ServerConnection, message: dict[str, Any]) -> None:
        if message["event"] == "start":
            if keep is not None:
                keep["conn"] = conn
            for text in messages:
                await conn.send(text)

    return reply


class StuckCustomer(Customer):
    """A customer that never reads. Its socket is paused, so it never notices the hub's abort and
    websockets' server.close() would wait its 10 s close timeout on it: cut it at the end instead."""

    async def __aexit__(self, *exc: object) -> None:
        for conn in self.ws:
            conn.transport.abort()
        await super().__aexit__(*exc)
