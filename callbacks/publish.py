"""Handing outbox rows to Celery: the one place the callbacks app publishes a task.

Runs from `transaction.on_commit` in the hub and the worker, so it never raises: the
row is committed, and an exception here would fail a request that succeeded. The
task is published by name, so the services that call this need not import the task
module (which imports them).
"""

from __future__ import annotations

import logging
import time

from celery import current_app

from callbacks.models import delivery_is_blocked

log = logging.getLogger(__name__)

DELIVER_TASK = "callbacks.tasks.deliver"
# After a failed publish, skip the broker for a while: an unreachable Redis costs
# seconds per attempt (client reconnect backoff), and publishing runs on commit in the
# hub's database thread. The rows wait in the outbox; the sweep re-queues them.
BROKER_COOLDOWN_SECONDS = 10.0
_broker_down_until = 0.0


def send(delivery_id: int, countdown: float | None) -> None:
    """Publish one delivery task (tests replace this to see what would be queued)."""
    current_app.send_task(DELIVER_TASK, (delivery_id,), countdown=countdown, retry=False)


def queue_delivery(delivery_id: int, *, countdown: float | None = None, check_order: bool = True) -> bool:
    """Hand a delivery to Celery; False when the broker refused (the sweep will re-queue it).

    With `check_order`, a delivery behind an open one of its stream is not queued at
    all: the task that finishes that one goes on with it.
    """
    global _broker_down_until
    if time.monotonic() < _broker_down_until:
        return False
    try:
        if check_order and delivery_is_blocked(delivery_id):
            return True
        send(delivery_id, countdown)
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
