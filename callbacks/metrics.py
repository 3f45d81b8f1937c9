"""Callback delivery metrics, served by the Celery worker's exporter (streamhub.metrics).

- `streamhub_callback_deliveries_total{event, outcome}`: one per try, by its outcome:
  `delivered` (2xx), `retry` (failed, another try is scheduled), `failed` (given up).
  A delivery ends with exactly one `delivered` or `failed`.
- `streamhub_callback_delivery_latency_seconds{event}`: from the event (the outbox row,
  written in the event's transaction) to the 2xx that delivered it, retries included.
- `streamhub_callback_outbox{state}` and `streamhub_callback_oldest_pending_age_seconds`:
  read from the database at scrape time (two cheap indexed queries). They describe the
  whole deployment, so every worker reports the same value: aggregate them with max().
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from django.db import close_old_connections
from django.db.models import Count
from django.utils import timezone
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from callbacks import retry
from callbacks.models import OPEN_STATES, CallbackDelivery

deliveries = Counter(
    "streamhub_callback_deliveries",
    "Callback delivery tries by event and outcome (delivered, retry, failed)",
    ["event", "outcome"],
    registry=None,
)
latency = Histogram(
    "streamhub_callback_delivery_latency_seconds",
    "Seconds from the event to the 2xx that delivered its callback (retries included)",
    ["event"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600),
    registry=None,
)

# Every series exists from the start (at 0), so dashboards and rate() see it before its first event.
EVENTS = ("StartStream", "StopStream", "DroppedStream", "DegradedStream")  # services.CALLBACK_EVENTS
for _event in EVENTS:
    latency.labels(_event)
    for _outcome in ("delivered", "retry", "failed"):
        deliveries.labels(_event, _outcome)


def outcome(decision: retry.Decision) -> str:
    """As `services._finish` applies the decision: a retry with no time left is a failure."""
    if decision.verdict is retry.Verdict.DELIVERED:
        return "delivered"
    if decision.verdict is retry.Verdict.RETRY and decision.retry_at is not None:
        return "retry"
    return "failed"


def attempt_finished(*, event: str, decision: retry.Decision, created_at: datetime) -> None:
    """Count one try by its outcome; a 2xx also times the delivery from its event."""
    result = outcome(decision)
    if result == "delivered":  # timed first: a scrape that sees the delivery counted sees its latency too
        latency.labels(event).observe(max(0.0, (timezone.now() - created_at).total_seconds()))
    deliveries.labels(event, result).inc()


class OutboxCollector(Collector):
    """Outbox depth and the age of its oldest pending row, computed when scraped."""

    def collect(self) -> Iterator[Metric]:
        close_old_connections()  # the exporter's thread keeps its connection between scrapes
        try:
            counts = dict(
                CallbackDelivery.objects.filter(state__in=OPEN_STATES)
                .order_by()
                .values_list("state")
                .annotate(n=Count("id"))
                .values_list("state", "n")
            )
            oldest = (
                CallbackDelivery.objects.filter(state=CallbackDelivery.State.PENDING)
                .order_by("pk")
                .values_list("created_at", flat=True)
                .first()
            )
        finally:
            close_old_connections()
        depth = GaugeMetricFamily(
            "streamhub_callback_outbox", "Callback deliveries not finished, by state", labels=["state"]
        )
        for state in OPEN_STATES:
            depth.add_metric([str(state)], counts.get(state, 0))
        yield depth
        age = (timezone.now() - oldest).total_seconds() if oldest is not None else 0.0
        yield GaugeMetricFamily(
            "streamhub_callback_oldest_pending_age_seconds",
            "Age of the oldest pending callback delivery (0 when none is pending)",
            value=max(0.0, age),
        )
