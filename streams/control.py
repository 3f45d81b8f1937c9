"""Control messages to the process that holds a call, over the channel layer.

Each live call's ingest consumer joins the group `call.<uuid>`; a stop or hang-up
issued in any process (REST, admin, sweep) reaches it there. With the in-memory
layer only the same process is reached, which is all a single-process hub needs.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

log = logging.getLogger(__name__)


def call_group(call_uuid: object) -> str:
    return f"call.{call_uuid}"


async def asend_to_call(call_uuid: object, message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        await layer.group_send(call_group(call_uuid), message)
    except Exception:  # a control message that cannot be sent must not fail the DB change behind it
        log.exception("could not send %s to call %s", message.get("type"), call_uuid)


def send_to_call(call_uuid: object, message: dict[str, Any]) -> None:
    async_to_sync(asend_to_call)(call_uuid, message)
