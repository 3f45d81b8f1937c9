"""What every ingest consumer shares: auth and admission on the upgrade, the serving loop,
control messages from the process's mailbox, and one teardown.

One subclass per gateway framing (`live.audiofork`, `live.asterisk`) adapts its frames
to the CallSession; each is the session's GatewayLink.

Control messages (a REST stop, start or hang-up) reach the consumer through the process's
mailbox (`live.mailbox`): the call registers there once its row exists and leaves at teardown.

Failures of the stores around a call:
- The mailbox survives a channel-layer (Redis) outage: it retries `receive` with backoff.
  A stop sent meanwhile is refused to its sender (`ControlUndelivered`) and applied here
  at the next lease check anyway.
- A database that cannot be reached on the upgrade is a deliberate refusal (HTTP 503,
  or under daphne an error frame and close 4503), not an unhandled error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.db import DatabaseError

from streams.core.gateway import GatewayMetadata, gateway_error
from streams.core.validation import StreamParamError, validate_stream_params
from streams.live import gateway_auth
from streams.live.admission import admission
from streams.live.dbasync import db_async
from streams.live.mailbox import mailbox
from streams.live.session import CallSession
from streams.live.wsserver import FRAMES_EXTENSION
from streams.models import Account

log = logging.getLogger(__name__)

MAX_TEXT_FRAME = 64 * 1024
CLOSE_AT_CAPACITY = 4503
CLOSE_UNAVAILABLE = 4503  # the same meaning for a gateway: try again later (or another hub)
CLOSE_SETUP_FAILED = 4500
DB_UNAVAILABLE = "hub database unavailable: try again shortly"
OVERLOADED = "hub overloaded (event loop lagging): try another hub process"


def bidirectional_flags(meta: GatewayMetadata) -> list[bool]:
    """Which of the metadata's valid stream requests are bidirectional (what the call will weigh):
    at most STREAMHUB_MAX_STREAMS_PER_CALL of them, as the rest will be refused."""
    flags: list[bool] = []
    for entry in meta.streams:
        if len(flags) >= settings.STREAMHUB_MAX_STREAMS_PER_CALL:
            break
        try:
            flags.append(validate_stream_params(entry).bidirectional)
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
    subprotocol: str | None = None  # the one we accepted, of those the gateway offered
    _registered: str | None = None  # the call id this consumer is registered under in the mailbox
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
        self.channel_layer = None  # control comes through the process's mailbox, not a channel of our own
        await mailbox.open()
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
            # however the loop ended (disconnect, error, server shutdown), end the call once
            await asyncio.shield(self.teardown())

    async def dispatch(self, message: dict[str, Any]) -> None:
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']}")
        await handler(message)

    async def websocket_connect(self, message: dict[str, Any]) -> None:
        account = gateway_auth.cached(self.scope)  # a burst from one gateway: one query, not one each
        if account is None:
            try:
                admitted = await db_async(gateway_auth.admit)(self.scope)
            except DatabaseError as exc:
                log.warning("%s ingest refused: database unavailable (%s)", self.gateway, type(exc).__name__)
                await self.refuse_unavailable(DB_UNAVAILABLE)
                return
            if admitted.retry_after is not None:
                log.warning("%s ingest refused: too many failed attempts from this address", self.gateway)
                await self.refuse_throttled(admitted.retry_after)
                return
            account = admitted.account
        self.account = account
        if self.account is None:
            log.warning("%s ingest refused: missing or wrong credentials", self.gateway)
            await self.close()
            return
        if admission.overloaded():
            admission.refuse_overloaded()
            log.warning(
                "%s ingest refused: event loop lagging (sustained %.0f ms, limit %.0f ms)",
                self.gateway,
                admission.lag_source() * 1000,
                admission.max_lag * 1000,
            )
            await self.refuse_unavailable(OVERLOADED, code=CLOSE_AT_CAPACITY)
            return
        if not admission.try_admit():
            log.warning("%s ingest refused: at capacity (%d)", self.gateway, admission.limit)
            await self.refuse_at_capacity()
            return
        self.admitted = True
        self.weight = admission.call_weight(())
        offered = self.scope.get("subprotocols") or []
        self.subprotocol = next((p for p in offered if p in self.subprotocols), None)
        await self.accept(subprotocol=self.subprotocol)
        self.session = CallSession(account=self.account, link=self, gateway=self.gateway)
        await self.on_open()

    async def refuse_at_capacity(self) -> None:
        await self.refuse_unavailable("hub at capacity: try another hub process", code=CLOSE_AT_CAPACITY)

    async def refuse_unavailable(self, reason: str, *, code: int = CLOSE_UNAVAILABLE) -> None:
        if "websocket.http.response" in self.scope.get("extensions", {}):
            await self.send_http_refusal(503, reason.encode())
            return
        # Daphne cannot answer the upgrade with a status of our choosing: accept, say why, and
        # close with 4503 (daphne only sends 1000 or application codes 3000-4999).
        await self.accept()
        await self.send(text_data=gateway_error(reason))
        await self.close(code=code)

    async def refuse_throttled(self, retry_after: int) -> None:
        if "websocket.http.response" in self.scope.get("extensions", {}):
            body = b"too many failed authentication attempts from this address; try again later"
            await self.send_http_refusal(429, body, ((b"retry-after", str(retry_after).encode()),))
            return
        await self.close()  # daphne: refused before accept, HTTP 403

    async def refuse_weight(self) -> None:
        """The second step refused the call (its streams weigh more than is free): say so, 4503."""
        await self.send(text_data=gateway_error("hub at capacity for this call's streams: try another hub process"))
        await self.close(code=CLOSE_AT_CAPACITY)

    async def send_http_refusal(self, status: int, body: bytes, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        await self.base_send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain"), *headers],
            }
        )
        await self.base_send({"type": "websocket.http.response.body", "body": body})

    async def on_open(self) -> None:
        """Framing-specific start (query defaults, waiting for metadata)."""

    async def joined(self) -> None:
        """The call's row exists: take its control messages (and any the mailbox kept for it)."""
        assert self.session is not None and self.session.call is not None
        self._registered = str(self.session.call.call_uuid)
        mailbox.register(self._registered, self.dispatch)

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
        # Not Channels' websocket_disconnect: it leaves the consumer's groups (it has none: control
        # comes through the mailbox) and then runs close_old_connections on Channels'
        # thread-sensitive thread, which the hub never uses for the database (db_async runs on
        # its own threads and closes old connections around each hop): a thread hop per call
        # for nothing (2.6 % of the event loop's samples under bench/churn.py).
        raise StopConsumer

    async def teardown(self) -> None:
        """Free the admission slot, leave the mailbox, end the session: idempotent.

        The slot goes first: the gateway is gone, so the call's cost is over, and whoever sees
        the call ended (its row) can count on its capacity being free."""
        self.take_binary_frames(None)
        if self.admitted:
            admission.release(self.weight)
            self.admitted = False
            self.weight = 0.0
        if self._registered is not None:
            mailbox.unregister(self._registered)
            self._registered = None
        session = self.session
        try:
            if session is not None:
                await session.end()
        except Exception:
            log.exception("%s ingest: teardown failed", self.gateway)
        finally:
            # The session holds this consumer as its link: let go of it, so the two are freed as
            # the call ends and not left as a cycle for the garbage collector (tests/live/test_no_cycles.py).
            self.session = None

    # --- control from the service layer (through the process's mailbox) ---------------

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
