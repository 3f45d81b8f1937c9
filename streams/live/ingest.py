"""What every ingest consumer shares: auth and admission on the upgrade, the serving loop,
control messages from the channel layer, and one teardown.

One subclass per gateway framing (`live.audiofork`, `live.asterisk`) adapts its frames
to the CallSession; each is the session's GatewayLink.

Failures of the stores around a call:
- The control loop survives a channel-layer (Redis) outage: it retries `receive` with
  backoff and re-joins the call's group once Redis answers again (a restarted Redis has
  forgotten it). A stop sent meanwhile is refused to its sender (`ControlUndelivered`)
  and applied here at the next lease check anyway.
- Joining the call's group is retried (it is idempotent); the connection pool itself
  health-checks and retries (streamhub.envconf).
- The control task is stopped with a bounded wait: a cancellation swallowed inside
  redis-py must not keep a call's task (or the server's connection) alive for ever.
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
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError

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
CLOSE_UNAVAILABLE = 4503  # the same meaning for a gateway: try again later (or another hub)
CLOSE_SETUP_FAILED = 4500
CONTROL_STOP_SECONDS = 2.0  # per cancellation of the control task, at most three
CONTROL_RETRY_MAX_SECONDS = 5.0
JOIN_ATTEMPTS = 4
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
    _control_stopping = False
    _group: str | None = None
    _group_left = False  # teardown left the call's control group (it runs twice: disconnect, end of serve)
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
                await self._stop_control(control)
            # however the loop ended (disconnect, error, server shutdown), end the call once
            await asyncio.shield(self.teardown())

    async def _stop_control(self, control: asyncio.Task[None]) -> None:
        """Cancel the control task and wait a bounded time: redis-py's socket-timeout
        wait_for can swallow a cancellation (Python 3.11), so cancel again, and in the end
        leave it to the loop's own flag (it ends at its next wake-up, within the layer's
        5 s BZPOPMIN) rather than hold this connection open for ever."""
        self._control_stopping = True
        for _ in range(3):
            if control.done():
                break
            control.cancel()
            await asyncio.wait({control}, timeout=CONTROL_STOP_SECONDS)
        if not control.done():
            log.warning("%s ingest: the control task did not stop when cancelled; it ends on its own", self.gateway)
        elif not control.cancelled() and control.exception() is not None:
            log.error("%s ingest: the control task failed", self.gateway, exc_info=control.exception())

    async def _control_loop(self) -> None:
        layer = self.channel_layer
        assert layer is not None
        delay = 0.1
        failing = False
        while not self._control_stopping:
            if failing:  # a restarted Redis has forgotten the call's group: join it again first
                if not await self._rejoin():
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, CONTROL_RETRY_MAX_SECONDS)
                    continue
                failing, delay = False, 0.1
            try:
                message = await layer.receive(self.channel_name)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down or restarted: keep trying, never give up the call
                log.warning(
                    "%s ingest: control channel failed (%s: %s); retrying", self.gateway, type(exc).__name__, exc
                )
                failing = True
                await asyncio.sleep(delay)
                continue
            if self._control_stopping:
                break
            try:
                await self.dispatch(message)
            except Exception:
                log.exception("control message %s failed", message.get("type"))

    async def _rejoin(self) -> bool:
        if self._group is None:
            return True
        try:
            await self.channel_layer.group_add(self._group, self.channel_name)
        except Exception:
            return False
        log.info("%s ingest: control channel back; rejoined %s", self.gateway, self._group)
        return True

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
        assert self.session is not None and self.session.call is not None
        if self.channel_layer is None:
            return
        self._group = control.call_group(self.session.call.call_uuid)
        for attempt in range(1, JOIN_ATTEMPTS + 1):  # idempotent: safe to retry
            try:
                await self.channel_layer.group_add(self._group, self.channel_name)
                return
            except Exception as exc:
                if attempt == JOIN_ATTEMPTS:
                    raise
                log.warning("%s ingest: joining %s failed (%s); retrying", self.gateway, self._group, exc)
                await asyncio.sleep(0.1 * 2**attempt)

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
                # once (teardown runs on the disconnect and again when the serve loop ends), or again
                # if it failed
                if session.call is not None and self.channel_layer is not None and not self._group_left:
                    self._control_stopping = True
                    await self.channel_layer.group_discard(
                        control.call_group(session.call.call_uuid), self.channel_name
                    )
                    self._group_left = True
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
