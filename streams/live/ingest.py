"""What every ingest consumer shares: auth and admission on the upgrade, the serving loop,
control messages from the channel layer, and one teardown.

One subclass per gateway framing (`live.audiofork`, `live.asterisk`) adapts its frames
to the CallSession; each is the session's GatewayLink.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer

from streams import control
from streams.core.gateway import GatewayMetadata, gateway_error
from streams.core.validation import StreamParamError, validate_stream_params
from streams.live import gateway_auth
from streams.live.admission import admission
from streams.live.dbasync import db_async
from streams.live.session import CallSession
from streams.live.wsserver import FRAMES_EXTENSION
from streams.models import Account

log = logging.getLogger(__name__)

MAX_TEXT_FRAME = 64 * 1024
CLOSE_AT_CAPACITY = 4503
CLOSE_SETUP_FAILED = 4500


def bidirectional_flags(meta: GatewayMetadata) -> list[bool]:
    """Which of the metadata's valid stream requests are bidirectional (what the call will weigh)."""
    flags = []
    for entry in meta.streams:
        try:
            flags.append(validate_stream_params(entry, forbid_private_callbacks=False).bidirectional)
        except StreamParamError:
            continue
    return flags


class IngestConsumer(AsyncWebsocketConsumer):
    """What every gateway framing shares: auth and admission on the upgrade, control messages."""

    gateway = "generic"
    subprotocols: tuple[str, ...] = ()

    session: CallSession | None = None
    account: Account | None = None
    admitted = False
    weight = 0.0  # what this call holds of the process's capacity (streams/live/admission.py)
    # the server's `streamhub.binary_frames` extension (streams/live/wsserver.py), when it has one
    frames_extension: dict[str, Any] | None = None
    _send_binary: Callable[[bytes], bool] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Serve the connection in a task of its own.

        The server's task reaches us through its middleware, Channels' routers and as_asgi:
        every resumption of that task (one per audio frame) passes through each of those
        coroutine frames. A task of our own resumes straight into the loop below. Cancelling
        the server's task cancels this one too (it is what the server's task awaits).
        """
        await asyncio.get_running_loop().create_task(self._serve(scope, receive, send))

    async def _serve(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Channels' loop, minus its per-message costs (the audio path's hottest code).

        AsyncConsumer waits on the client and the channel layer with asyncio.wait and a
        fresh task per message, and its dispatch closes old DB connections through a
        thread hop on every message. Here the client is read in a plain loop, websocket
        frames go straight to their handler, and control messages from the channel layer
        are dispatched by a task of their own. Audio never touches the ORM; the session's
        DB work runs in db_async, which does the connection housekeeping itself.
        """
        self.scope = scope
        self.base_send = send
        self.frames_extension = (scope.get("extensions") or {}).get(FRAMES_EXTENSION)
        if self.frames_extension is not None:
            self._send_binary = self.frames_extension["send_binary"]
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        control: asyncio.Task[None] | None = None
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()
            control = asyncio.get_running_loop().create_task(self._control_loop())
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.receive":
                    try:
                        await self.websocket_receive(message)
                    except Exception:  # rule 7: one bad frame never takes the call down
                        log.exception("%s ingest: a gateway message failed", self.gateway)
                        if self.session is not None:
                            self.session.log_to_streams("GatewayInvalidMessage", "a gateway message failed (logged)")
                else:
                    await self.dispatch(message)
        except StopConsumer:
            pass
        finally:
            if control is not None:
                control.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await control
            # however the loop ended (disconnect, error, server shutdown), end the call once
            await asyncio.shield(self.teardown())

    async def _control_loop(self) -> None:
        assert self.channel_layer is not None
        while True:
            message = await self.channel_layer.receive(self.channel_name)
            try:
                await self.dispatch(message)
            except Exception:
                log.exception("control message %s failed", message.get("type"))

    async def dispatch(self, message: dict[str, Any]) -> None:
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']}")
        await handler(message)

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        self.account = gateway_auth.cached(self.scope) or await db_async(gateway_auth.authenticate)(self.scope)
        if self.account is None:
            log.warning("%s ingest refused: missing or wrong credentials", self.gateway)
            await self.close()
            return
        if not admission.try_admit():
            log.warning("%s ingest refused: at capacity (%d)", self.gateway, admission.limit)
            await self.refuse_at_capacity()
            return
        self.admitted = True
        self.weight = admission.call_weight(())
        offered = self.scope.get("subprotocols") or []
        chosen = next((p for p in offered if p in self.subprotocols), None)
        await self.accept(subprotocol=chosen)
        self.session = CallSession(account=self.account, link=self, gateway=self.gateway)
        await self.on_open()

    async def refuse_at_capacity(self) -> None:
        if "websocket.http.response" in self.scope.get("extensions", {}):
            body = b"hub at capacity: try another hub process"
            await self.send_http_refusal(503, body)
            return
        # Daphne cannot answer the upgrade with a status of our choosing: accept, say why, and
        # close with 4503 (daphne only sends 1000 or application codes 3000-4999).
        await self.accept()
        await self.send(text_data=gateway_error("hub at capacity: try another hub process"))
        await self.close(code=CLOSE_AT_CAPACITY)

    async def refuse_weight(self) -> None:
        """The second step refused the call (its streams weigh more than is free): say so, 4503."""
        await self.send(text_data=gateway_error("hub at capacity for this call's streams: try another hub process"))
        await self.close(code=CLOSE_AT_CAPACITY)

    async def send_http_refusal(self, status: int, body: bytes) -> None:
        await self.base_send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await self.base_send({"type": "websocket.http.response.body", "body": body})

    async def on_open(self) -> None:
        """Framing-specific start (query defaults, waiting for metadata)."""

    async def joined(self) -> None:
        assert self.session is not None and self.session.call is not None
        await self.channel_layer.group_add(control.call_group(self.session.call.call_uuid), self.channel_name)

    def admit_weight(self, bidirectional: list[bool]) -> bool:
        """The second step of admission, once the metadata says what the call's streams are:
        grow to their weight, or False (nothing was written yet; the caller refuses the call)."""
        weight = admission.call_weight(bidirectional)
        if not admission.try_grow(weight - self.weight):
            log.warning(
                "%s ingest refused: at capacity (a call of weight %g; %g of %d in use)",
                self.gateway,
                weight,
                admission.used,
                admission.limit,
            )
            return False
        self.weight = max(weight, self.weight)
        return True

    def add_weight(self, bidirectional: bool) -> None:
        """A stream started over REST on this call: its weight counts from now on."""
        extra = admission.stream_weight(bidirectional)
        if self.admitted:
            admission.grow(extra)
            self.weight += extra

    def take_binary_frames(self, handler: Callable[[bytes], bool] | None) -> None:
        """Have the server call `handler` with each BINARY message, synchronously, when it can
        (the frame extension); it returns False for a message that should come through
        websocket_receive instead. Without the extension (daphne) every message does."""
        if self.frames_extension is not None:
            self.frames_extension["set_binary_handler"](handler)

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        await self.teardown()
        await super().websocket_disconnect(message)

    async def teardown(self) -> None:
        """Free the admission slot, end the session, leave the control group: idempotent.

        The slot goes first: the gateway is gone, so the call's cost is over, and whoever sees
        the call ended (its row) can count on its capacity being free."""
        self.take_binary_frames(None)
        if self.admitted:
            admission.release(self.weight)
            self.admitted = False
            self.weight = 0.0
        session = self.session
        try:
            if session is not None:
                await session.end()
                if session.call is not None and self.channel_layer is not None:
                    await self.channel_layer.group_discard(
                        control.call_group(session.call.call_uuid), self.channel_name
                    )
        except Exception:
            log.exception("%s ingest: teardown failed", self.gateway)

    # --- control from the service layer (channel layer group call.<uuid>) ---------------

    async def stream_start(self, message: dict[str, Any]) -> None:
        if self.session is not None:
            stream = await self.session.start_stream(message["stream_id"])
            if stream is not None:
                self.add_weight(stream.bidirectional)

    async def stream_stop(self, message: dict[str, Any]) -> None:
        if self.session is not None:
            self.session.stop_stream(message["stream_id"])

    async def call_hangup(self, message: dict[str, Any]) -> None:
        if self.session is not None:
            await self.session.hangup()

    # --- GatewayLink ------------------------------------------------------------------

    async def send_audio(self, pcm: bytes) -> None:
        send_binary = self._send_binary
        if send_binary is not None and send_binary(pcm):  # written at once (the frame extension)
            return
        await self.send(bytes_data=pcm)

    async def send_text(self, text: str) -> None:
        await self.send(text_data=text)

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        await super().close(code=code, reason=reason)

    def send_dtmf(self, digits: str) -> str | None:
        return None

    def clear_command(self) -> str | None:
        return None

    def mark_command(self, correlation_id: str) -> str | None:
        return None
