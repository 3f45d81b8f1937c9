"""Status callbacks as an outbox: record, deliver in order, sweep up what got lost.

Contract:
- `callback_enqueue` runs inside the transaction that records the stream event it
  reports (design rule 4). It locks the stream row first, so the callbacks of one
  stream get ids in commit order; the Celery task is queued on commit.
- A delivery is sent only after every earlier delivery (lower id) of its stream is
  delivered or failed. The claim is one conditional UPDATE (pending -> delivering,
  nothing earlier still open), so however many workers and threads race, a StopStream
  never overtakes its StartStream, and a delivered or failed row is never sent again.
- A task that finished a try goes on, in the same thread, with the oldest delivery of
  the same account that is now due and first in its stream (`callback_run`): a
  stream's callbacks cost one broker round trip, not one each, and an account's
  backlog is served first come, first served.
- Every try writes a CallbackAttempt row when it is claimed and fills it in when the
  answer (or the error) is known. Retries follow `callbacks.retry`.
- At most `STREAMHUB_CALLBACK_ACCOUNT_CONCURRENCY` deliveries of one account are in
  flight at once, so one slow or dead endpoint cannot take every worker thread. A
  task that finds its account full simply ends: the account's running tasks pick its
  delivery up when they go on (the claim check and their look for more work cannot
  both miss it).
- `callbacks_sweep` (Celery beat) re-queues what a lost broker message or a killed
  worker left behind. (Streams of hub processes that stopped beating are the streams
  app's sweep: `streams.orphans`.)
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, F, OuterRef
from django.utils import timezone

from callbacks import http, metrics, retry, signing
from callbacks.models import OPEN_STATES, CallbackAttempt, CallbackDelivery, delivery_is_blocked, earlier_open
from callbacks.publish import queue_delivery
from streamhub.dbguard import bounded_atomic
from streamhub.logs import callback_log_ids
from streams.core.validation import EgressPolicy
from streams.models import Account, Call, Stream

if TYPE_CHECKING:
    from django.db.models import QuerySet

log = logging.getLogger(__name__)

CALLBACK_EVENTS = frozenset({"StartStream", "StopStream", "DroppedStream", "DegradedStream"})
# The one call-level delivery: the call's application's hangup request (Plivo's Event name).
HANGUP_REQUEST_EVENT = "Hangup"
DELIVERY_EVENTS = CALLBACK_EVENTS | {HANGUP_REQUEST_EVENT}
# How long one task keeps going with its account's backlog before handing over to a
# fresh task (keeps tasks well under the broker's visibility timeout).
RUN_BUDGET_SECONDS = 20.0
SWEEP_BATCH = 500
INTERRUPTED = "interrupted: no result recorded (worker lost or message redelivered); re-queued by the sweep"


def callback_enqueue(*, stream: Stream, event: str, params: dict[str, str]) -> CallbackDelivery | None:
    """Write the outbox row for `event` (None when the stream has no callback URL)."""
    if event not in CALLBACK_EVENTS:
        raise ValueError(f"{event} is not a status callback event")
    if not stream.status_callback_url:
        return None
    with bounded_atomic(savepoint=False):
        # Serialises the callbacks of one stream (PostgreSQL; SQLite writes are serial
        # anyway): without it a DegradedStream could take a lower id than a StopStream
        # yet commit after it, and a worker could send the Stop first.
        _lock_streams([stream.pk])
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


def hangup_request_enqueue(*, call: Call, url: str, method: str, params: dict[str, str]) -> CallbackDelivery:
    """Write the outbox row of a call's hangup request; run in the transaction that ends the call.

    It belongs to the call, not to a stream, so no stream's order holds it back (nor does it
    hold any stream's callbacks back): one per call, delivered with the same signing, retries
    and attempt history as status callbacks.
    """
    delivery = CallbackDelivery.objects.create(
        call=call, account_id=call.account_id, event=HANGUP_REQUEST_EVENT, url=url, method=method, params=params
    )
    transaction.on_commit(lambda: _queue(delivery.pk))
    return delivery


def _queue(delivery_id: int, *, countdown: float | None = None, check_order: bool = True) -> None:
    queue_delivery(delivery_id, countdown=countdown, check_order=check_order)


def _account_full(limit: int) -> Exists:
    """True when `limit` deliveries of the row's account are already in flight."""
    in_flight = CallbackDelivery.objects.filter(
        account_id=OuterRef("account_id"), state=CallbackDelivery.State.DELIVERING
    ).order_by()
    return Exists(in_flight[limit - 1 : limit])


def callback_next(*, stream_id: int) -> int | None:
    """The delivery of this stream to send next, if any."""
    pending = CallbackDelivery.objects.filter(stream_id=stream_id, state=CallbackDelivery.State.PENDING)
    return pending.order_by("pk").values_list("pk", flat=True).first()


