"""/readyz: capacity, event-loop lag, the database and Redis; the loop-lag figure itself."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import requests
from django.test import Client, override_settings

from streams.live import health, looplag
from streams.live.admission import admission
from tests.conftest import Proc, free_port


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_loop_lag_is_how_late_the_ticker_woke_and_counts_an_overdue_tick() -> None:
    clock = FakeClock()
    lag = looplag.LoopLag(clock)
    seen: list[float] = []
    lag.observers.append(seen.append)
    assert lag.current() == 0.0
    lag.tick_started(0.1)
    clock.now += 0.1004
    assert lag.tick_done() == pytest.approx(0.0004)
    lag.tick_started(0.1)
    clock.now += 0.05
    assert lag.current() == pytest.approx(0.0004)  # the pending tick is not due yet
    clock.now += 1.05  # the loop is stuck: the tick is a second overdue and nobody has measured it yet
    assert lag.current() == pytest.approx(1.0)
    assert lag.tick_done() == pytest.approx(1.0)
    assert seen == [pytest.approx(0.0004), pytest.approx(1.0)]


def test_sustained_lag_ignores_one_late_tick_but_not_a_late_loop() -> None:
    clock = FakeClock()
    lag = looplag.LoopLag(clock)

    def tick(late: float) -> None:
        lag.tick_started(0.1)
        clock.now += 0.1 + late
        lag.tick_done()

    tick(0.9)  # the first request imported the URL configuration on the loop
    assert lag.current() == pytest.approx(0.9) and lag.sustained() == 0.0  # not enough ticks to judge
    for _ in range(4):
        tick(0.001)
    assert lag.sustained() == pytest.approx(0.001)
    for _ in range(10):
        tick(0.6)  # overloaded: late on every tick
    assert lag.sustained() == pytest.approx(0.6)
    lag.tick_started(0.1)
    clock.now += 5  # stuck right now
    assert lag.sustained() == pytest.approx(4.9)


def test_a_cached_check_probes_at_most_once_per_ttl_and_says_what_failed() -> None:
    clock = FakeClock()
    calls: list[int] = []

    def probe() -> None:
        calls.append(1)
        if len(calls) > 1:
            raise ConnectionRefusedError

    check = health.CachedCheck(probe, ttl=2.0, clock=clock)
    assert check() == "ok" and check() == "ok" and len(calls) == 1
    clock.now += 2.0
    assert check() == "unreachable: ConnectionRefusedError" and len(calls) == 2


@pytest.fixture
def fresh_lag() -> Iterator[None]:
    saved = looplag.lag.last, looplag.lag.due, list(looplag.lag.recent)
    looplag.lag.last, looplag.lag.due = 0.0, None
    looplag.lag.recent.clear()
    admission.lagging = False  # the loop-lag guard's hysteresis state follows the lag
    yield
    looplag.lag.last, looplag.lag.due = saved[:2]
    looplag.lag.recent.clear()
    looplag.lag.recent.extend(saved[2])
    admission.lagging = False


@pytest.mark.django_db
@pytest.mark.usefixtures("fresh_lag")
def test_readyz_reports_database_redis_and_loop_lag_and_is_503_past_the_lag_threshold(client: Client) -> None:
    health.database_check.at = health.redis_check.at = -float("inf")
    body = client.get("/readyz").json()
    assert body["ready"] is True and body["database"] == "ok" and body["loop_lag_ms"] == 0
    from django.conf import settings

    assert body["redis"] == ("ok" if settings.REDIS_URL else "not configured")
    looplag.lag.recent.extend([0.8] * looplag.RECENT_TICKS)
    admission.max_lag = 0.05  # the guard as deployed (the suite turns it off: tests/conftest.py)
    with override_settings(STREAMHUB_READY_MAX_LOOP_LAG_SECONDS=0.5):
        response = client.get("/readyz")
    assert response.status_code == 503  # the loop-lag guard (50 ms) refuses calls: readiness follows
    assert response.json()["problems"] == ["event loop lag 800 ms: refusing new calls until it recovers"]
    admission.max_lag = 0.0  # the guard off: readiness keeps its own limit
    with override_settings(STREAMHUB_READY_MAX_LOOP_LAG_SECONDS=0.5):
        assert client.get("/readyz").json()["problems"] == ["event loop lag 800 ms over 500 ms"]
    with override_settings(STREAMHUB_READY_MAX_LOOP_LAG_SECONDS=1.0):
        assert client.get("/readyz").status_code == 200


@pytest.mark.slow
def test_a_real_hub_lagging_past_its_threshold_is_not_ready(hub_factory: Callable[..., Proc]) -> None:
    hub = hub_factory(STREAMHUB_READY_MAX_LOOP_LAG_SECONDS="0.000001")  # any real loop is later than 1 µs
    requests.get(f"{hub.http}/healthz", timeout=5)
    body = requests.get(f"{hub.http}/readyz", timeout=5)
    for _ in range(40):  # the ticker starts with the first connection; readiness judges a few ticks
        if body.status_code == 503:
            break
        time.sleep(0.1)
        body = requests.get(f"{hub.http}/readyz", timeout=5)
    assert body.status_code == 503
    assert body.json()["problems"][0].startswith("event loop lag")
    assert body.json()["database"] == "ok"


@pytest.mark.slow
def test_a_hub_without_its_database_or_redis_is_not_ready(hub_factory: Callable[..., Proc]) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    hub = hub_factory(DATABASE_URL="sqlite:////nonexistent-streamhub-dir/db.sqlite3", REDIS_URL=dead_redis)
    response = requests.get(f"{hub.http}/readyz", timeout=15)
    assert response.status_code == 503
    body = response.json()
    assert body["database"].startswith("unreachable") and body["redis"].startswith("unreachable")
    assert "database unreachable: OperationalError" in body["problems"]
    assert requests.get(f"{hub.http}/healthz", timeout=5).status_code == 200  # alive, just not ready
