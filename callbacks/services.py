"""Recording status callbacks: the one function the relay and the services call.

`callback_enqueue` must run inside the transaction that records the stream event it
reports (design rule 4); the Celery task is queued on commit, and the beat sweep
re-enqueues anything left pending, so a lost broker message loses nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import transaction

from callbacks.models import CallbackDelivery

if TYPE_CHECKING:
    from streams.models import Stream

CALLBACK_EVENTS = frozenset({"StartStream", "StopStream", "DroppedStream", "DegradedStream"})


def callback_enqueue(*, stream: Stream, event: str, params: dict[str, str]) -> CallbackDelivery | None:
    """Write the outbox row for `event` (None when the stream has no callback URL)."""
    if event not in CALLBACK_EVENTS:
        raise ValueError(f"{event} is not a status callback event")
    if not stream.status_callback_url:
        return None
    delivery = CallbackDelivery.objects.create(
        stream=stream,
        account_id=stream.account_id,
        event=event,
        url=stream.status_callback_url,
        method=stream.status_callback_method,
        params=params,
    )
    transaction.on_commit(lambda: _queue(delivery.pk))
    return delivery


def _queue(delivery_id: int) -> None:
    from callbacks.tasks import queue_delivery

    queue_delivery(delivery_id)
