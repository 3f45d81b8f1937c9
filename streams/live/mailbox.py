"""The hub process's control mailbox: one channel on the channel layer for all its calls.

A stop, a REST-started stream or a hang-up issued in any process (REST, admin, sweep)
is sent to the channel named in the call's row (`Call.control_channel`, written when the
call is opened) with the call's id in the message (`streams.control`); the mailbox hands
it to the call's ingest consumer, in the order sent, one message at a time per call.

Why one channel per process and not a channel-layer group per call (`call.<uuid>`, the
design's first sketch, and this hub's until round 2 of performance): joining and leaving
a group costs three Redis round trips per call (ZADD, EXPIRE, ZREM) and a receiving task
per call, about 1 ms of the hub's CPU per call set-up and hang-up, for messages almost no
call ever gets. Here a call costs two dictionary operations; the channel and its
receiving task exist once per process. The channel is process-local, so it needs no
membership that a restarted Redis could forget: the receiving task only waits and retries
while Redis is away.

A message may arrive before its call is registered (the call's row commits on the database
thread; a REST start can be sent before the event loop resumes the session): it is kept for
PENDING_SECONDS and handed over on registration. Messages for a call that has ended are
dropped; the database is the truth, and the lease check applies whatever a lost message
asked for (`services.hub_lease`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from channels.layers import get_channel_layer

log = logging.getLogger(__name__)

PENDING_SECONDS = 10.0  # how long a message waits for its call to be registered
PENDING_CALLS_MAX = 1000  # calls with messages waiting, at most (the longest waiting is dropped first)
PENDING_PER_CALL_MAX = 100
RETRY_MAX_SECONDS = 5.0

Handler = Callable[[dict[str, Any]], Awaitable[None]]


class Mailbox:
    """This process's control channel and the calls it routes to (one instance per process)."""

    def __init__(self) -> None:
        self.channel = ""
        self._layer: Any = None
        self._task: asyncio.Task[None] | None = None
        self._handlers: dict[str, Handler] = {}
        self._tails: dict[str, asyncio.Task[None]] = {}  # each call's last dispatch: the next waits for it
        self._pending: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        self.dropped = 0

    async def open(self) -> str:
        """The process's channel name ("" without a channel layer); starts the receiving task once per loop."""
        loop = asyncio.get_running_loop()
        if self._task is not None and not self._task.done() and self._task.get_loop() is loop:
            return self.channel
        layer = get_channel_layer()
        if layer is None:
            return ""
        self._layer = layer
        self.channel = await layer.new_channel(prefix="hub")
        self._task = loop.create_task(self._receive_forever(layer, self.channel))
        return self.channel

    async def close(self) -> None:
        """Stop receiving (tests; a server's mailbox lives as long as its process)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def register(self, call_uuid: str, handler: Handler) -> None:
        self._handlers[call_uuid] = handler
        for _, message in self._pending.pop(call_uuid, ()):
            self._dispatch(call_uuid, handler, message)

    def unregister(self, call_uuid: str) -> None:
        self._handlers.pop(call_uuid, None)
        self._pending.pop(call_uuid, None)

    async def _receive_forever(self, layer: Any, channel: str) -> None:
        delay = 0.1
        while True:
            try:
                message = await layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis down or restarted: keep trying for the life of the process
                log.warning("control mailbox: receive failed (%s: %s); retrying", type(exc).__name__, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            delay = 0.1
            try:
                self.deliver(message)
            except Exception:
                log.exception("control mailbox: message %s failed", message.get("type"))

    def deliver(self, message: dict[str, Any]) -> None:
        call_uuid = str(message.get("call", ""))
        handler = self._handlers.get(call_uuid)
        if handler is not None:
            self._dispatch(call_uuid, handler, message)
            return
        self._keep(call_uuid, message)

    def _keep(self, call_uuid: str, message: dict[str, Any]) -> None:
        now = time.monotonic()
        for key in [key for key, kept in self._pending.items() if now - kept[-1][0] >= PENDING_SECONDS]:
            self.dropped += len(self._pending.pop(key))  # its call never came (or has ended)
        if call_uuid not in self._pending and len(self._pending) >= PENDING_CALLS_MAX:
            self.dropped += len(self._pending.pop(next(iter(self._pending))))  # the longest waiting
        kept = self._pending.setdefault(call_uuid, [])
        if len(kept) >= PENDING_PER_CALL_MAX:
            self.dropped += 1
            return
        kept.append((now, message))

    def _dispatch(self, call_uuid: str, handler: Handler, message: dict[str, Any]) -> None:
        before = self._tails.get(call_uuid)
        task = asyncio.get_running_loop().create_task(self._run(handler, message, before))
        self._tails[call_uuid] = task
        task.add_done_callback(lambda done: self._forget(call_uuid, done))

    async def _run(self, handler: Handler, message: dict[str, Any], before: asyncio.Task[None] | None) -> None:
        if before is not None and not before.done():
            await asyncio.wait({before})
        try:
            await handler(message)
        except Exception:
            log.exception("control message %s failed", message.get("type"))

    def _forget(self, call_uuid: str, done: asyncio.Task[None]) -> None:
        if self._tails.get(call_uuid) is done:
            del self._tails[call_uuid]


mailbox = Mailbox()
