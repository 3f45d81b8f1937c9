"""FreeSWITCH mod_audio_fork / jambonz `listen` ingest: a thin adapter to a CallSession.

An optional first TEXT frame of metadata, then BINARY 16-bit LE PCM, later TEXT events
(DTMF); a zero-length BINARY frame is a graceful-shutdown marker. The framing itself is
pure, in `streams.core.audiofork`.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import DatabaseError

from streams.core import audiofork, framing
from streams.core.gateway import GatewayMetadata, gateway_error
from streams.live import gateway_auth
from streams.live.ingest import (
    CLOSE_SETUP_FAILED,
    CLOSE_UNAVAILABLE,
    DB_UNAVAILABLE,
    MAX_TEXT_FRAME,
    IngestConsumer,
    bidirectional_flags,
)

log = logging.getLogger(__name__)


class AudioForkConsumer(IngestConsumer):
    gateway = "audio-fork"
    subprotocols = audiofork.SUBPROTOCOLS

    async def on_open(self) -> None:
        self.query = gateway_auth.query_params(self.scope)

    async def _begin(self, meta: GatewayMetadata) -> None:
        assert self.session is not None
        audiofork.resolve_playback(meta, self.subprotocol)
        for notice in audiofork.one_way_notices(meta):
            await self.send_text(gateway_error(notice))  # the streams themselves are made one-way by stream_create
        # a bidirectional stream on a connection that cannot play is made one-way: it weighs as one
        flags = [wants and meta.playback is not False for wants in bidirectional_flags(meta)]
        if not self.admit_weight(flags):
            self.session = None  # nothing more is read from this connection
            await self.refuse_weight()
            return
        try:
            await self.session.begin(meta, joined=self.joined)
            self.take_binary_frames(self._audio)
        except DatabaseError:
            log.warning("%s ingest: call set-up failed: database unavailable", self.gateway)
            await self.send_text(gateway_error(DB_UNAVAILABLE))
            await self.close(CLOSE_UNAVAILABLE)
        except Exception:
            # Without its rows or its control group the call cannot be served: say so and hang
            # up rather than swallow audio nobody relays. Teardown ends whatever was created.
            log.exception("%s ingest: call set-up failed", self.gateway)
            await self.send_text(gateway_error("call set-up failed on the hub; try again"))
            await self.close(CLOSE_SETUP_FAILED)

    def _audio(self, data: bytes) -> bool:
        """An audio frame straight from the server's read (the frame extension): no await.
        The shutdown marker, and anything once the call has ended, takes websocket_receive."""
        session = self.session
        if not data or session is None or session.ended:
            return False
        try:
            session.feed_audio_and_pump(data)
        except Exception:  # rule 7: one bad frame never takes the call down
            log.exception("%s ingest: a gateway message failed", self.gateway)
            session.log_to_streams("GatewayInvalidMessage", "a gateway message failed (logged)")
        return True

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        session = self.session
        if session is None:
            return
        data = message.get("bytes")
        if data is not None:
            if session.call is None:  # no metadata frame: the first frame is audio
                await self._begin(audiofork.parse_gateway_metadata("", defaults=self.query))
            if not data:
                await self.graceful_shutdown()
                return
            session.feed_audio_and_pump(data)
            return
        text = message.get("text") or ""
        if session.call is None:
            await self._begin(audiofork.parse_gateway_metadata(text[:MAX_TEXT_FRAME], defaults=self.query))
            return
        if len(text) > MAX_TEXT_FRAME:
            session.log_to_streams("GatewayInvalidMessage", f"ignored a {len(text)}-character text frame")
            return
        try:
            events = audiofork.parse_gateway_event(text)
        except framing.ProtocolError as exc:
            session.log_to_streams("GatewayInvalidMessage", str(exc))
            return
        for event in events:
            if isinstance(event, audiofork.GatewayDtmf):
                session.on_dtmf(event.digit)
            elif isinstance(event, audiofork.GatewayOther):
                session.log_to_streams("GatewayMessage", f"ignored gateway message {text[:200]}")

    async def graceful_shutdown(self) -> None:
        """mod_audio_fork's zero-length frame: the call is over; we close the socket."""
        assert self.session is not None
        await self.session.end()
        await self.close(1000)

    def send_dtmf(self, digits: str) -> str | None:
        return audiofork.gateway_send_dtmf(digits)

    def clear_command(self) -> str | None:
        return audiofork.gateway_kill_audio()
