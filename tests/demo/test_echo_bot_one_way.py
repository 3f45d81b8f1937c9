"""The example echo bot on a one-way stream, as its docstring says: it still echoes (Plivo's
`start` does not say whether a stream is bidirectional), the hub plays none of it, and the
stream's debug log says why."""

from __future__ import annotations

import pytest
from websockets.asyncio.server import serve

from examples.echo_bot import EchoBot, VadSettings
from streams.models import Account, Stream, StreamEvent
from tests.conftest import Proc
from tests.support import Gateway, basic_auth, db, eventually, tone

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.mark.parametrize("bidirectional", [False, True])
async def test_the_echo_bot_echoes_and_only_a_bidirectional_stream_plays_it(
    hub: Proc, account: Account, bidirectional: bool
) -> None:
    bot = EchoBot(vad=VadSettings(pause_ms=200), auth_token=account.auth_token, verbose=False)
    async with serve(bot.handle, "127.0.0.1", 0, process_request=bot.check_signature) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        gw = Gateway(f"{hub.ws}/ingest/audio-fork", basic_auth(account.auth_id, account.auth_token))
        await gw.open({"streams": [{"serviceUrl": f"ws://127.0.0.1:{port}/", "bidirectional": bidirectional}]})
        stream = await eventually(db(lambda: Stream.objects.filter(account=account, status="in-progress").first()))
        await gw.send_frames(tone(600) + bytes(16000))  # a phrase, then one second of silence
        if bidirectional:
            await eventually(lambda: gw.audio, timeout=10)
        else:
            await eventually(
                db(lambda: StreamEvent.objects.filter(stream=stream, event="IgnoredMessage").first()), timeout=10
            )
        await gw.close()
    events = await db(lambda: list(StreamEvent.objects.filter(stream=stream)))()
    ignored = [e for e in events if e.event == "IgnoredMessage"]
    if bidirectional:
        assert ignored == [] and len(gw.audio) >= 2 * 8 * 400  # most of the phrase came back
    else:
        assert gw.audio == b""
        assert ignored[0].error == "stream is not bidirectional: customer messages are ignored"
