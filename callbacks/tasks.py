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
    return " ".join(outcome.action for outcome in services.callback_run(delivery_id=delivery_id))


@shared_task(name="callbacks.tasks.sweep", ignore_result=True)
def sweep() -> dict[str, int]:
    counts = services.callbacks_sweep()
    if any(counts.values()):
        log.info("callback sweep: %s", counts)
    return counts
