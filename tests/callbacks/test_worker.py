"""Callbacks end to end: a real Celery worker subprocess, the configured broker, HTTP on 127.0.0.1.

Rows are committed (transactional tests) so the worker sees them; the worker runs
with shortened retry settings passed through its environment.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from django.conf import settings
from django.db import transaction

from callbacks import publish, retry, services
from callbacks.models import CallbackDelivery
from streamhub.celery import app as celery_app
from streams import services as stream_services
from streams.models import Account, Stream
from tests.callbacks.conftest import FAST, deliveries, started_stream
from tests.callbacks.receiver import Drip, Hang, Receiver, Slow
from tests.conftest import Proc, free_port

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
State = CallbackDelivery.State


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def all_settled() -> bool:
    return not CallbackDelivery.objects.filter(state__in=services.OPEN_STATES).exists()


def growing_jitter_id(base: float, margin: float) -> uuid.UUID:
    """An idempotency id whose first three backoff delays grow by more than `margin` each.

    The jitter is derived from the id (see callbacks.retry), so the test can pick one
    for which full jitter happens to grow, and the broker's polling noise cannot reorder the gaps.
    """
    for _ in range(100_000):
        candidate = uuid.uuid4()
        delays = [retry.backoff_delay(str(candidate), n, base=base, cap=60) for n in (1, 2, 3)]
        if delays[0] < 0.3 and delays[1] - delays[0] > margin and delays[2] - delays[1] > margin:
            return candidate
    raise AssertionError(f"no id gives gaps growing by {margin} s with base {base} s")


def test_a_503_endpoint_gets_four_tries_with_growing_gaps_and_a_404_gets_one(
    account: Account, receiver: Receiver, worker_factory: Callable[..., Proc]
) -> None:
    flaky = started_stream(account, receiver.url("/flaky", account.auth_token, 503, 503, 503, default=200))
    gone = started_stream(account, receiver.url("/gone", account.auth_token, default=404))
    [delivery] = deliveries(flaky)
    # The worker is not running yet: fix this delivery's jitter before it is first tried,
    # with room for the broker's delivery latency (a filesystem broker is polled).
    poll = 0.0 if settings.REDIS_URL else float(settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("polling_interval", 1.0))
    margin = 2 * poll + 0.4
    base = 1.0 if margin < 1 else 2.0
    CallbackDelivery.objects.filter(pk=delivery.pk).update(idempotency_id=growing_jitter_id(base, margin))
    delivery.refresh_from_db()

    worker_factory(**{**FAST, "STREAMHUB_CALLBACK_BACKOFF_SECONDS": str(base)})
    receiver.wait(lambda: len(receiver.acknowledged) == 1 and len(receiver.hits_for("/gone")) == 1, 30, "deliveries")
    wait_until(all_settled, 10, "rows settled")

    hits = receiver.hits_for("/flaky")
    assert [hit.status for hit in hits] == [503, 503, 503, 200]
    assert all(hit.signature_ok and hit.webhook_id == str(delivery.idempotency_id) for hit in hits)
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(hits)]
    assert gaps[0] < gaps[1] < gaps[2], gaps
    delivery.refresh_from_db()
    assert delivery.state == State.DELIVERED
    assert [(a.number, a.status_code) for a in delivery.attempts.all()] == [(1, 503), (2, 503), (3, 503), (4, 200)]

    [failed] = deliveries(gone)
    assert failed.state == State.FAILED and failed.last_error == "HTTP 404 (not retried)"
    assert [a.status_code for a in failed.attempts.all()] == [404]
    assert len(receiver.hits_for("/gone")) == 1


def test_a_worker_killed_mid_delivery_loses_nothing_and_sends_nothing_twice(
    account: Account, receiver: Receiver, worker_factory: Callable[..., Proc]
) -> None:
    release = threading.Event()
    url = receiver.url("/idem", account.auth_token, Hang(release), default=200)
    stream = started_stream(account, url)
    stream_services.stream_end(stream=stream, reason=Stream.Reason.API_REQUEST, notify_session=False)
    start, stop = deliveries(stream)

    doomed = worker_factory(
        "doomed",
        **{**FAST, "STREAMHUB_CALLBACK_TIMEOUT_SECONDS": "30", "STREAMHUB_CALLBACK_PENDING_DEADLINE_SECONDS": "60"},
    )
    receiver.wait(lambda: len(receiver.hits_for("/idem")) == 1, 20, "the first try to arrive")
    doomed.stop(signal.SIGKILL)
    release.set()
    start.refresh_from_db()
    assert start.state == State.DELIVERING  # claimed by a worker that no longer exists

    worker_factory("rescuer", beat=True, **{**FAST, "STREAMHUB_SWEEP_SECONDS": "0.5"})
    receiver.wait(lambda: len(receiver.acknowledged) == 2, 30, "both callbacks acknowledged")
    wait_until(all_settled, 10, "rows settled")

    hits = receiver.hits_for("/idem")
    assert [(h.params["Event"], h.webhook_id) for h in hits] == [
        ("StartStream", str(start.idempotency_id)),  # the interrupted try
        ("StartStream", str(start.idempotency_id)),  # re-sent by the rescuer: deduplicated
        ("StopStream", str(stop.idempotency_id)),
    ]
    assert [p["Event"] for p in receiver.acknowledged.values()] == ["StartStream", "StopStream"]
    start.refresh_from_db()
    assert start.state == State.DELIVERED
    assert [(a.number, a.status_code, a.error) for a in start.attempts.all()] == [
        (1, None, services.INTERRUPTED),
        (2, 200, ""),
    ]


@contextlib.contextmanager
def celery_broker(url: str) -> Iterator[None]:
    """Point this process's Celery publisher at another broker for a while."""
    old = celery_app.conf.broker_url

    def switch(to: str) -> None:
        celery_app.conf.broker_url = to
        celery_app._pool = None
        celery_app.amqp._producer_pool = None

    switch(url)
    try:
        yield
    finally:
        switch(old)


