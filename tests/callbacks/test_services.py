"""Delivery, ordering and the sweep, run in-process against a real HTTP endpoint on 127.0.0.1.

The broker is the one thing replaced: `publish.send` is recorded instead of
published, so each test sees exactly what would have been queued.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from callbacks import publish, services, tasks
from callbacks.models import CallbackAttempt, CallbackDelivery, delivery_is_blocked
from callbacks.retry import Verdict
from streams import orphans
from streams import services as stream_services
from streams.models import Account, Call, HubProcess, Stream
from tests.callbacks.conftest import deliveries, open_stream, started_stream
from tests.callbacks.receiver import Receiver, Reply, Slow

State = CallbackDelivery.State
SPEC_PARAMS = {
    "Event",
    "StreamID",
    "CallUUID",
    "From",
    "To",
    "Direction",
    "ServiceURL",
    "Timestamp",
    "ParentAuthID",
    "status_callback_url",
    "status_callback_method",
    "bidirectional",
    "audioTrack",
    "streamTimeout",
    "contentType",
    "extraHeaders",
    "keepCallAlive",
}


class Published(list[tuple[int, float | None]]):
    def ids(self) -> list[int]:
        return [delivery_id for delivery_id, _ in self]


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> Published:
    sent = Published()
    lock = threading.Lock()

    def record(delivery_id: int, countdown: float | None) -> None:
        with lock:
            sent.append((delivery_id, countdown))

    monkeypatch.setattr(publish, "send", record)
    return sent


@pytest.fixture(autouse=True)
def _fast(settings: Any) -> None:
    settings.STREAMHUB_CALLBACK_BACKOFF_SECONDS = 2.0
    settings.STREAMHUB_CALLBACK_TIMEOUT_SECONDS = 2.0


def attempt(delivery: CallbackDelivery) -> str:
    return services.callback_attempt(delivery_id=delivery.pk).action


def test_the_outbox_row_is_written_with_the_event_and_queued_on_commit(
    account: Account, receiver: Receiver, published: Published, django_capture_on_commit_callbacks: Any
) -> None:
    url = receiver.url("/cb", account.auth_token)
    stream = open_stream(account, url)
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        assert stream_services.stream_mark_started(stream=stream)
    [delivery] = deliveries(stream)
    assert len(callbacks) == 1
    assert published.ids() == [delivery.pk]
    assert delivery.event == "StartStream" and delivery.state == State.PENDING
    assert delivery.url == url and delivery.method == "POST"
    assert set(delivery.params) >= SPEC_PARAMS
    assert stream.events.filter(event="StartStream").count() == 1


def test_a_rolled_back_event_leaves_no_callback(account: Account, receiver: Receiver, published: Published) -> None:
    stream = open_stream(account, receiver.url("/cb", account.auth_token))
    with pytest.raises(RuntimeError), transaction.atomic():
        stream_services.stream_degraded(stream=stream, usage=30)
        raise RuntimeError("the caller's transaction failed")
    assert deliveries(stream) == []
    assert published == []


def test_it_posts_the_spec_params_signed_with_the_account_token(
    account: Account, receiver: Receiver, published: Published, django_capture_on_commit_callbacks: Any
) -> None:
    stream = started_stream(account, receiver.url("/cb", account.auth_token))
    [delivery] = deliveries(stream)
    with django_capture_on_commit_callbacks(execute=True):
        assert attempt(delivery) == "sent"
    [hit] = receiver.hits_for("/cb")
    assert hit.method == "POST"
    assert hit.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert hit.signature_ok
    assert hit.webhook_id == str(delivery.idempotency_id)
    assert hit.params == delivery.params
    assert hit.params["Event"] == "StartStream"
    assert hit.params["StreamID"] == str(stream.stream_id)
    assert hit.params["ParentAuthID"] == account.auth_id
    assert "Error" not in hit.params
    delivery.refresh_from_db()
    assert delivery.state == State.DELIVERED and delivery.delivered_at is not None
    [row] = delivery.attempts.all()
    assert (row.number, row.status_code, row.error, row.response_excerpt) == (1, 200, "", "ok")
    assert delivery.attempt_count == 1


def test_get_callbacks_carry_the_params_in_the_query_string(
    account: Account, receiver: Receiver, published: Published
) -> None:
    url = receiver.url("/get-cb", account.auth_token) + "?customer=acme"
    stream = started_stream(account, url, method="GET")
    [delivery] = deliveries(stream)
    assert attempt(delivery) == "sent"
    [hit] = receiver.hits_for("/get-cb")
    assert hit.method == "GET" and hit.signature_ok
    assert hit.params["customer"] == "acme"
    assert hit.params["Event"] == "StartStream"
    assert hit.params["ServiceURL"] == stream.service_url


def test_a_delivered_callback_is_never_sent_again(account: Account, receiver: Receiver, published: Published) -> None:
    stream = started_stream(account, receiver.url("/cb", account.auth_token))
    [delivery] = deliveries(stream)
    assert attempt(delivery) == "sent"
    assert attempt(delivery) == "done"
    assert tasks.deliver.run(delivery.pk) == "done"
    assert len(receiver.hits_for("/cb")) == 1


def test_a_404_fails_at_once_and_the_next_callback_goes(
    account: Account, receiver: Receiver, published: Published
) -> None:
    stream = started_stream(account, receiver.url("/gone", account.auth_token, 404, default=200))
    stream_services.stream_end(stream=stream, reason=Stream.Reason.API_REQUEST, notify_session=False)
    start, stop = deliveries(stream)
    outcomes = services.callback_run(delivery_id=start.pk)
    assert [(o.action, o.verdict) for o in outcomes] == [("sent", Verdict.FAIL), ("sent", Verdict.DELIVERED)]
    start.refresh_from_db()
    stop.refresh_from_db()
    assert start.state == State.FAILED and stop.state == State.DELIVERED
    assert start.last_error == "HTTP 404 (not retried)"
    assert [a.status_code for a in start.attempts.all()] == [404]
    assert [h.status for h in receiver.hits_for("/gone")] == [404, 200]


def test_a_503_is_retried_later_and_not_before_it_is_due(
    account: Account, receiver: Receiver, published: Published, django_capture_on_commit_callbacks: Any
) -> None:
    stream = started_stream(account, receiver.url("/busy", account.auth_token, Reply(503, body=b"x" * 2000)))
    [delivery] = deliveries(stream)
    before = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        assert attempt(delivery) == "sent"
    delivery.refresh_from_db()
    assert delivery.state == State.PENDING and delivery.last_error == "HTTP 503"
    assert before <= delivery.next_attempt_at <= timezone.now() + timedelta(seconds=2)
    [row] = delivery.attempts.all()
    assert row.status_code == 503 and len(row.response_excerpt) == CallbackAttempt.RESPONSE_EXCERPT_LIMIT
    [(queued_id, countdown)] = published
    assert queued_id == delivery.pk and countdown is not None and 0 <= countdown <= 2

    # Early (or duplicate) message: nothing is sent, it comes back when due.
    CallbackDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now() + timedelta(seconds=30))
    assert attempt(delivery) == "not-due"
    assert len(receiver.hits_for("/busy")) == 1
    assert 29 < published[-1][1] <= 30  # type: ignore[operator]

    CallbackDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    assert attempt(delivery) == "sent"
    delivery.refresh_from_db()
    assert delivery.state == State.DELIVERED
    assert [(a.number, a.status_code) for a in delivery.attempts.all()] == [(1, 503), (2, 200)]
    assert len({hit.webhook_id for hit in receiver.hits_for("/busy")}) == 1


def test_retry_after_is_honoured(account: Account, receiver: Receiver, published: Published) -> None:
    stream = started_stream(account, receiver.url("/limit", account.auth_token, Reply(429, {"Retry-After": "30"})))
    [delivery] = deliveries(stream)
    assert attempt(delivery) == "sent"
    delivery.refresh_from_db()
    wait = (delivery.next_attempt_at - timezone.now()).total_seconds()
    assert 28 < wait <= 30


def test_attempts_are_bounded(account: Account, receiver: Receiver, published: Published, settings: Any) -> None:
    settings.STREAMHUB_CALLBACK_MAX_ATTEMPTS = 2
    stream = started_stream(account, receiver.url("/down", account.auth_token, default=500))
    [delivery] = deliveries(stream)
    assert attempt(delivery) == "sent"
    CallbackDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    assert attempt(delivery) == "sent"
    delivery.refresh_from_db()
    assert delivery.state == State.FAILED
    assert delivery.last_error == "HTTP 500; gave up after 2 attempts"
    assert delivery.attempts.count() == 2


def test_timeouts_and_refused_connections_are_retried(
    account: Account, receiver: Receiver, published: Published, settings: Any
) -> None:
    settings.STREAMHUB_CALLBACK_TIMEOUT_SECONDS = 0.3
    slow = started_stream(account, receiver.url("/slow", account.auth_token, Slow(1.0)))
    from tests.conftest import free_port

    refused = started_stream(account, f"http://127.0.0.1:{free_port()}/nobody")
    for stream, expected in ((slow, "timeout after 0.3 s"), (refused, "connection error: ConnectionError")):
        [delivery] = deliveries(stream)
        assert attempt(delivery) == "sent"
        delivery.refresh_from_db()
        [row] = delivery.attempts.all()
        assert row.status_code is None and row.error.startswith(expected)
        assert delivery.state == State.PENDING and delivery.last_error.startswith(expected)


def test_a_later_callback_waits_for_the_earlier_one(
    account: Account, receiver: Receiver, published: Published, django_capture_on_commit_callbacks: Any
) -> None:
    stream = started_stream(account, receiver.url("/cb", account.auth_token))
    with django_capture_on_commit_callbacks(execute=True):
        stream_services.stream_end(stream=stream, reason=Stream.Reason.CALL_HANGUP, notify_session=False)
    start, stop = deliveries(stream)
    assert published.ids() == []  # Stop is behind Start: not queued at all
    assert delivery_is_blocked(stop.pk)
    assert attempt(stop) == "waiting"
    assert receiver.hits_for("/cb") == []
    assert services.callback_ready(account_id=account.pk) == start.pk
    assert attempt(start) == "sent"
    assert services.callback_ready(account_id=account.pk) == stop.pk
    assert attempt(stop) == "sent"
    assert [hit.params["Event"] for hit in receiver.hits_for("/cb")] == ["StartStream", "StopStream"]


def test_one_account_cannot_fill_every_slot(
    account: Account, other_account: Account, receiver: Receiver, published: Published, settings: Any
) -> None:
    settings.STREAMHUB_CALLBACK_ACCOUNT_CONCURRENCY = 1
    busy = started_stream(account, receiver.url("/a", account.auth_token))
    CallbackDelivery.objects.filter(stream=busy).update(state=State.DELIVERING, claimed_at=timezone.now())
    waiting = started_stream(account, receiver.url("/a", account.auth_token))
    other = started_stream(other_account, receiver.url("/b", other_account.auth_token))
    published.clear()
    assert attempt(deliveries(waiting)[0]) == "account-busy"
    assert published == []  # not re-queued: the account's running task goes on with it
    assert attempt(deliveries(other)[0]) == "sent"
    assert receiver.hits_for("/a") == [] and len(receiver.hits_for("/b")) == 1


def test_a_task_goes_on_with_its_accounts_backlog_oldest_first(
    account: Account, other_account: Account, receiver: Receiver, published: Published
) -> None:
    first = started_stream(account, receiver.url("/a", account.auth_token))
    second = started_stream(account, receiver.url("/a", account.auth_token))
    elsewhere = started_stream(other_account, receiver.url("/b", other_account.auth_token))
    for stream in (first, second, elsewhere):
        stream_services.stream_end(stream=stream, reason=Stream.Reason.API_REQUEST, notify_session=False)
    outcomes = services.callback_run(delivery_id=deliveries(first)[0].pk)
    assert [o.action for o in outcomes] == ["sent"] * 4
    sent = [(h.params["StreamID"], h.params["Event"]) for h in receiver.hits_for("/a")]
    assert sent == [
        (str(first.stream_id), "StartStream"),
        (str(second.stream_id), "StartStream"),
        (str(first.stream_id), "StopStream"),
        (str(second.stream_id), "StopStream"),
    ]
    assert receiver.hits_for("/b") == []  # another account's work is its own tasks' business


def test_a_task_hands_over_when_its_time_is_up(account: Account, receiver: Receiver, published: Published) -> None:
    stream = started_stream(account, receiver.url("/a", account.auth_token))
    stream_services.stream_end(stream=stream, reason=Stream.Reason.API_REQUEST, notify_session=False)
    start, stop = deliveries(stream)
    published.clear()
    assert [o.action for o in services.callback_run(delivery_id=start.pk, budget=0)] == ["sent"]
    assert published == [(stop.pk, None)]


@pytest.mark.django_db(transaction=True)
def test_racing_threads_deliver_each_callback_once_and_in_order(
    account: Account, receiver: Receiver, published: Published
) -> None:
    streams = [started_stream(account, receiver.url(f"/race{i}", account.auth_token)) for i in range(3)]
    for stream in streams:
        stream_services.stream_degraded(stream=stream, usage=30)
        stream_services.stream_end(stream=stream, reason=Stream.Reason.API_REQUEST, notify_session=False)
    ids = [d.pk for s in streams for d in deliveries(s)]
    barrier = threading.Barrier(6)

    def worker() -> None:
        barrier.wait()
        try:
            for _ in range(40):
                if not CallbackDelivery.objects.exclude(state=State.DELIVERED).exists():
                    return
                for delivery_id in reversed(ids):  # later callbacks first: the worst case
                    services.callback_attempt(delivery_id=delivery_id)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for i, stream in enumerate(streams):
        hits = receiver.hits_for(f"/race{i}")
        assert [h.params["Event"] for h in hits] == ["StartStream", "DegradedStream", "StopStream"]
        assert [d.attempt_count for d in deliveries(stream)] == [1, 1, 1]


def test_the_sweep_requeues_a_delivery_a_dead_worker_held(
    account: Account, receiver: Receiver, published: Published, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.STREAMHUB_CALLBACK_PENDING_DEADLINE_SECONDS = 120
    stream = started_stream(account, receiver.url("/cb", account.auth_token))
    [delivery] = deliveries(stream)
    now = timezone.now()
    claimed = services._claim(delivery, now)  # a worker claimed it, then died
    assert claimed is not None
    with django_capture_on_commit_callbacks(execute=True):
        assert services.callbacks_requeue_stale(now=now + timedelta(seconds=60)) == 0
        assert services.callbacks_requeue_stale(now=now + timedelta(seconds=121)) == 1
    delivery.refresh_from_db()
    assert delivery.state == State.PENDING and delivery.last_error == services.INTERRUPTED
    assert [a.error for a in delivery.attempts.all()] == [services.INTERRUPTED]
    assert published.ids() == [delivery.pk]
    CallbackDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())  # the fake clock ran ahead
    assert attempt(delivery) == "sent"
    delivery.refresh_from_db()
    assert delivery.state == State.DELIVERED
    assert [(a.number, a.status_code) for a in delivery.attempts.all()] == [(1, None), (2, 200)]


def test_a_dead_worker_on_the_last_attempt_fails_the_delivery(
    account: Account, receiver: Receiver, published: Published, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.STREAMHUB_CALLBACK_MAX_ATTEMPTS = 1
    stream = started_stream(account, receiver.url("/cb", account.auth_token))
    stream_services.stream_end(stream=stream, reason=Stream.Reason.API_REQUEST, notify_session=False)
    start, stop = deliveries(stream)
    now = timezone.now()
    assert services._claim(start, now) is not None
    with django_capture_on_commit_callbacks(execute=True):
        services.callbacks_requeue_stale(now=now + timedelta(hours=1))
    start.refresh_from_db()
    assert start.state == State.FAILED and "gave up after 1 attempts" in start.last_error
    assert published.ids() == [stop.pk]


def test_the_sweep_requeues_lost_messages_only_for_the_head_of_each_stream(
    account: Account, receiver: Receiver, published: Published, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.STREAMHUB_CALLBACK_PENDING_DEADLINE_SECONDS = 120
    stream = started_stream(account, receiver.url("/cb", account.auth_token))
    stream_services.stream_end(stream=stream, reason=Stream.Reason.API_REQUEST, notify_session=False)
    start, _stop = deliveries(stream)
    later = timezone.now() + timedelta(seconds=200)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.callbacks_requeue_stale(now=timezone.now()) == 0
        assert services.callbacks_requeue_stale(now=later) == 1
        # Re-queued once per deadline, not on every sweep.
        assert services.callbacks_requeue_stale(now=later + timedelta(seconds=30)) == 0
    assert published.ids() == [start.pk]


def orphan_setup(account: Account, receiver: Receiver) -> tuple[Stream, Stream]:
    url = receiver.url("/cb", account.auth_token)
    dead = started_stream(account, url)
    alive = started_stream(account, url)
    Call.objects.filter(pk=alive.call_id).update(server_id="hub-alive")
    Stream.objects.filter(pk=alive.pk).update(server_id="hub-alive")
    lease, _ = HubProcess.objects.get_or_create(server_id="hub-alive")
    lease.heartbeat_at = timezone.now() + timedelta(hours=1)
    lease.calls = [*lease.calls, alive.call_id]  # it holds its calls
    lease.save()
    return dead, alive


def test_the_sweep_ends_streams_of_a_dead_hub_once(
    account: Account, receiver: Receiver, published: Published, settings: Any
) -> None:
    settings.STREAMHUB_ORPHAN_AFTER_SECONDS = 60
    dead, alive = orphan_setup(account, receiver)
    assert orphans.streams_close_orphaned(now=timezone.now()) == 0  # too young to judge
    later = timezone.now() + timedelta(seconds=61)
    assert orphans.streams_close_orphaned(now=later) == 1
    assert orphans.streams_close_orphaned(now=later) == 0
    dead.refresh_from_db()
    alive.refresh_from_db()
    assert dead.status == Stream.Status.FAILED and dead.hangup_reason == Stream.Reason.CONNECTION_ERROR
    assert dead.end_time is not None and dead.rounded_bill_duration == 60 and dead.billed_amount > 0
    assert alive.is_active
    assert Call.objects.get(pk=dead.call_id).status == Call.Status.ENDED
    assert Call.objects.get(pk=alive.call_id).status == Call.Status.LIVE
    _start, dropped = deliveries(dead)
    assert dropped.event == "DroppedStream"
    assert dropped.params["Error"] == f"hub process {dead.server_id} stopped responding"
    assert dead.events.filter(event="DroppedStream").count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_sweepers_at_once_end_each_orphan_exactly_once(
    account: Account, receiver: Receiver, published: Published, settings: Any
) -> None:
    settings.STREAMHUB_ORPHAN_AFTER_SECONDS = 60
    orphaned = [orphan_setup(account, receiver)[0] for _ in range(4)]
    later = timezone.now() + timedelta(seconds=61)
    barrier = threading.Barrier(2)
    results: list[int] = []

    def sweeper() -> None:
        barrier.wait()
        try:
            results.append(orphans.streams_close_orphaned(now=later))
        finally:
            connection.close()

    threads = [threading.Thread(target=sweeper) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 2 and sum(results) == 4
    for stream in orphaned:
        assert [d.event for d in deliveries(stream)] == ["StartStream", "DroppedStream"]
        assert stream.events.filter(event="DroppedStream").count() == 1


# --- redelivery (issue 15 §4) ----------------------------------------------------------------


def fail_all(stream: Stream, *, attempts: int = 2) -> None:
    """As if every delivery of the stream had used its tries long ago."""
    long_ago = timezone.now() - timedelta(hours=5)
    CallbackDelivery.objects.filter(stream=stream).update(
        state=State.FAILED, attempt_count=attempts, created_at=long_ago, last_error="HTTP 500; gave up"
    )


def test_a_redelivered_callback_gets_a_fresh_retry_budget(
    account: Account, receiver: Receiver, published: Published, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    """Before: it kept attempt_count and created_at, so one more 500 failed it for good (tries and age used up)."""
    settings.STREAMHUB_CALLBACK_MAX_ATTEMPTS = 2
    stream = started_stream(account, receiver.url("/flaky", account.auth_token, 500, 500, 500, default=200))
    [delivery] = deliveries(stream)
    fail_all(stream)
    with django_capture_on_commit_callbacks(execute=True):
        result = services.callback_redeliver(delivery_ids=[delivery.pk])
    assert result.queued == [delivery.pk] and published.ids() == [delivery.pk]

    assert attempt(delivery) == "sent"  # a 500: retried, not failed
    delivery.refresh_from_db()
    assert delivery.state == State.PENDING and delivery.attempt_count == 3
    CallbackDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    assert attempt(delivery) == "sent"  # the second 500 of this budget: it gives up again
    delivery.refresh_from_db()
    assert delivery.state == State.FAILED and delivery.last_error == "HTTP 500; gave up after 2 attempts"
    assert [a.number for a in delivery.attempts.all()] == [3, 4]  # numbering goes on

    services.callback_redeliver(delivery_ids=[delivery.pk])
    CallbackDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    assert attempt(delivery) == "sent"  # the third 500
    assert attempt_after_due(delivery) == "sent"  # then 200
    delivery.refresh_from_db()
    assert delivery.state == State.DELIVERED


def attempt_after_due(delivery: CallbackDelivery) -> str:
    CallbackDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
    return attempt(delivery)


def test_a_start_is_not_redelivered_after_its_stop_was_delivered(
    account: Account, receiver: Receiver, published: Published
) -> None:
    """Before: the StartStream went out after the StopStream the receiver already had."""
    stream = started_stream(account, receiver.url("/cb", account.auth_token))
    stream_services.stream_end(stream=stream, reason=Stream.Reason.API_REQUEST, notify_session=False)
    start, stop = deliveries(stream)
    fail_all(stream)
    CallbackDelivery.objects.filter(pk=stop.pk).update(state=State.DELIVERED)
    result = services.callback_redeliver(delivery_ids=[start.pk])
    assert result.queued == [] and list(result.refused) == [start.pk]
    assert result.refused[start.pk] == (
        f"#{stop.pk} StopStream of the same stream was already delivered; sent now, #{start.pk} StartStream "
        "would reach the receiver after it"
    )
    start.refresh_from_db()
    assert start.state == State.FAILED

    CallbackDelivery.objects.filter(pk=stop.pk).update(state=State.DELIVERING)
    assert "is being delivered" in services.callback_redeliver(delivery_ids=[start.pk]).refused[start.pk]


def test_a_redelivered_callback_takes_the_failed_ones_after_it_along_in_order(
    account: Account, receiver: Receiver, published: Published, django_capture_on_commit_callbacks: Any
) -> None:
    stream = started_stream(account, receiver.url("/cb", account.auth_token))
    stream_services.stream_degraded(stream=stream, usage=30)
    stream_services.stream_end(stream=stream, reason=Stream.Reason.API_REQUEST, notify_session=False)
    start, degraded, stop = deliveries(stream)
    fail_all(stream)
    with django_capture_on_commit_callbacks(execute=True):
        result = services.callback_redeliver(delivery_ids=[stop.pk, start.pk])
    assert result.queued == [start.pk, degraded.pk, stop.pk] and result.refused == {} and result.skipped == []
    assert published.ids() == [start.pk]  # the others wait behind it: the task goes on with them
    assert attempt(stop) == "waiting"
    outcomes = services.callback_run(delivery_id=start.pk)
    assert [o.action for o in outcomes] == ["sent", "sent", "sent"]
    assert [h.params["Event"] for h in receiver.hits_for("/cb")] == ["StartStream", "DegradedStream", "StopStream"]


@pytest.mark.django_db(transaction=True)
def test_a_claim_racing_a_redelivery_cannot_overtake_the_reopened_callback(
    account: Account, receiver: Receiver, published: Published
) -> None:
    """The redelivery reopens an earlier callback inside its transaction; a worker claiming a later one
    of the same stream at that moment waits for the stream's row lock, then sees it open."""
    stream = started_stream(account, receiver.url("/cb", account.auth_token))
    stream_services.stream_end(stream=stream, reason=Stream.Reason.API_REQUEST, notify_session=False)
    start, stop = deliveries(stream)
    CallbackDelivery.objects.filter(pk=start.pk).update(state=State.FAILED, attempt_count=8)
    claims: list[object] = []
    inside = threading.Event()

    def worker() -> None:
        inside.wait(10)
        try:
            claims.append(services._claim(stop, timezone.now()))
        finally:
            connection.close()

    thread = threading.Thread(target=worker)
    thread.start()
    with transaction.atomic():
        services.callback_redeliver(delivery_ids=[start.pk])
        inside.set()
        time.sleep(0.5)  # the worker's claim runs now, against the uncommitted redelivery
    thread.join(10)
    assert claims == [None]  # it waited, then found the StartStream open before it
    assert attempt(start) == "sent" and attempt(stop) == "sent"
    assert [h.params["Event"] for h in receiver.hits_for("/cb")] == ["StartStream", "StopStream"]
