"""Asterisk `chan_websocket` ingest at /ingest/asterisk: a thin adapter onto CallSession.

Asterisk dials the hub (websocket_client.conf, subprotocol `media`, HTTP Basic), sends
MEDIA_START as its first TEXT message, then raw codec bytes as BINARY, one 20 ms frame
at a time and nothing at all while the caller is silent. The call starts on MEDIA_START
(the codec fixes the session rate), and the session's silence clock keeps each stream's
20 ms cadence through the gaps. Playback goes back as one BINARY frame per 20 ms in the
channel codec; checkpoints are MARK_MEDIA answered by MEDIA_MARK_PROCESSED, clearAudio
is FLUSH_MEDIA, MEDIA_XOFF/MEDIA_XON pause and resume the session's playback. A hang-up
ordered by REST or the admin sends HANGUP before closing; Asterisk closing the socket,
cleanly or not, is a call hangup for every stream (IngestConsumer.websocket_disconnect).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from streams.core import asterisk as ast
from streams.core import audio
from streams.core.framing import ProtocolError
from streams.live import gateway_auth
from streams.live.ingest import CLOSE_AT_CAPACITY, IngestConsumer, bidirectional_flags

log = logging.getLogger(__name__)

MEDIA_START_TIMEOUT = 10.0  # Asterisk sends MEDIA_START right after the upgrade; a socket without one holds a slot
# Answers to commands the hub never sends: logged to the streams, otherwise ignored.
IGNORED_EVENTS = frozenset({"STATUS", "QUEUE_DRAINED", "MEDIA_BUFFERING_COMPLETED"})


class AsteriskConsumer(IngestConsumer):
    gateway = "asterisk"
    subprotocols = ("media",)

    query: dict[str, str]
    start: ast.MediaStart | None = None
    _deadline: asyncio.Task[None] | None = None
    _hangup_sent = False
    _early_frames = 0

    async def on_open(self) -> None:
        self.query = gateway_auth.query_params(self.scope)
        self._deadline = asyncio.get_running_loop().create_task(self._expect_media_start())

    async def _expect_media_start(self) -> None:
        await asyncio.sleep(MEDIA_START_TIMEOUT)
        if self.start is None:
            log.warning("asterisk ingest: no MEDIA_START within %.0f s; closing", MEDIA_START_TIMEOUT)
            await self.close(1008)

    async def websocket_receive(self, message: dict[str, Any]) -> None:
        session = self.session
        if session is None or self._hangup_sent:  # after HANGUP only Asterisk's close matters
            return
        data = message.get("bytes")
        if data is not None:
            start = self.start
            if start is None or session.call is None:
                self._early_frames += 1
                if self._early_frames == 1:
                    log.warning("asterisk ingest: audio before MEDIA_START dropped")
                return
            session.feed_audio(audio.ulaw_decode(data) if start.codec.mulaw else data)
            return
        text = message.get("text") or ""
        try:
            event = ast.parse_event(text)
        except ProtocolError as exc:
            if self.start is None:
                log.warning("asterisk ingest: ignored text before MEDIA_START: %s", exc)
            else:
                session.log_to_streams("GatewayInvalidMessage", str(exc))
            return
        if self.start is None:
            await self._media_start(event)
            return
        self._on_event(event, text)

    async def _media_start(self, event: ast.Event) -> None:
        assert self.session is not None
        try:
            start = ast.media_start(event)
        except ast.UnsupportedFormat as exc:
            log.warning("asterisk ingest refused for account %s: %s", self.account, exc)
            self._hangup_sent = True
            await self.send(text_data=ast.command("HANGUP", json_mode=event.json_mode))
            await self.close(1003)
            return
        except ProtocolError as exc:
            log.warning("asterisk ingest: ignored text before MEDIA_START: %s", exc)
            return
        self.start = start
        self._cancel_deadline()
        meta = ast.call_metadata(self.query, start)
        if not self.admit_weight(bidirectional_flags(meta)):  # the second step of admission
            self._hangup_sent = True
            await self.send(text_data=ast.command("HANGUP", json_mode=event.json_mode))
            await self.close(CLOSE_AT_CAPACITY)
            return
        try:
            await self.session.begin(meta, joined=self.joined)
        except Exception:
            # the call cannot be served without its rows or control group: hang it up
            log.exception("asterisk ingest: call set-up failed")
            self._hangup_sent = True
            await self.send(text_data=ast.command("HANGUP", json_mode=event.json_mode))
            await self.close(1000)
            return
        self.session.start_silence_clock()
        self.take_binary_frames(self._audio)

    def _audio(self, data: bytes) -> bool:
        """A codec frame straight from the server's read (the frame extension): no await, no
        ASGI message. Anything after HANGUP, or once the call has ended, takes websocket_receive."""
        session, start = self.session, self.start
        if session is None or start is None or session.ended or self._hangup_sent:
            return False
        try:
            session.feed_audio(audio.ulaw_decode(data) if start.codec.mulaw else data)
        except Exception:  # rule 7: one bad frame never takes the call down
            log.exception("asterisk ingest: a gateway message failed")
            session.log_to_streams("GatewayInvalidMessage", "a gateway message failed (logged)")
        return True

    def _on_event(self, event: ast.Event, text: str) -> None:
        session = self.session
        assert session is not None
        name = event.name
        try:
            if name == "DTMF_END":
                session.on_dtmf(ast.dtmf_digit(event))
            elif name == "MEDIA_MARK_PROCESSED":
                session.gateway_mark_processed(event.text("correlation_id"))
            elif name == "MEDIA_XOFF":
                session.pause_playback(True)
            elif name == "MEDIA_XON":
                session.pause_playback(False)
            elif name == "ERROR":
                error = event.text("error_text")[:500] or text[:500]
                log.warning("call %s: Asterisk reported an error: %s", session.call and session.call.call_uuid, error)
                session.log_to_streams("GatewayError", f"Asterisk: {error}")
            elif name == "MEDIA_START":
                session.log_to_streams("GatewayInvalidMessage", "a second MEDIA_START was ignored")
            elif name in IGNORED_EVENTS:
                session.log_to_streams("GatewayMessage", f"ignored gateway message {text[:200]}")
            else:
                session.log_to_streams("GatewayMessage", f"ignored unknown gateway event {text[:200]}")
        except ProtocolError as exc:
            session.log_to_streams("GatewayInvalidMessage", str(exc))

    async def teardown(self) -> None:
        self._cancel_deadline()
        await super().teardown()

    def _cancel_deadline(self) -> None:
        # Cancelled, the task keeps its CancelledError, whose traceback holds this consumer:
        # drop it, or the two are a cycle for the garbage collector (tests/live/test_no_cycles.py).
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    # --- GatewayLink ------------------------------------------------------------------

    async def send_audio(self, pcm: bytes) -> None:
        start = self.start
        if start is not None:
            # one 20 ms frame per message: far below the 65,535 bytes that make Asterisk hang up
            data = audio.ulaw_encode(pcm) if start.codec.mulaw else pcm
            send_binary = self._send_binary
            if send_binary is not None and send_binary(data):  # written at once (the frame extension)
                return
            await self.send(bytes_data=data)

    async def send_text(self, text: str) -> None:
        # The session reports refused streams and bad metadata with mod_audio_fork's error
        # frame; Asterisk has no such message (it would log an unknown command), so the
        # operator reads it in the hub's log instead.
        if text.startswith("{"):
            with contextlib.suppress(ValueError):
                data = json.loads(text)
                if isinstance(data, dict) and data.get("type") == "error":
                    call = self.session.call if self.session is not None else None
                    log.warning("call %s: %s", call and call.call_uuid, data.get("data", {}).get("error", ""))
                    return
        await self.send(text_data=text)

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        # REST/admin hang-up: tell Asterisk to hang the channel up, then close (it would
        # also hang up on our close alone, answering 1001, but HANGUP is the documented way).
        if self.start is not None and not self._hangup_sent:
            self._hangup_sent = True
            await self.send(text_data=self._command("HANGUP"))
        await super().close(code=code, reason=reason)

    def _command(self, name: str, correlation_id: str | None = None) -> str:
        json_mode = self.start.json_mode if self.start is not None else True
        return ast.command(name, json_mode=json_mode, correlation_id=correlation_id)

    def send_dtmf(self, digits: str) -> str | None:
        return None  # chan_websocket has no command to play DTMF; the relay logs that

    def clear_command(self) -> str | None:
        return self._command("FLUSH_MEDIA")

    def mark_command(self, correlation_id: str) -> str | None:
        return self._command("MARK_MEDIA", correlation_id)
