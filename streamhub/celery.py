"""The Celery app: `celery -A streamhub worker` and `celery -A streamhub beat`."""

from __future__ import annotations

import logging.config
import os
from typing import Any

from celery import Celery
from celery.signals import celeryd_init, setup_logging, worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "streamhub.settings")

app = Celery("streamhub")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@setup_logging.connect  # type: ignore[untyped-decorator]
def _logging(**kwargs: Any) -> None:
    """The worker and beat log like the hub (STREAMHUB_LOG_FORMAT, redaction), not in Celery's own format."""
    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


@celeryd_init.connect  # type: ignore[untyped-decorator]
def _json_only(instance: Any = None, **kwargs: Any) -> None:
    """With JSON logs, every line on the output is JSON: no startup banner (printed, not logged)."""
    from django.conf import settings

    if settings.STREAMHUB_LOG_FORMAT == "json" and instance is not None:
        instance.quiet = True


@worker_init.connect  # type: ignore[untyped-decorator]
def _metrics(**kwargs: Any) -> None:
    """The worker's Prometheus exporter (STREAMHUB_WORKER_METRICS_PORT; off when 0)."""
    from django.conf import settings

    if settings.STREAMHUB_WORKER_METRICS_PORT:
        from streamhub.metrics import start_worker_exporter

        start_worker_exporter(
            port=settings.STREAMHUB_WORKER_METRICS_PORT,
            addr=settings.STREAMHUB_WORKER_METRICS_ADDR,
            token=settings.STREAMHUB_METRICS_TOKEN,
        )
