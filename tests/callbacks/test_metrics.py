"""The worker's callback metrics: outcomes as services applies them, every series present from the start."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import CollectorRegistry

from callbacks import metrics, retry
from callbacks.services import CALLBACK_EVENTS


def test_every_callback_event_has_its_series_from_the_start() -> None:
    assert set(metrics.EVENTS) == set(CALLBACK_EVENTS)
    registry = CollectorRegistry()
    registry.register(metrics.deliveries)
    for event in CALLBACK_EVENTS:
        for outcome in ("delivered", "retry", "failed"):
            value = registry.get_sample_value(
                "streamhub_callback_deliveries_total", {"event": event, "outcome": outcome}
            )
            assert value is not None


def test_a_retry_with_no_time_left_counts_as_failed() -> None:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    assert metrics.outcome(retry.Decision(retry.Verdict.DELIVERED, None, "")) == "delivered"
    assert metrics.outcome(retry.Decision(retry.Verdict.RETRY, when, "503")) == "retry"
    assert metrics.outcome(retry.Decision(retry.Verdict.RETRY, None, "503")) == "failed"
    assert metrics.outcome(retry.Decision(retry.Verdict.FAIL, None, "404")) == "failed"
