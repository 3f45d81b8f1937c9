"""Gateway drivers: one call leg through either ingest framing, behind one interface.

The acceptance scenarios (tests/live/asterisk/test_acceptance.py) are written once against
`GatewayDriver` and run through both `/ingest/audio-fork` (a mod_audio_fork client) and
`/ingest/asterisk` (the chan_websocket client, codec slin so the caller's audio is the same
8 kHz L16 as mod_audio_fork's). What differs per framing is stated here, not in the tests.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from streams.models import Account
from tests.conftest import Proc
from tests.live.asterisk.fake_asterisk import FakeAsterisk
from tests.support import TimedGateway, basic_auth

DRIVERS = ("audio-fork", "asterisk")


class GatewayDriver(Protocol):
    kind: str
    has_dtmf_command: bool  # can the hub make this gateway play DTMF?

    async def open(
        self,
        streams: list[dict[str, Any]],
        *,
        call_id: str = "",
        caller: str = "",
        callee: str = "",
        extra: dict[str, str] | None = None,
    ) -> None:
        """Dial the hub for a call asking for these streams (<Stream> attribute names);
        `extra` are more call metadata (e.g. appId): the JSON metadata or the v() pairs."""

    async def talk(self, pcm: bytes, *, interval: float = 0.02) -> None:
        """Caller audio, 8 kHz 16-bit LE mono, one 20 ms frame per interval."""

    async def dtmf(self, digit: str) -> None: ...

    async def hang_up(self) -> None:
        """The caller hangs up: the gateway closes the socket."""

    async def closed_by_hub(self) -> bool:
        """Wait for the hub to end the call leg; True when it did so the gateway's way."""

    def played(self) -> list[tuple[float, bytes]]:
        """What the caller heard from the hub: (time, 20 ms of 8 kHz L16)."""

    def cleared(self) -> bool:
        """The hub told the gateway to drop the audio it buffered."""

    def dtmf_played(self) -> list[str]: ...


class AudioForkDriver:
    kind = "audio-fork"
    has_dtmf_command = True

    def __init__(self, hub: Proc, account: Account) -> None:
        self.gw = TimedGateway(f"{hub.ws}/ingest/audio-fork", basic_auth(account.auth_id, account.auth_token))

    async def open(
        self,
        streams: list[dict[str, Any]],
        *,
        call_id: str = "",
        caller: str = "",
        callee: str = "",
        extra: dict[str, str] | None = None,
    ) -> None:
        meta: dict[str, Any] = {"streams": streams}
        meta.update({k: v for k, v in (("callId", call_id), ("from", caller), ("to", callee)) if v})
        meta.update(extra or {})
        await self.gw.open(meta)

    async def talk(self, pcm: bytes, *, interval: float = 0.02) -> None:
        await self.gw.send_frames(pcm, frame_bytes=320, interval=interval)

    async def dtmf(self, digit: str) -> None:
        await self.gw.send(json.dumps({"event": "dtmf", "dtmf": digit, "duration": 100}))

    async def hang_up(self) -> None:
        await self.gw.close()

    async def closed_by_hub(self) -> bool:
        assert self.gw.ws is not None
        await self.gw.ws.wait_closed()
        return self.gw.ws.close_code == 1000

    def played(self) -> list[tuple[float, bytes]]:
        return [(t, m) for t, m in self.gw.arrivals if isinstance(m, bytes)]

    def cleared(self) -> bool:
        return {"type": "killAudio"} in self.gw.texts

    def dtmf_played(self) -> list[str]:
        return [t["data"]["dtmf"] for t in self.gw.texts if t.get("type") == "sendDTMF"]


class AsteriskDriver:
    kind = "asterisk"
    has_dtmf_command = False  # chan_websocket has no command that plays DTMF

    def __init__(self, hub: Proc, account: Account) -> None:
        self.url = f"{hub.ws}/ingest/asterisk"
        self.headers = basic_auth(account.auth_id, account.auth_token)
        self.fake: FakeAsterisk | None = None

    async def open(
        self,
        streams: list[dict[str, Any]],
        *,
        call_id: str = "",
        caller: str = "",
        callee: str = "",
        extra: dict[str, str] | None = None,
    ) -> None:
        params = {k: v for k, v in (("callId", call_id), ("from", caller), ("to", callee)) if v}
        params.update(extra or {})
        if len(streams) == 1:  # one stream: its <Stream> attributes as v() pairs
            params.update({k: _attr(v) for k, v in streams[0].items()})
        elif streams:
            params["streams"] = json.dumps(streams)
        self.fake = await FakeAsterisk(self.url, self.headers, params=params, codec="slin").dial()

    async def talk(self, pcm: bytes, *, interval: float = 0.02) -> None:
        assert self.fake is not None
        await self.fake.talk(pcm, interval=interval)

    async def dtmf(self, digit: str) -> None:
        assert self.fake is not None
        await self.fake.dtmf(digit)

    async def hang_up(self) -> None:
        assert self.fake is not None
        await self.fake.hang_up()

    async def closed_by_hub(self) -> bool:
        assert self.fake is not None
        await self.fake.wait_closed()
        return self.fake.closed and self.fake.hangup_received

    def played(self) -> list[tuple[float, bytes]]:
        assert self.fake is not None
        return list(self.fake.played)

    def cleared(self) -> bool:
        assert self.fake is not None
        return "FLUSH_MEDIA" in self.fake.command_names

    def dtmf_played(self) -> list[str]:
        return []


def _attr(value: Any) -> str:
    """A <Stream> attribute as Asterisk's URIENCODE()d v() value: booleans as true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def make_driver(kind: str, hub: Proc, account: Account) -> GatewayDriver:
    return AudioForkDriver(hub, account) if kind == "audio-fork" else AsteriskDriver(hub, account)
