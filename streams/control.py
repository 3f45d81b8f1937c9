"""Control messages to the process that holds a call, over the channel layer.

A call's row names the control channel of the process that holds it (`Call.control_channel`,
that process's mailbox: `streams.live.mailbox`); a stop or hang-up issued in any process
(REST, admin, sweep) is sent there with the call's id. With the in-memory layer only the
same process is reached, which is all a single-process hub needs. A call opened by an
older hub (no control channel in its row) is reached through the group `call.<uuid>` its
consumer joined, as before.

These messages are the fast path; the database is the truth. A message that cannot be
sent raises ControlUndelivered, so the caller can say so (REST answers 503) instead of
reporting a stop as done while audio flows; the holder still applies the change at
its next lease check (`services.hub_lease`, every heartbeat).
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from streams.models import Call

log = logging.getLogger(__name__)


class ControlUndelivered(Exception):
    """The channel layer refused a control message (e.g. Redis is down)."""


def call_group(call_uuid: object) -> str:
    return f"call.{call_uuid}"


async def asend_to_call(call: Call, message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    message = {**message, "call": str(call.call_uuid)}
    try:
        if call.control_channel:
            await layer.send(call.control_channel, message)
        else:
            await layer.group_send(call_group(call.call_uuid), message)
    except Exception as exc:  # the connection pool already retried (streamhub.envconf); or ChannelFull
        log.warning(
            "could not send %s to call %s: %s: %s", message.get("type"), call.call_uuid, type(exc).__name__, exc
        )
        raise ControlUndelivered(f"{type(exc).__name__}: {exc}") from exc


def send_to_call(call: Call, message: dict[str, Any]) -> None:
    async_to_sync(asend_to_call)(call, message)
