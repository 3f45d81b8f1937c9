"""Under the hub's own WebSocket protocol (uvicorn, as the README runs it) a call's audio takes
the frame extension both ways, for both gateway framings: each caller frame goes from the
server's read straight to the session, each playback frame straight to the socket, with no ASGI
message and no await per frame (streams/live/wsserver.py). daphne has no extension: there every
frame takes the ASGI path, and the acceptance suites run both servers.

The consumer's ASGI paths are wrapped to count the audio that took them; once the call is set
up, none may.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

import pytest

from streams.live.asterisk import AsteriskConsumer
from streams.live.audiofork import AudioForkConsumer
from streams.live.ingest import IngestConsumer
from streams.models import Account
from tests.conftest import Proc
from tests.live.asterisk.drivers import DRIVERS, make_driver
from tests.live.asterisk.support import on_start, payloads, play, spoken
from tests.live.inprocess import hub_in_process
from tests.support import Customer, eventually, ramp

pytestmark = [pytest.mark.django_db(transaction=True)]

CLIP = ramp(8000)  # 1 s the customer plays
SPEECH = ramp(160 * 50, start=3)  # 1 s the caller says (no all-zero frame: see `spoken`)
CONSUMERS: dict[str, type[IngestConsumer]] = {"audio-fork": AudioForkConsumer, "asterisk": AsteriskConsumer}


def count_asgi_audio(monkeypatch: pytest.MonkeyPatch, consumer: type[IngestConsumer]) -> dict[str, int]:
    """Counts the BINARY messages `consumer` gets through websocket_receive and sends through
    the ASGI send (the paths the extension bypasses)."""
    seen = {"received": 0, "sent": 0}
    receive: Callable[..., Any] = consumer.websocket_receive
    send: Callable[..., Any] = consumer.send

    async def counting_receive(self: IngestConsumer, message: dict[str, Any]) -> None:
        seen["received"] += message.get("bytes") is not None
        await receive(self, message)

    async def counting_send(self: IngestConsumer, text_data: Any = None, bytes_data: Any = None, **kw: Any) -> None:
        seen["sent"] += bytes_data is not None
        await send(self, text_data=text_data, bytes_data=bytes_data, **kw)

    monkeypatch.setattr(consumer, "websocket_receive", counting_receive)
    monkeypatch.setattr(consumer, "send", counting_send)
    return seen


@pytest.mark.parametrize("kind", DRIVERS)
async def test_a_calls_audio_takes_the_frame_extension_both_ways(
    kind: str, account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = count_asgi_audio(monkeypatch, CONSUMERS[kind])
    async with hub_in_process() as base, Customer(reply=on_start(play(CLIP))) as customer:
        hub = cast(Proc, SimpleNamespace(ws=base.removesuffix("/ingest")))  # all a driver reads of a hub
        driver = make_driver(kind, hub, account)
        await driver.open([{"serviceUrl": customer.url, "bidirectional": True}])
        await eventually(lambda: customer.events("start"))
        await asyncio.sleep(0.1)  # set-up done: the handler is in place and nothing waits in the queue
        before = dict(seen)
        await driver.talk(SPEECH)
        await eventually(lambda: spoken(payloads(customer)) == SPEECH)
        await eventually(lambda: b"".join(frame for _, frame in driver.played()) == CLIP)
        during = {key: seen[key] - before[key] for key in seen}
        await driver.hang_up()
    assert during == {"received": 0, "sent": 0}