class RedisServer:
    """A private redis-server on a free loopback port that a test can stop and start."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"],
            cwd=self.tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        wait_until(lambda: self._ping(client), 10, "redis-server to answer")

    @staticmethod
    def _ping(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@contextlib.contextmanager
def broker_outage(
    tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Callable[[], None], Callable[[], None], dict[str, str]]]:
    """(stop, start, worker env) for the broker this configuration runs on."""
    # This process stops trying a broker that failed for a while; the outage ends with the test.
    monkeypatch.setattr(publish, "_broker_down_until", 0.0)
    if settings.REDIS_URL:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed")
        server = RedisServer(tmp)
        server.start()
        try:
            with celery_broker(server.url):
                yield server.stop, server.start, {"REDIS_URL": server.url}
        finally:
            server.stop()
    else:
        # The filesystem broker is a folder: taking it away is the outage.
        queue = settings.BROKER_DIR / "queue"
        away = settings.BROKER_DIR / "queue.down"

        def stop() -> None:
            os.rename(queue, away)

        def start() -> None:
            os.rename(away, queue)

        try:
            yield stop, start, {}
        finally:
            if away.exists() and not queue.exists():
                start()


def test_callbacks_created_while_the_broker_is_down_are_all_delivered_once(
    account: Account,
    receiver: Receiver,
    worker_factory: Callable[..., Proc],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with broker_outage(tmp_path, monkeypatch) as (stop_broker, start_broker, env):
        url = receiver.url("/outage", account.auth_token)
        before = started_stream(account, url)  # delivered while the broker is up
        stop_broker()
        outage_began = time.monotonic()
        streams = [started_stream(account, url) for _ in range(5)]
        for stream in streams:
            stream_services.stream_end(stream=stream, reason=Stream.Reason.CALL_HANGUP, notify_session=False)
        assert time.monotonic() - outage_began < 10  # the broker was tried once, not for every callback
        created = CallbackDelivery.objects.count()
        assert created == 11
        start_broker()
        worker_factory(beat=True, **{**FAST, "STREAMHUB_SWEEP_SECONDS": "0.5", **env})
        receiver.wait(lambda: len(receiver.acknowledged) == created, 30, "every callback acknowledged")
        wait_until(all_settled, 10, "rows settled")

    assert len(receiver.hits_for("/outage")) == created  # nothing sent twice
    assert deliveries(before)[0].state == State.DELIVERED
    for stream in streams:
        events = [p["Event"] for p in receiver.acknowledged.values() if p["StreamID"] == str(stream.stream_id)]
        assert events == ["StartStream", "StopStream"]
    assert set(CallbackDelivery.objects.values_list("state", flat=True)) == {State.DELIVERED}


def test_a_thousand_callbacks_over_a_hundred_streams_arrive_in_order(
    account: Account, receiver: Receiver, worker_factory: Callable[..., Proc]
) -> None:
    url = receiver.url("/bulk", account.auth_token)
    streams = []
    for _ in range(100):
        with transaction.atomic():  # one commit per stream keeps the set-up quick; same rows
            stream = started_stream(account, url)
            for usage in (30, 60, 90, 30, 60, 90, 30, 60):
                stream_services.stream_degraded(stream=stream, usage=usage)
            stream_services.stream_end(stream=stream, reason=Stream.Reason.CALL_HANGUP, notify_session=False)
        streams.append(stream)
    assert CallbackDelivery.objects.count() == 1000
    order = {str(d.idempotency_id): d.pk for d in CallbackDelivery.objects.all()}

    worker_factory(**FAST)
    began = time.monotonic()
    receiver.wait(lambda: len(receiver.acknowledged) == 1000, 60, "1,000 callbacks")
    took = time.monotonic() - began
    wait_until(all_settled, 10, "rows settled")
    rate = 1000 / took
    print(f"\n1,000 callbacks over 100 streams, 1 worker (8 threads): {took:.1f} s, {rate:.0f} deliveries/s")

    hits = receiver.hits_for("/bulk")
    assert len(hits) == 1000 and all(hit.signature_ok for hit in hits)
    by_stream: dict[str, list[int]] = {}
    for hit in hits:
        by_stream.setdefault(hit.params["StreamID"], []).append(order[hit.webhook_id])
    assert len(by_stream) == 100
    for ids in by_stream.values():
        assert ids == sorted(ids) and len(ids) == 10
    events = [hit.params["Event"] for hit in hits if hit.params["StreamID"] == str(streams[0].stream_id)]
    assert events == ["StartStream", *["DegradedStream"] * 8, "StopStream"]


def test_a_slow_endpoint_does_not_hold_back_another_accounts_callbacks(
    account: Account, other_account: Account, receiver: Receiver, worker_factory: Callable[..., Proc]
) -> None:
    slow = 4.0
    slow_url = receiver.url("/slow", account.auth_token, default=Slow(slow))
    fast_url = receiver.url("/fast", other_account.auth_token)
    worker_factory(
        **{**FAST, "STREAMHUB_CALLBACK_TIMEOUT_SECONDS": "10", "STREAMHUB_CALLBACK_PENDING_DEADLINE_SECONDS": "20"}
    )
    try:
        for _ in range(10):
            started_stream(account, slow_url)  # more than the worker has threads
        receiver.wait(lambda: len(receiver.hits_for("/slow")) >= 1, 10, "the slow endpoint to be busy")
        started_stream(other_account, fast_url)
        receiver.wait(lambda: len(receiver.hits_for("/fast")) == 1, 10, "the other account's callback")
        slow_hits = receiver.hits_for("/slow")
        fast_hit = receiver.hits_for("/fast")[0]
        # Through while every slow request sent so far is still hanging: it waited for no thread.
        assert fast_hit.at < slow_hits[0].at + slow
        # Only the account's share of the worker's threads is tied up by its slow endpoint.
        assert len([hit for hit in slow_hits if hit.at < slow_hits[0].at + slow - 0.5]) <= (
            settings.STREAMHUB_CALLBACK_ACCOUNT_CONCURRENCY
        )
    finally:
        receiver.closing.set()  # let the worker's threads go at teardown


def test_a_dripping_endpoint_never_has_two_tries_of_one_callback_at_once(
    account: Account, receiver: Receiver, worker_factory: Callable[..., Proc]
) -> None:
    """Issue 15 §4: requests' timeouts are per read, so a server dripping a byte every 0.5 s held a
    try far past the pending deadline; the sweep then re-queued the delivery and it went out twice."""
    url = receiver.url("/drip", account.auth_token, Drip(0.5), default=200)
    stream = started_stream(account, url)
    [start] = deliveries(stream)
    worker_factory(beat=True, **{**FAST, "STREAMHUB_SWEEP_SECONDS": "0.5"})  # try deadline 2 s, sweep after 4 s
    receiver.wait(lambda: len(receiver.acknowledged) == 1, 40, "the callback acknowledged")
    wait_until(all_settled, 10, "rows settled")

    first, *later = receiver.hits_for("/drip")
    receiver.wait(lambda: first.done > 0, 10, "the drip to notice the sender left")
    assert first.done - first.at < 4.0  # the try gave up at its 2 s deadline (the drip alone lasts ~20 s)
    assert later and all(hit.at >= first.done - 0.5 for hit in later)  # no second try while the first ran
    start.refresh_from_db()
    assert start.state == State.DELIVERED
    assert [(a.number, a.status_code, a.error) for a in start.attempts.all()][:2] == [
        (1, None, "timeout after 2 s"),
        (2, 200, ""),
    ]
