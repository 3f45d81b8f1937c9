"""Celery beat tasks of the streams app: thin shells around the sweeps."""

from __future__ import annotations

import logging

from celery import shared_task

from streams import orphans, retention

log = logging.getLogger(__name__)


@shared_task(name="streams.tasks.sweep_orphans", ignore_result=True)
def sweep_orphans() -> int:
    ended = orphans.streams_close_orphaned()
    if ended:
        log.info("orphan sweep: ended %d streams of hub processes that stopped beating", ended)
    return ended


@shared_task(name="streams.tasks.prune", ignore_result=True)
def prune() -> dict[str, int]:
    """Retention (streams.retention): the beat runs it every STREAMHUB_PRUNE_EVERY_SECONDS."""
    reports = retention.prune()
    for report in reports:
        if report.deleted:
            log.info("prune: %s", report.line(dry_run=False))
    return {report.kind: report.deleted for report in reports}
