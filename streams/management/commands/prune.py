"""manage.py prune [--dry-run] [--batch N]: retention now, as the beat's prune task does it."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from streams import retention


class Command(BaseCommand):
    help = (
        "Delete debug events, finished callback deliveries, call records and dead hub-process rows older than "
        "the STREAMHUB_RETAIN_* settings, in small batches; nothing of a live call. --dry-run only counts."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="count what would be deleted; delete nothing")
        parser.add_argument("--batch", type=int, default=None, help="rows per batch (default STREAMHUB_PRUNE_BATCH)")
        parser.add_argument("--budget", type=float, default=3600.0, help="stop after this many seconds")

    def handle(self, *args: Any, **options: Any) -> None:
        batch = options["batch"]
        if batch is not None and batch < 1:
            batch = 1
        reports = retention.prune(dry_run=options["dry_run"], batch=batch, budget=options["budget"])
        for report in reports:
            self.stdout.write(report.line(dry_run=options["dry_run"]))
