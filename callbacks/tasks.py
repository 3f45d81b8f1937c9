"""Celery tasks for status callbacks: thin shells around `callbacks.services`.

Retries are not Celery retries: the delivery row holds the state (attempt count,
next attempt time), and the task is re-queued with a countdown. So a lost message,
a broker that was down or a killed worker loses nothing (the beat sweep re-queues
from the rows), and a duplicate message is harmless (the claim is conditional).
"""

from __future__ import annotations

import logging

from celery import shared_task

from callbacks import services

log = logging.getLogger(__name__)


@shared_task(name="callbacks.tasks.deliver", acks_late=True, ignore_result=True)
def deliver(delivery_id: int) -> str:
    return services.callback_attempt(delivery_id=delivery_id).action


@shared_task(name="callbacks.tasks.sweep", ignore_result=True)
def sweep() -> dict[str, int]:
    counts = services.callbacks_sweep()
    if any(counts.values()):
        log.info("callback sweep: %s", counts)
    return counts


def queue_delivery(delivery_id: int, *, countdown: float | None = None, check_order: bool = True) -> bool:
    """Hand a delivery to Celery; False when the broker refused (the sweep will re-queue it).

    Runs from `transaction.on_commit` in the hub and the worker, so it never raises:
    the row is committed, and an exception here would fail a request that succeeded.
    With `check_order`, a delivery behind an open one of its stream is not queued at
    all: whoever finishes that one queues the next.
    """
    try:
        if check_order and services.callback_is_blocked(delivery_id):
            return True
        deliver.apply_async((delivery_id,), countdown=countdown, retry=False)
    except Exception as exc:
        log.warning(
            "could not queue callback delivery %s (%s: %s); the sweep will retry", delivery_id, type(exc).__name__, exc
        )
        return False
    return True
