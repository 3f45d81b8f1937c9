from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from callbacks.models import CallbackDelivery
from streams import services
from streams.core.validation import validate_stream_params
from streams.models import Account, Stream
from tests.callbacks.receiver import Receiver, running_receiver

# Short retry settings for worker subprocesses and in-process runs alike.
FAST = {
    "STREAMHUB_CALLBACK_BACKOFF_SECONDS": "0.2",
    "STREAMHUB_CALLBACK_BACKOFF_MAX_SECONDS": "5",
    "STREAMHUB_CALLBACK_TIMEOUT_SECONDS": "2",
    "STREAMHUB_CALLBACK_PENDING_DEADLINE_SECONDS": "4",  # at least twice a try's deadline (settings check)
    "STREAMHUB_ORPHAN_AFTER_SECONDS": "3600",
}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as server:
        yield server


def open_stream(account: Account, callback_url: str, *, method: str = "POST", **params: Any) -> Stream:
    """A live call with one stream that reports to `callback_url` (created, not yet started)."""
    call = services.call_open(
        account=account, call_uuid=uuid.uuid4(), from_number="+14155550100", to_number="+14155550199"
    )
    fields = {
        "service_url": f"wss://bot.example.com/ws/{uuid.uuid4().hex[:8]}",
        "status_callback_url": callback_url,
        "status_callback_method": method,
        **params,
    }
    return services.stream_create(call=call, params=validate_stream_params(fields), notify_session=False)


def started_stream(account: Account, callback_url: str, **params: Any) -> Stream:
    stream = open_stream(account, callback_url, **params)
    assert services.stream_mark_started(stream=stream)
    return stream


def deliveries(stream: Stream) -> list[CallbackDelivery]:
    return list(CallbackDelivery.objects.filter(stream=stream).order_by("pk"))
