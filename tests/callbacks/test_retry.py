from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callbacks import retry
from callbacks.retry import Verdict

NOW = datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC)
POLICY = retry.Policy(max_attempts=8, base=2.0, cap=300.0, max_age=3600.0)


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.DELIVERED),
        (204, Verdict.DELIVERED),
        (299, Verdict.DELIVERED),
        (None, Verdict.RETRY),
        (500, Verdict.RETRY),
        (503, Verdict.RETRY),
        (599, Verdict.RETRY),
        (408, Verdict.RETRY),
        (429, Verdict.RETRY),
        (301, Verdict.FAIL),
        (400, Verdict.FAIL),
        (401, Verdict.FAIL),
        (404, Verdict.FAIL),
        (410, Verdict.FAIL),
        (100, Verdict.FAIL),
    ],
)
def test_it_retries_only_transient_outcomes(status: int | None, verdict: Verdict) -> None:
    assert retry.classify(status) is verdict


def test_backoff_windows_double_from_the_base_up_to_the_cap() -> None:
    windows = [retry.backoff_window(n, base=2, cap=300) for n in range(1, 11)]
    assert windows == [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert retry.backoff_window(10_000, base=2, cap=300) == 300


@given(idempotency_id=st.uuids(), attempt=st.integers(min_value=1, max_value=50))
def test_full_jitter_stays_inside_the_window(idempotency_id: uuid.UUID, attempt: int) -> None:
    delay = retry.backoff_delay(str(idempotency_id), attempt, base=2, cap=300)
    assert 0 <= delay < retry.backoff_window(attempt, base=2, cap=300)


def test_jitter_spreads_deliveries_over_the_whole_window() -> None:
    fractions = [retry.jitter_fraction(str(uuid.uuid4()), 3) for _ in range(2000)]
    assert min(fractions) < 0.05 and max(fractions) > 0.95
    assert 0.45 < sum(fractions) / len(fractions) < 0.55
    # The same delivery and try always wait the same: reproducible from the console.
    some = str(uuid.uuid4())
    assert retry.jitter_fraction(some, 2) == retry.jitter_fraction(some, 2) != retry.jitter_fraction(some, 3)


def test_retry_after_seconds_and_dates() -> None:
    assert retry.parse_retry_after("120", now=NOW) == 120
    assert retry.parse_retry_after("Wed, 25 Nov 2026 10:00:30 GMT", now=NOW) == 30
    assert retry.parse_retry_after("Wed, 25 Nov 2026 09:00:00 GMT", now=NOW) == 0
    assert retry.parse_retry_after("soon", now=NOW) is None
    assert retry.parse_retry_after("", now=NOW) is None
    assert retry.parse_retry_after(None, now=NOW) is None


def decide(**overrides: object) -> retry.Decision:
    values: dict[str, object] = {
        "status_code": 503,
        "error": "",
        "attempt": 1,
        "created_at": NOW,
        "now": NOW,
        "idempotency_id": "1f0c2e9d-0000-4000-8000-000000000001",
        "policy": POLICY,
    }
    values.update(overrides)
    return retry.decide(**values)  # type: ignore[arg-type]


def test_a_transient_failure_is_retried_inside_its_window() -> None:
    decision = decide(attempt=3)
    assert decision.verdict is Verdict.RETRY
    assert decision.retry_at is not None
    assert NOW <= decision.retry_at < NOW + timedelta(seconds=8)
    assert decision.reason == "HTTP 503"


def test_retry_after_is_a_floor_under_the_backoff() -> None:
    decision = decide(status_code=429, retry_after="90")
    assert decision.retry_at == NOW + timedelta(seconds=90)


def test_it_gives_up_after_the_last_attempt() -> None:
    decision = decide(attempt=8, error="timeout after 10 s", status_code=None)
    assert decision.verdict is Verdict.FAIL
    assert decision.reason == "timeout after 10 s; gave up after 8 attempts"


def test_it_gives_up_when_the_next_try_would_pass_the_age_limit() -> None:
    decision = decide(attempt=2, now=NOW + timedelta(seconds=3600.5))
    assert decision.verdict is Verdict.FAIL
    assert "3600 s limit" in decision.reason
    assert decide(attempt=2, retry_after="7200").verdict is Verdict.FAIL


def test_a_permanent_failure_is_not_retried() -> None:
    decision = decide(status_code=404)
    assert decision.verdict is Verdict.FAIL
    assert decision.reason == "HTTP 404 (not retried)"
    assert decide(status_code=200).verdict is Verdict.DELIVERED
