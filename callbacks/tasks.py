"""Celery tasks for status callbacks: thin shells around `callbacks.services`.

Retries are not Celery retries: the delivery row holds the state (attempt count,
next attempt time), and the task is re-queued with a countdown. So a lost message,
a broker that was down or a killed worker loses nothing (the beat sweep re-queues
from the rows), and a duplicate message is harmless (the claim is conditional).
"""

from __future__ import annotations

import logging
import time

from celery import shared_task

from callbacks import services

log = logging.getLogger(__name__)

# After a failed publish, skip the broker for a while: an unreachable Redis costs
# seconds per attempt (client reconnect backoff), and publishing runs on commit in the
# hub's database thread. The rows wait in the outbox; the sweep re-queues them.
BROKER_COOLDOWN_SECONDS = 10.0
_broker_down_until = 0.0


@shared_task(name="callbacks.tasks.deliver", acks_late=True, ignore_result=True)
def deliver(delivery_id: int) -> str:
    return " ".join(outcome.action for outcome in services.callback_run(delivery_id=delivery_id))


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
    all: the task that finishes that one goes on with it.
    """
    global _broker_down_until
    if time.monotonic() < _broker_down_until:
        return False
    try:
        if check_order and services.callback_is_blocked(delivery_id):
            return True
        deliver.apply_async((delivery_id,), countdown=countdown, retry=False)
    except Exception as exc:
        _broker_down_until = time.monotonic() + BROKER_COOLDOWN_SECONDS
        log.warning(
            "could not queue callback delivery %s (%s: %s); broker skipped for %g s, the sweep re-queues it",
            delivery_id,
            type(exc).__name__,
            exc,
            BROKER_COOLDOWN_SECONDS,
        )
        return False
    return True