def callback_ready(*, account_id: int, now: datetime | None = None) -> int | None:
    """The oldest delivery of this account that could be sent right now (due, first in its stream)."""
    ready = CallbackDelivery.objects.filter(
        account_id=account_id, state=CallbackDelivery.State.PENDING, next_attempt_at__lte=now or timezone.now()
    ).exclude(earlier_open())
    return ready.order_by("pk").values_list("pk", flat=True).first()


def _policy() -> retry.Policy:
    return retry.Policy(
        max_attempts=settings.STREAMHUB_CALLBACK_MAX_ATTEMPTS,
        base=settings.STREAMHUB_CALLBACK_BACKOFF_SECONDS,
        cap=settings.STREAMHUB_CALLBACK_BACKOFF_MAX_SECONDS,
        max_age=settings.STREAMHUB_CALLBACK_MAX_AGE_SECONDS,
    )


def _account_concurrency() -> int:
    return max(1, int(settings.STREAMHUB_CALLBACK_ACCOUNT_CONCURRENCY))


def redacted_url(url: str) -> str:
    """For log lines: customers put tokens in callback query strings."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]  # no userinfo either
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _claim(delivery: CallbackDelivery, now: datetime) -> CallbackAttempt | None:
    with bounded_atomic():
        # The account's row lock first: claims of one account take turns, so two of them cannot
        # both count N-1 in flight and both claim (the limit was exceeded under a burst: a CI
        # run saw 6 of 4). Always account, then stream: no other path locks an account.
        list(Account.objects.select_for_update().filter(pk=delivery.account_id).values_list("pk"))
        # The stream's row lock orders this claim with a redelivery that reopens an earlier
        # callback of the stream (callback_redeliver): the claim's check then sees it open.
        _lock_streams([delivery.stream_id])
        claimed = (
            CallbackDelivery.objects.filter(
                pk=delivery.pk, state=CallbackDelivery.State.PENDING, next_attempt_at__lte=now
            )
            .exclude(earlier_open())
            .exclude(_account_full(_account_concurrency()))
            .update(state=CallbackDelivery.State.DELIVERING, claimed_at=now, attempt_count=F("attempt_count") + 1)
        )
        if not claimed:
            return None
        number = CallbackDelivery.objects.values_list("attempt_count", flat=True).get(pk=delivery.pk)
        return CallbackAttempt.objects.create(delivery_id=delivery.pk, number=number, started_at=now)


@dataclass(frozen=True)
class AttemptOutcome:
    action: str  # sent | done | not-due | waiting | account-busy | taken
    verdict: retry.Verdict | None = None
    account_id: int | None = None


def callback_attempt(*, delivery_id: int) -> AttemptOutcome:
    """Try delivery `delivery_id` once if it is due, first in its stream and claimable.

    Safe to run any number of times for the same id (duplicate tasks, sweep re-queues):
    only the caller whose conditional claim succeeds sends anything.
    """
    now = timezone.now()
    delivery = CallbackDelivery.objects.select_related("account").filter(pk=delivery_id).first()
    if delivery is None or delivery.state != CallbackDelivery.State.PENDING:
        return AttemptOutcome("done")
    if delivery.next_attempt_at > now:
        # An early or duplicate message: come back when it is due.
        _queue(delivery.pk, countdown=(delivery.next_attempt_at - now).total_seconds(), check_order=False)
        return AttemptOutcome("not-due")
    attempt = _claim(delivery, now)
    if attempt is None:
        if delivery_is_blocked(delivery.pk):
            return AttemptOutcome("waiting")
        fresh = CallbackDelivery.objects.filter(pk=delivery.pk).values_list("state", flat=True).first()
        if fresh == CallbackDelivery.State.PENDING:
            return AttemptOutcome("account-busy")  # a running task of the account will take it
        return AttemptOutcome("taken")

    prepared = http.prepare(method=delivery.method, url=delivery.url, params=delivery.params)
    nonce = signing.new_nonce()
    signed_params = delivery.params if delivery.method == "POST" else {}
    prepared.headers.update(
        signing.sign_callback(
            method=delivery.method,
            url=str(prepared.url),
            params=signed_params,
            auth_token=delivery.account.auth_token,
            nonce=nonce,
        )
    )
    prepared.headers["webhook-id"] = str(delivery.idempotency_id)
    result = http.send(
        prepared,
        timeout=settings.STREAMHUB_CALLBACK_TIMEOUT_SECONDS,
        excerpt_limit=CallbackAttempt.RESPONSE_EXCERPT_LIMIT,
        policy=EgressPolicy.from_settings(settings),
    )
    decision = retry.decide(
        status_code=result.status_code,
        error=result.error,
        attempt=attempt.number - delivery.budget_offset,
        created_at=delivery.budget_started,
        now=timezone.now(),
        idempotency_id=str(delivery.idempotency_id),
        policy=_policy(),
        retry_after=result.retry_after,
        permanent=result.permanent,
    )
    _finish(delivery, attempt, result, decision)
    metrics.attempt_finished(event=delivery.event, decision=decision, created_at=delivery.created_at)
    log.info(
        "callback %s %s #%d %s -> %s (%s, %d ms)",
        delivery.pk,
        delivery.event,
        attempt.number,
        redacted_url(delivery.url),
        decision.verdict.value,
        result.status_code or result.error,
        result.latency_ms,
        extra=callback_log_ids(delivery.params, delivery.event),
    )
    return AttemptOutcome("sent", decision.verdict, delivery.account_id)


def callback_run(*, delivery_id: int, budget: float = RUN_BUDGET_SECONDS) -> list[AttemptOutcome]:
    """Try `delivery_id`, then keep the account's slot busy with its oldest ready delivery.

    What a Celery task runs. Stops when the account has nothing ready (or its slots
    are full), or after `budget` seconds, handing the next ready delivery to a new task.
    """
    started = time.monotonic()
    outcomes = [callback_attempt(delivery_id=delivery_id)]
    while outcomes[-1].action == "sent" and outcomes[-1].account_id is not None:
        next_id = callback_ready(account_id=outcomes[-1].account_id)
        if next_id is None:
            break
        if time.monotonic() - started > budget:
            _queue(next_id, check_order=False)
            break
        outcomes.append(callback_attempt(delivery_id=next_id))
    return outcomes


def _finish(
    delivery: CallbackDelivery, attempt: CallbackAttempt, result: http.HttpResult, decision: retry.Decision
) -> None:
    now = timezone.now()
    state = CallbackDelivery.State
    with bounded_atomic():
        CallbackAttempt.objects.filter(pk=attempt.pk).update(
            status_code=result.status_code,
            latency_ms=result.latency_ms,
            error=result.error[:500],
            response_excerpt=result.body_excerpt[: CallbackAttempt.RESPONSE_EXCERPT_LIMIT],
        )
        # Conditional on our claim (state + try number): if the sweep took the row back
        # meanwhile, a success still counts (it saves a resend) but nothing else does.
        mine = CallbackDelivery.objects.filter(pk=delivery.pk, attempt_count=attempt.number)
        if decision.verdict is retry.Verdict.DELIVERED:
            mine.filter(state__in=OPEN_STATES).update(state=state.DELIVERED, delivered_at=now, last_error="")
        elif decision.verdict is retry.Verdict.RETRY and decision.retry_at is not None:
            done = mine.filter(state=state.DELIVERING).update(
                state=state.PENDING, next_attempt_at=decision.retry_at, last_error=decision.reason[:500]
            )
            if done:
                delay = max(0.0, (decision.retry_at - now).total_seconds())
                transaction.on_commit(lambda: _queue(delivery.pk, countdown=delay, check_order=False))
            return
        else:
            mine.filter(state=state.DELIVERING).update(state=state.FAILED, last_error=decision.reason[:500])


def _queue_next(stream_id: int | None) -> None:
    if stream_id is None:  # a call-level delivery: nothing waits behind it
        return
    next_id = callback_next(stream_id=stream_id)
    if next_id is not None:
        _queue(next_id, check_order=False)


# --- the sweep -----------------------------------------------------------------------


def callbacks_requeue_stale(*, now: datetime | None = None, limit: int = SWEEP_BATCH) -> int:
    """Re-queue deliveries that nothing is working on any more; returns how many."""
    now = now or timezone.now()
    deadline = now - timedelta(seconds=settings.STREAMHUB_CALLBACK_PENDING_DEADLINE_SECONDS)
    state = CallbackDelivery.State
    requeued = 0
    handled: set[int] = set()  # streams whose next delivery this sweep already queued

    # Claimed long ago and never finished: the worker died mid-try (SIGKILL, OOM, host
    # lost). The try counts; its attempt row says it was interrupted.
    stale: QuerySet[CallbackDelivery] = CallbackDelivery.objects.filter(
        state=state.DELIVERING, claimed_at__lt=deadline
    ).order_by("pk")
    for row in stale[:limit]:
        exhausted = row.budget_attempts >= settings.STREAMHUB_CALLBACK_MAX_ATTEMPTS
        with bounded_atomic():
            mine = CallbackDelivery.objects.filter(pk=row.pk, state=state.DELIVERING, attempt_count=row.attempt_count)
            if exhausted:
                taken = mine.update(
                    state=state.FAILED, last_error=f"worker lost mid-try; gave up after {row.budget_attempts} attempts"
                )
            else:
                taken = mine.update(state=state.PENDING, next_attempt_at=now, last_error=INTERRUPTED)
            if not taken:
                continue
            if row.stream_id is not None:
                handled.add(row.stream_id)
            CallbackAttempt.objects.filter(
                delivery_id=row.pk, number=row.attempt_count, status_code=None, error=""
            ).update(error=INTERRUPTED)
            if exhausted:
                transaction.on_commit(functools.partial(_queue_next, row.stream_id))
            else:
                transaction.on_commit(functools.partial(_queue, row.pk, check_order=False))
        requeued += 1

    # Pending, first in its stream, and due long ago: its broker message was lost (a
    # broker that was down at publish time, a worker that died holding it). Moving
    # next_attempt_at keeps the next sweeps from queueing it again and again.
    lost = (
        CallbackDelivery.objects.filter(state=state.PENDING, next_attempt_at__lt=deadline)
        .exclude(earlier_open())
        .order_by("pk")
        .values_list("pk", "stream_id", "next_attempt_at")
    )
    for pk, stream_id, due in lost[:limit]:
        if stream_id in handled:
            continue
        with bounded_atomic():
            if CallbackDelivery.objects.filter(pk=pk, state=state.PENDING, next_attempt_at=due).update(
                next_attempt_at=now
            ):
                transaction.on_commit(functools.partial(_queue, pk, check_order=False))
                requeued += 1
    return requeued


# --- redelivery (the console's action) ---------------------------------------------------


@dataclass
class Redelivery:
    queued: list[int]  # reset to pending with a fresh retry budget, in the order they go out
    refused: dict[int, str]  # failed, but sending it now would break its stream's order: why
    skipped: list[int]  # not failed (pending, in flight or delivered): left alone


def _lock_streams(stream_ids: list[int | None]) -> None:
    """Row-lock streams (in id order): callback_enqueue, _claim and callback_redeliver serialise on them."""
    ids = sorted({pk for pk in stream_ids if pk is not None})  # a call's own delivery has no stream
    list(Stream.objects.select_for_update().filter(pk__in=ids).order_by("pk").values_list("pk"))


def callback_redeliver(*, delivery_ids: list[int], now: datetime | None = None) -> Redelivery:
    """Send failed callbacks again, each with a fresh retry budget, without breaking per-stream order.

    A failed callback goes out again with the failed callbacks that follow it in its stream
    (so a redelivered StartStream is followed by its StopStream). It is refused when a later
    callback of its stream was already delivered or is being delivered: the receiver would get
    it after that one. Its attempt history and idempotency id are kept; tries are numbered on.
    """
    now = now or timezone.now()
    state = CallbackDelivery.State
    result = Redelivery([], {}, [])
    with transaction.atomic():
        selected = list(CallbackDelivery.objects.filter(pk__in=delivery_ids).order_by("pk"))
        _lock_streams([row.stream_id for row in selected])
        for row in CallbackDelivery.objects.filter(pk__in=[r.pk for r in selected]).order_by("pk"):
            if row.pk in result.queued:
                continue  # it went with an earlier one of its stream
            if row.state != state.FAILED:
                result.skipped.append(row.pk)
                continue
            # a call's own delivery (an application's hangup request) has no stream to keep order in
            later = (
                list(
                    CallbackDelivery.objects.filter(stream_id=row.stream_id, pk__gt=row.pk)
                    .order_by("pk")
                    .values_list("pk", "event", "state")
                )
                if row.stream_id is not None
                else []
            )
            ahead = next(
                ((pk, event, st) for pk, event, st in later if st in (state.DELIVERED, state.DELIVERING)), None
            )
            if ahead is not None:
                pk, event, st = ahead
                done = "was already delivered" if st == state.DELIVERED else "is being delivered"
                result.refused[row.pk] = (
                    f"#{pk} {event} of the same stream {done}; sent now, #{row.pk} {row.event} would reach "
                    "the receiver after it"
                )
                continue
            batch = [row.pk, *(pk for pk, _, st in later if st == state.FAILED)]
            for pk in batch:
                CallbackDelivery.objects.filter(pk=pk, state=state.FAILED).update(
                    state=state.PENDING,
                    next_attempt_at=now,
                    claimed_at=None,
                    budget_offset=F("attempt_count"),
                    budget_since=now,
                )
            result.queued.extend(batch)
        # Only the first of each stream is free to go; the task that delivers it goes on with the rest.
        for pk in result.queued:
            transaction.on_commit(functools.partial(_queue, pk))
    return result


def callbacks_sweep(*, now: datetime | None = None) -> dict[str, int]:
    now = now or timezone.now()
    return {"callbacks_requeued": callbacks_requeue_stale(now=now)}
