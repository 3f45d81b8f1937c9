"""Retention: delete what is older than the settings, in small batches, never anything of a live call.

What goes, in this order (each cutoff in days; 0 keeps that kind forever):
1. debug events (StreamEvent) older than STREAMHUB_RETAIN_DEBUG_EVENTS_DAYS;
2. callback deliveries that are finished (delivered or failed) and older than
   STREAMHUB_RETAIN_CALLBACKS_DAYS, with their attempts;
3. call records older than STREAMHUB_RETAIN_RECORDS_DAYS (by end), with their streams and
   whatever of those is still left;
4. HubProcess rows of processes silent for STREAMHUB_RETAIN_DEAD_PROCESSES_DAYS that hold
   no live call.

Anything that belongs to a call still live is kept, whatever its age (a call may last
longer than a retention period; its debug log is what an operator looks at).

Each batch is one short transaction: the ids of at most STREAMHUB_PRUNE_BATCH rows are
read in primary-key order past the last batch (keyset, so a batch never re-reads the index
entries the earlier ones deleted), then those rows are deleted. So no lock is held for
longer than one batch (measured in docs/operations.md), and the hub's writes go on between
batches. A run stops after `budget` seconds; the next run goes on where the rows are.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from callbacks.models import CallbackAttempt, CallbackDelivery
from streams.models import Call, HubProcess, Stream, StreamEvent

log = logging.getLogger(__name__)

RECORD_BATCH_SHARE = 10  # a call drags its streams and their rows along: smaller batches


@dataclass
class Pruned:
    """What one kind of row lost (or would lose, in a dry run), and how long its batches took."""

    kind: str
    cutoff: datetime | None
    deleted: int = 0
    batches: list[float] = field(default_factory=list)  # seconds per batch

    @property
    def max_batch_ms(self) -> float:
        return round(1000 * max(self.batches, default=0.0), 1)

    @property
    def mean_batch_ms(self) -> float:
        return round(1000 * sum(self.batches) / len(self.batches), 1) if self.batches else 0.0

    def line(self, *, dry_run: bool) -> str:
        if self.cutoff is None:
            return f"{self.kind}: kept forever (retention 0)"
        verb = "would delete" if dry_run else "deleted"
        text = f"{self.kind}: {verb} {self.deleted} older than {self.cutoff:%Y-%m-%d %H:%M:%S} UTC"
        if self.batches and not dry_run:
            text += f" in {len(self.batches)} batches (mean {self.mean_batch_ms} ms, max {self.max_batch_ms} ms)"
        return text


def cutoff(now: datetime, days: float) -> datetime | None:
    return now - timedelta(days=days) if days > 0 else None


def live_streams() -> QuerySet[Stream, Any]:
    """The streams of live calls (a few hundred rows at most): their rows are never deleted.

    A subquery (NOT IN, hashed by PostgreSQL), not a join: the batch query then walks the
    primary key in order and stops at the batch size, whatever the planner thinks of the join.
    """
    return Stream.objects.filter(call__status=Call.Status.LIVE).values("pk")


def old_events(before: datetime) -> QuerySet[StreamEvent]:
    return StreamEvent.objects.filter(timestamp__lt=before).exclude(stream_id__in=live_streams())


def old_deliveries(before: datetime) -> QuerySet[CallbackDelivery]:
    done = (CallbackDelivery.State.DELIVERED, CallbackDelivery.State.FAILED)
    return CallbackDelivery.objects.filter(created_at__lt=before, state__in=done).exclude(stream_id__in=live_streams())


def old_calls(before: datetime) -> QuerySet[Call]:
    return Call.objects.filter(status=Call.Status.ENDED, ended_at__lt=before)


def dead_processes(before: datetime) -> QuerySet[HubProcess]:
    holding = Call.objects.filter(status=Call.Status.LIVE).values("server_id")
    quiet = Q(heartbeat_at__lt=before) & (Q(snapshot_at__isnull=True) | Q(snapshot_at__lt=before))
    return HubProcess.objects.filter(quiet).exclude(server_id__in=holding)


def _delete_events(ids: list[int]) -> None:
    StreamEvent.objects.filter(pk__in=ids).delete()


def _delete_deliveries(ids: list[int]) -> None:
    CallbackAttempt.objects.filter(delivery_id__in=ids).delete()
    CallbackDelivery.objects.filter(pk__in=ids).only("pk").delete()


def _delete_calls(ids: list[int]) -> None:
    # the streams (and their events, deliveries, attempts) go with their call: CASCADE;
    # re-checked here, so a call cannot be live by the time its rows go
    Call.objects.filter(pk__in=ids, status=Call.Status.ENDED).only("pk").delete()


def _delete_processes(ids: list[int]) -> None:
    HubProcess.objects.filter(pk__in=ids).delete()


def _run(
    report: Pruned,
    queryset: QuerySet[Any],
    delete: Callable[[list[int]], None],
    *,
    batch: int,
    dry_run: bool,
    deadline: float,
) -> None:
    if dry_run:
        report.deleted = queryset.count()
        return
    last = 0
    while time.monotonic() < deadline:
        started = time.monotonic()
        with transaction.atomic():
            ids = list(queryset.filter(pk__gt=last).order_by("pk").values_list("pk", flat=True)[:batch])
            if not ids:
                return
            delete(ids)
        report.batches.append(time.monotonic() - started)
        report.deleted += len(ids)
        last = ids[-1]


def prune(
    *, now: datetime | None = None, dry_run: bool = False, batch: int | None = None, budget: float = 600.0
) -> list[Pruned]:
    """Delete (or, with dry_run, count) what the retention settings say is old; one Pruned per kind."""
    now = now or timezone.now()
    batch = batch or settings.STREAMHUB_PRUNE_BATCH
    deadline = time.monotonic() + budget
    kinds: list[tuple[str, float, Callable[[datetime], QuerySet[Any]], Callable[[list[int]], None], int]] = [
        ("debug events", settings.STREAMHUB_RETAIN_DEBUG_EVENTS_DAYS, old_events, _delete_events, batch),
        ("callback deliveries", settings.STREAMHUB_RETAIN_CALLBACKS_DAYS, old_deliveries, _delete_deliveries, batch),
        (
            "call records",
            settings.STREAMHUB_RETAIN_RECORDS_DAYS,
            old_calls,
            _delete_calls,
            max(1, batch // RECORD_BATCH_SHARE),
        ),
        (
            "dead hub processes",
            settings.STREAMHUB_RETAIN_DEAD_PROCESSES_DAYS,
            dead_processes,
            _delete_processes,
            batch,
        ),
    ]
    reports: list[Pruned] = []
    for kind, days, select, delete, size in kinds:
        before = cutoff(now, days)
        report = Pruned(kind, before)
        reports.append(report)
        if before is not None:
            _run(report, select(before), delete, batch=size, dry_run=dry_run, deadline=deadline)
    return reports
